//! GLPI's notifications as each version sends them: the Message-ID and threading
//! headers of GLPI 9.5, 10.0.0–10.0.6 and 10.0.7+, the localized subject label and the
//! body's status line (shapes from real GLPI 10.0.3 captures), and the queue they
//! leave through.

use super::{smtp_send, Inner, SentNotification, State, Ticket, STATUS_SOLVED};
use super::{STATUS_ASSIGNED, STATUS_CLOSED, STATUS_NEW, STATUS_PLANNED, STATUS_WAITING};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Which GLPI's notification shapes the double speaks (and which Message-IDs its
/// collector threads on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlpiVersion {
    /// GLPI 10.0.7 and later (and 11): `GLPI_<uuid>-Ticket-<id>/<event>@host`.
    Modern,
    /// GLPI 10.0.0–10.0.6: `GLPI_<uuid>-Ticket-<id>.<time>.<rand>@host`, with
    /// `In-Reply-To: <GLPI-<uuid>-Ticket-<id>>` and no References.
    Legacy10,
    /// GLPI 9.5: `GLPI-Ticket-<id>.<time>.<rand>@host`, `In-Reply-To: <GLPI-Ticket-<id>>`.
    V9_5,
}

/// The language of GLPI's notifications (the requester's, or GLPI's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    En,
    Fr,
    De,
    Es,
    It,
    Pt,
}

/// The words of one language: event labels, the status label, status names.
pub struct Labels {
    pub new_ticket: &'static str,
    pub solved: &'static str,
    pub closed: &'static str,
    pub followup: &'static str,
    pub status: &'static str,
    /// Status names, 1 (new) to 6 (closed).
    pub statuses: [&'static str; 6],
}

impl Language {
    pub fn labels(self) -> Labels {
        match self {
            Language::En => Labels {
                new_ticket: "New ticket",
                solved: "Ticket solved",
                closed: "Closing of the ticket",
                followup: "New followup",
                status: "Status",
                statuses: [
                    "New",
                    "Processing (assigned)",
                    "Processing (planned)",
                    "Pending",
                    "Solved",
                    "Closed",
                ],
            },
            Language::Fr => Labels {
                new_ticket: "Nouveau ticket",
                solved: "Ticket résolu",
                closed: "Clôture du ticket",
                followup: "Nouveau suivi",
                status: "Statut",
                statuses: [
                    "Nouveau",
                    "En cours (Attribué)",
                    "En cours (Planifié)",
                    "En attente",
                    "Résolu",
                    "Clos",
                ],
            },
            Language::De => Labels {
                new_ticket: "Neues Ticket",
                solved: "Ticket gelöst",
                closed: "Ticket geschlossen",
                followup: "Neue Antwort",
                status: "Status",
                statuses: [
                    "Neu",
                    "In Bearbeitung (zugewiesen)",
                    "In Bearbeitung (geplant)",
                    "Warten",
                    "Gelöst",
                    "Geschlossen",
                ],
            },
            Language::Es => Labels {
                new_ticket: "Nuevo ticket",
                solved: "Ticket resuelto",
                closed: "Cierre del ticket",
                followup: "Nuevo seguimiento",
                status: "Estado",
                statuses: [
                    "Nuevo",
                    "En curso (asignado)",
                    "En curso (planificado)",
                    "En espera",
                    "Resuelto",
                    "Cerrado",
                ],
            },
            Language::It => Labels {
                new_ticket: "Nuovo ticket",
                solved: "Ticket risolto",
                closed: "Chiusura del ticket",
                followup: "Nuovo seguito",
                status: "Stato",
                statuses: [
                    "Nuovo",
                    "In corso (assegnato)",
                    "In corso (pianificato)",
                    "In attesa",
                    "Risolto",
                    "Chiuso",
                ],
            },
            Language::Pt => Labels {
                new_ticket: "Novo chamado",
                solved: "Chamado solucionado",
                closed: "Fechamento do chamado",
                followup: "Novo acompanhamento",
                status: "Status",
                statuses: [
                    "Novo",
                    "Processando (atribuído)",
                    "Processando (planejado)",
                    "Pendente",
                    "Solucionado",
                    "Fechado",
                ],
            },
        }
    }
}

/// A ticket event GLPI notifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    New,
    Solved,
    Closed,
    Followup,
}

impl Event {
    /// The event's name in GLPI (and in 10.0.7+ Message-IDs).
    pub fn name(self) -> &'static str {
        match self {
            Event::New => "new",
            Event::Solved => "solved",
            Event::Closed => "closed",
            Event::Followup => "add_followup",
        }
    }

    fn label(self, labels: &Labels) -> &'static str {
        match self {
            Event::New => labels.new_ticket,
            Event::Solved => labels.solved,
            Event::Closed => labels.closed,
            Event::Followup => labels.followup,
        }
    }
}

/// A rendered notification, as GLPI stores it in its queue.
pub struct Notice {
    ticket_id: u64,
    event: &'static str,
    target: (SocketAddr, String),
    subject: String,
    message_id: String,
    raw: Vec<u8>,
    queued_at: Instant,
}

/// The fixed `/new` Message-ID of a ticket (GLPI 10.0.7+).
pub fn modern_new_id(config: &super::GlpiConfig, ticket_id: u64) -> String {
    format!(
        "<GLPI_{}-Ticket-{ticket_id}/new@{}>",
        config.uuid, config.host
    )
}

/// The notification for `event` on `ticket`, when that kind is on and a target is set.
/// GLPI renders it when the event happens (the queue keeps the rendered mail).
pub fn event_notice(inner: &Inner, state: &State, ticket: &Ticket, event: Event) -> Option<Notice> {
    let wanted = match event {
        Event::New => state.notify_new,
        Event::Solved | Event::Closed => state.notify_solved,
        Event::Followup => state.notify_followups,
    };
    if !wanted {
        return None;
    }
    let target = state.notify_target.clone()?;
    let config = &inner.config;
    let labels = config.language.labels();
    let subject = format!(
        "[{} #{:07}] {} {}",
        config.subject_tag,
        ticket.id,
        event.label(&labels),
        ticket.title
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let random = rand::random::<u32>() % 1_000_000_000;
    let (message_id, in_reply_to, references) = match config.version {
        GlpiVersion::Modern => {
            let root = modern_new_id(config, ticket.id);
            if event == Event::New {
                (root, None, None)
            } else {
                (
                    format!(
                        "<GLPI_{}-Ticket-{}/{}.{now}.{random}@{}>",
                        config.uuid,
                        ticket.id,
                        event.name(),
                        config.host
                    ),
                    Some(root.clone()),
                    Some(root),
                )
            }
        }
        GlpiVersion::Legacy10 => (
            format!(
                "<GLPI_{}-Ticket-{}.{now}.{random}@{}>",
                config.uuid, ticket.id, config.host
            ),
            Some(format!("<GLPI-{}-Ticket-{}>", config.uuid, ticket.id)),
            None,
        ),
        GlpiVersion::V9_5 => (
            format!("<GLPI-Ticket-{}.{now}.{random}@{}>", ticket.id, config.host),
            Some(format!("<GLPI-Ticket-{}>", ticket.id)),
            None,
        ),
    };
    let raw = render(
        config,
        ticket,
        event,
        &subject,
        &message_id,
        in_reply_to.as_deref(),
        references.as_deref(),
    );
    Some(Notice {
        ticket_id: ticket.id,
        event: event.name(),
        target,
        subject,
        message_id,
        raw,
        queued_at: Instant::now(),
    })
}

/// Queues the notice (queue mode) or sends it from a task of its own (instant mode).
pub fn dispatch_now(inner: &Arc<Inner>, notice: Option<Notice>) {
    let Some(notice) = notice else { return };
    if inner.config.notification_queue == super::Schedule::Instant {
        tokio::spawn(send(inner.clone(), notice));
    } else {
        inner.state().notification_queue.push_back(notice);
    }
}

/// Queues the notice (queue mode) or sends it before returning (instant mode).
pub async fn dispatch(inner: &Arc<Inner>, notice: Option<Notice>) {
    let Some(notice) = notice else { return };
    if inner.config.notification_queue == super::Schedule::Instant {
        send(inner.clone(), notice).await;
    } else {
        inner.state().notification_queue.push_back(notice);
    }
}

/// One `queuednotification` run: the oldest `per_run` queued notices are sent, in order.
pub async fn run_queue(inner: &Arc<Inner>, per_run: usize) {
    let batch: Vec<Notice> = {
        let mut state = inner.state();
        let n = per_run.min(state.notification_queue.len());
        state.notification_queue.drain(..n).collect()
    };
    for notice in batch {
        send(inner.clone(), notice).await;
    }
}

/// Tries of one notification: GLPI keeps a notification that failed (a 4xx, the server
/// away) in its queue and tries it again at the next runs.
const SEND_TRIES: usize = 5;
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

async fn send(inner: Arc<Inner>, notice: Notice) {
    let (addr, rcpt) = &notice.target;
    let mut result = Err(String::new());
    for attempt in 0..SEND_TRIES {
        if attempt > 0 {
            tokio::time::sleep(RETRY_AFTER).await;
        }
        result = smtp_send(
            *addr,
            &inner.config.notification_from,
            &[rcpt.as_str()],
            &notice.raw,
        )
        .await;
        if result.is_ok() {
            break;
        }
    }
    inner.state().notifications.push(SentNotification {
        ticket_id: notice.ticket_id,
        event: notice.event.to_owned(),
        subject: notice.subject,
        message_id: notice.message_id,
        result,
        queued_at: notice.queued_at,
        sent_at: Instant::now(),
    });
}

fn status_name(labels: &Labels, status: u8) -> &'static str {
    match status {
        STATUS_NEW | STATUS_ASSIGNED | STATUS_PLANNED | STATUS_WAITING | STATUS_SOLVED
        | STATUS_CLOSED => labels.statuses[status as usize - 1],
        _ => "?",
    }
}

fn encode_header_text(text: &str) -> String {
    use base64::Engine as _;
    if text.is_ascii() {
        text.to_owned()
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
    }
}

/// Base64 in lines of 76 characters, as PHPMailer writes it (RFC 2045).
fn wrap_76(encoded: &str) -> String {
    encoded
        .as_bytes()
        .chunks(76)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#039;")
}

/// Crude HTML-to-text, enough for a ticket description in the text part.
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The mail, laid out as GLPI 10.0.3's default ticket template (see the captures):
/// headers as PHPMailer writes them, a text and an HTML part with the "Status" line.
fn render(
    config: &super::GlpiConfig,
    ticket: &Ticket,
    event: Event,
    subject: &str,
    message_id: &str,
    in_reply_to: Option<&str>,
    references: Option<&str>,
) -> Vec<u8> {
    use base64::Engine as _;
    let labels = config.language.labels();
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let mut head = format!(
        "Date: {date}\r\nTo: {to}\r\nFrom: GLPI <{from}>\r\nReply-To: GLPI <{from}>\r\n\
         Subject: {subject}\r\nMessage-ID: {message_id}\r\n\
         X-Mailer: PHPMailer 6.6.0 (https://github.com/PHPMailer/PHPMailer)\r\n\
         Auto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: OOF, DR, NDR, RN, NRN\r\n",
        from = config.notification_from,
        to = ticket.requester,
        subject = encode_header_text(subject),
    );
    if let Some(value) = in_reply_to {
        head.push_str(&format!("In-Reply-To: {value}\r\n"));
    }
    if let Some(value) = references {
        head.push_str(&format!("References: {value}\r\n"));
    }
    let url = format!(
        "http://glpi.test/index.php?redirect=ticket_{}&noAUTO=1",
        ticket.id
    );
    let status = status_name(&labels, ticket.status);
    let solution = match (event, &ticket.solution) {
        (Event::Solved, Some(content)) => format!(
            " Date of solving : 2026-12-01 20:02\n Solution type : \n Solution : {} \n\n",
            text_of(content)
        ),
        _ => String::new(),
    };
    let text = format!(
        "=-=-=-= To answer by email, write above this line =-=-=-=\n\n \n  URL : {url} \n\n{solution} \
         Ticket: Description\n\n Title : {title}\n Requesters :  {requester}  \n \
         Opening date : 2026-12-01 20:02\n Closing date : \n Request source : E-Mail\n\
         Associated item :\n\n\n\n {status_label} : {status}\n\n Urgency : Medium\n \
         Impact : Medium\n Priority : Medium\n\n  No defined category \n Description : {description}\n\n\
         Number of followups : {followups}\nNumber of tasks : 0\n\n-- \nAutomatically generated by GLPI\n\n\
         =_=_=_= To answer by email, write under this line =_=_=_=\n",
        title = ticket.title,
        requester = ticket.requester,
        status_label = labels.status,
        description = text_of(&ticket.content),
        followups = ticket.followups.len(),
    );
    let span = "<span style=\"color: #8b8c8f; font-weight: bold; text-decoration: underline;\">";
    let html = format!(
        "<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\">\n<html><head>\
         <META http-equiv='Content-Type' content='text/html; charset=utf-8'><title>{title_html}</title></head><body>\n\
         =-=-=-= To answer by email, write above this line =-=-=-=\n\
         <div> URL : <a href=\"{url}\">{url}</a> </div>\n\
         <p class=\"description b\"><strong>Ticket: Description</strong></p>\n\
         <p>{span} Title</span>&#160;:{title_html} <br /> {span} Requesters</span>&#160;: {requester} <br />\n\
         <br /> {span}{status_label} </span>&#160;: {status}<br /> <br /> {span} Urgency</span>&#160;: Medium<br />\n\
         {span} Description</span>&#160;: {content}</p>\n\
         <div class=\"description b\">Number of followups&#160;: {followups}</div><br><br>-- \n\
         <br>Automatically generated by GLPI<br><br>\n=_=_=_= To answer by email, write under this line =_=_=_=\n\
         </body></html>\n",
        title_html = html_escape(subject),
        requester = ticket.requester,
        status_label = labels.status,
        content = ticket.content,
        followups = ticket.followups.len(),
    );
    let boundary = "b1_glpiDoubleBoundary0123456789";
    let part = |kind: &str, body: &str| -> String {
        if body.is_ascii() {
            format!(
                "--{boundary}\r\nContent-Type: text/{kind}; charset=us-ascii\r\n\r\n{}\r\n",
                body.replace('\n', "\r\n")
            )
        } else {
            format!(
                "--{boundary}\r\nContent-Type: text/{kind}; charset=utf-8\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
                wrap_76(&base64::engine::general_purpose::STANDARD.encode(body))
            )
        }
    };
    head.push_str(&format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary=\"{boundary}\"\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\nThis is a multi-part message in MIME format.\r\n\r\n{}{}--{boundary}--\r\n",
        part("plain", &text),
        part("html", &html),
    ));
    head.into_bytes()
}
