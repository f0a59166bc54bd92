//! `[compose] language`: the words GLPI users read in subjects and bodies, in English,
//! French, German or Spanish. Only what people read changes: the thread tag, Message-IDs
//! and the `X-Alertgate-*` headers stay the same in every language.

use super::body::Report;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    En,
    Fr,
    De,
    Es,
}

/// (English, French, German, Spanish). Subject words are upper case.
const SUBJECT_WORDS: &[(&str, &str, &str, &str)] = &[
    (
        "FLAPPING STOPPED",
        "FIN D'OSCILLATION",
        "FLATTERN BEENDET",
        "FIN DE OSCILACIÓN",
    ),
    (
        "FLAPPING DISABLED",
        "OSCILLATION DÉSACTIVÉE",
        "FLATTERN DEAKTIVIERT",
        "OSCILACIÓN DESACTIVADA",
    ),
    ("FLAPPING", "OSCILLATION", "FLATTERN", "OSCILACIÓN"),
    (
        "DOWNTIME ENDED",
        "FIN DE MAINTENANCE",
        "WARTUNG BEENDET",
        "FIN DE MANTENIMIENTO",
    ),
    (
        "DOWNTIME CANCELLED",
        "MAINTENANCE ANNULÉE",
        "WARTUNG ABGEBROCHEN",
        "MANTENIMIENTO CANCELADO",
    ),
    (
        "IN DOWNTIME",
        "EN MAINTENANCE",
        "IN WARTUNG",
        "EN MANTENIMIENTO",
    ),
    ("RECOVERED", "RÉTABLI", "WIEDERHERGESTELLT", "RECUPERADO"),
    ("ACKNOWLEDGED", "PRIS EN COMPTE", "BESTÄTIGT", "RECONOCIDO"),
    ("NOW", "DÉSORMAIS", "JETZT", "AHORA"),
    ("UNREACHABLE", "INJOIGNABLE", "UNERREICHBAR", "INALCANZABLE"),
    ("WARNING", "AVERTISSEMENT", "WARNUNG", "ADVERTENCIA"),
    ("CRITICAL", "CRITIQUE", "KRITISCH", "CRÍTICO"),
    ("UNKNOWN", "INCONNU", "UNBEKANNT", "DESCONOCIDO"),
    ("DOWN", "INDISPONIBLE", "AUSGEFALLEN", "CAÍDO"),
    ("UP", "DISPONIBLE", "VERFÜGBAR", "ACTIVO"),
    ("OK", "OK", "OK", "OK"),
];

/// Body labels and event words.
const LABELS: &[(&str, &str, &str, &str)] = &[
    ("Event", "Événement", "Ereignis", "Evento"),
    (
        "New problem",
        "Nouveau problème",
        "Neues Problem",
        "Nuevo problema",
    ),
    ("Recovered", "Rétabli", "Wiederhergestellt", "Recuperado"),
    ("Update", "Mise à jour", "Aktualisierung", "Actualización"),
    ("Incident", "Incident", "Vorfall", "Incidente"),
    ("GLPI ticket", "Ticket GLPI", "GLPI-Ticket", "Ticket GLPI"),
    ("Source", "Source", "Quelle", "Origen"),
    ("Host", "Hôte", "Host", "Equipo"),
    ("Address", "Adresse", "Adresse", "Dirección"),
    ("Service", "Service", "Dienst", "Servicio"),
    ("State", "État", "Status", "Estado"),
    ("Type", "Type", "Typ", "Tipo"),
    (
        "Event time",
        "Heure de l'événement",
        "Ereigniszeit",
        "Hora del evento",
    ),
    ("Notified", "Notifié", "Gemeldet", "Notificado"),
    ("Output", "Sortie", "Ausgabe", "Salida"),
    (
        "Long output",
        "Sortie détaillée",
        "Ausführliche Ausgabe",
        "Salida detallada",
    ),
    ("Author", "Auteur", "Autor", "Autor"),
    ("Comment", "Commentaire", "Kommentar", "Comentario"),
    (
        "First seen",
        "Première occurrence",
        "Zuerst gesehen",
        "Primera vez",
    ),
    ("Duration", "Durée", "Dauer", "Duración"),
    (
        "Alerts in incident",
        "Alertes dans l'incident",
        "Alarme im Vorfall",
        "Alertas en el incidente",
    ),
    (
        "Vendor id",
        "ID éditeur",
        "Hersteller-ID",
        "ID del proveedor",
    ),
    ("Link", "Lien", "Link", "Enlace"),
    ("Rule", "Règle", "Regel", "Regla"),
    ("Time", "Heure", "Zeit", "Hora"),
];

impl Language {
    fn pick(self, row: &(&'static str, &'static str, &'static str, &'static str)) -> &'static str {
        match self {
            Language::En => row.0,
            Language::Fr => row.1,
            Language::De => row.2,
            Language::Es => row.3,
        }
    }

    /// A body label or event word; unknown ones stay as they are.
    pub fn label(self, english: &'static str) -> &'static str {
        LABELS
            .iter()
            .find(|row| row.0 == english)
            .map_or(english, |row| self.pick(row))
    }

    /// `NOW CRITICAL`, `RECOVERED`, `FLAPPING STOPPED OK`… in this language.
    pub fn subject_word(self, english: &str) -> String {
        let mut rest = english.trim();
        let mut words = Vec::new();
        while !rest.is_empty() {
            let found = SUBJECT_WORDS.iter().find(|row| {
                rest.strip_prefix(row.0)
                    .is_some_and(|after| after.is_empty() || after.starts_with(' '))
            });
            match found {
                Some(row) => {
                    words.push(self.pick(row).to_string());
                    rest = rest[row.0.len()..].trim_start();
                }
                None => {
                    words.push(rest.to_string());
                    break;
                }
            }
        }
        words.join(" ")
    }

    /// The report of an incident mail with its heading, labels and event words translated.
    pub fn report(self, mut report: Report, english_word: &str, shown_word: &str) -> Report {
        if self == Language::En {
            return report;
        }
        if let Some(target) = report.heading.strip_prefix(english_word) {
            report.heading = format!("{shown_word}{target}");
        }
        for row in &mut report.rows {
            if row.label == "Event" {
                if let super::body::Value::Text(v) = &mut row.value {
                    *v = match v.split_once(": ") {
                        Some(("Update", reason)) => format!("{}: {reason}", self.label("Update")),
                        _ => self.label_owned(v),
                    };
                }
            }
            row.label = self.label(row.label);
        }
        for table in &mut report.tables {
            for column in &mut table.columns {
                *column = self.label(column);
            }
        }
        report
    }

    fn label_owned(self, english: &str) -> String {
        LABELS
            .iter()
            .find(|row| row.0 == english)
            .map_or(english.to_string(), |row| self.pick(row).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_words_in_each_language() {
        assert_eq!(
            Language::Fr.subject_word("NOW CRITICAL"),
            "DÉSORMAIS CRITIQUE"
        );
        assert_eq!(Language::Fr.subject_word("RECOVERED"), "RÉTABLI");
        assert_eq!(
            Language::De.subject_word("FLAPPING STOPPED OK"),
            "FLATTERN BEENDET OK"
        );
        assert_eq!(Language::Es.subject_word("DOWN"), "CAÍDO");
        assert_eq!(Language::En.subject_word("NOW CRITICAL"), "NOW CRITICAL");
    }

    #[test]
    fn every_language_has_every_word() {
        for lang in [Language::Fr, Language::De, Language::Es] {
            for row in LABELS.iter().chain(SUBJECT_WORDS) {
                assert!(!lang.pick(row).is_empty(), "{lang:?} {}", row.0);
            }
        }
    }
}
