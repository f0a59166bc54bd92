//! What the GLPI API user may do, read from its active profile (`getActiveProfile`,
//! `getFullSession`) the way GLPI decides it: create tickets (`ticket` CREATE), add
//! follow-ups (`followup` ADDMYTICKET / ADDALLTICKET), read tickets (`ticket` READMY /
//! READALL), solve (`ticket` UPDATE and a `ticket_status` lifecycle allowing → Solved).

use serde_json::Value;
use std::fmt;

/// GLPI's standard rights.
const READ: u64 = 1;
const UPDATE: u64 = 2;
const CREATE: u64 = 4;
/// Ticket: see every ticket.
const TICKET_READALL: u64 = 1024;
/// ITILFollowup: add to tickets one is the requester of / to every ticket.
const FOLLOWUP_ADDMYTICKET: u64 = 4;
const FOLLOWUP_ADDALLTICKET: u64 = 4096;

/// GLPI's open statuses a ticket of alertgate can be in when it is solved.
const OPEN_STATUSES: [(u8, &str); 4] = [
    (1, "New"),
    (2, "Processing (assigned)"),
    (3, "Processing (planned)"),
    (4, "Pending"),
];
const SOLVED: u8 = 5;

/// The API user's rights as far as alertgate needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRights {
    /// The GLPI login of the API user (`glpiname`), when the session says it.
    pub user: Option<String>,
    /// Its GLPI user id (`glpiID`).
    pub user_id: Option<u64>,
    /// The active profile's name and interface (`helpdesk` or `central`).
    pub profile: String,
    pub interface: String,
    /// `ticket` CREATE.
    pub create_tickets: bool,
    /// `ticket` READMY or READALL: lookups and status reads work.
    pub read_tickets: bool,
    /// `followup` ADDMYTICKET (tickets it requested) or ADDALLTICKET.
    pub followup_own: bool,
    pub followup_any: bool,
    /// `ticket` UPDATE.
    pub update_tickets: bool,
    /// Open statuses from which the lifecycle (`ticket_status`) forbids → Solved.
    pub solve_forbidden_from: Vec<&'static str>,
}

/// A right alertgate needs and the user lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingRight {
    CreateTickets,
    ReadTickets,
    AddFollowups { other_requester: bool },
    Solve { reason: String },
}

impl MissingRight {
    /// The GLPI setting that grants it.
    pub fn recipe(&self) -> String {
        match self {
            MissingRight::CreateTickets => {
                "Administration > Profiles > (the profile) > Assistance > Tickets: check Create".into()
            }
            MissingRight::ReadTickets => {
                "Administration > Profiles > (the profile) > Assistance > Tickets: check See my tickets (or See all tickets)".into()
            }
            MissingRight::AddFollowups { other_requester: false } => {
                "Administration > Profiles > (the profile) > Assistance > Followups: check Add to my tickets (requester)".into()
            }
            MissingRight::AddFollowups { other_requester: true } => {
                "Administration > Profiles > (the profile) > Assistance > Followups: check Add to all tickets (the tickets' requester is not the API user)".into()
            }
            MissingRight::Solve { .. } => {
                "use a profile with the standard interface; Assistance > Tickets: check Update; Life cycles > Life cycle of tickets: allow New, Processing (assigned), Processing (planned) and Pending -> Solved (README, \"Connecting to GLPI\")".into()
            }
        }
    }
}

impl fmt::Display for MissingRight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            MissingRight::CreateTickets => "cannot create tickets (ticket: Create)".to_owned(),
            MissingRight::ReadTickets => {
                "cannot read tickets (ticket: See my tickets / See all tickets)".to_owned()
            }
            MissingRight::AddFollowups {
                other_requester: false,
            } => "cannot add follow-ups to its tickets (followup: Add to my tickets)".to_owned(),
            MissingRight::AddFollowups {
                other_requester: true,
            } => {
                "cannot add follow-ups to tickets it did not request (followup: Add to all tickets)"
                    .to_owned()
            }
            MissingRight::Solve { reason } => format!("cannot solve tickets ({reason})"),
        };
        write!(f, "{what}; fix: {}", self.recipe())
    }
}

/// What alertgate is configured to do through the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// `create = "api"`.
    pub create_tickets: bool,
    /// `solve_on_recovery = true`.
    pub solve: bool,
    /// Tickets are opened with another requester than the API user.
    pub other_requester: bool,
}

impl ApiRights {
    /// Reads the rights from `getActiveProfile`'s `active_profile` (or the session's
    /// `glpiactiveprofile`) and the user from `getFullSession`'s `session`.
    pub fn from_profile(profile: &Value, session: Option<&Value>) -> Result<ApiRights, String> {
        let Some(fields) = profile.as_object() else {
            return Err(format!("the active profile is not an object: {profile}"));
        };
        let right = |name: &str| -> Result<u64, String> {
            match fields.get(name) {
                None | Some(Value::Null) => Ok(0),
                Some(v) => number(v).ok_or_else(|| format!("right `{name}` is not a number: {v}")),
            }
        };
        let ticket = right("ticket")?;
        let followup = right("followup")?;
        let forbidden = forbidden_moves(fields.get("ticket_status"))?;
        let solve_forbidden_from = OPEN_STATUSES
            .iter()
            .filter(|(from, _)| forbidden.contains(&(*from, SOLVED)))
            .map(|(_, name)| *name)
            .collect();
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(ApiRights {
            user: session
                .and_then(|s| s.get("glpiname"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            user_id: session.and_then(|s| s.get("glpiID")).and_then(number),
            profile: text(fields.get("name")),
            interface: text(fields.get("interface")),
            create_tickets: ticket & CREATE != 0,
            read_tickets: ticket & (READ | TICKET_READALL) != 0,
            followup_own: followup & (FOLLOWUP_ADDMYTICKET | FOLLOWUP_ADDALLTICKET) != 0,
            followup_any: followup & FOLLOWUP_ADDALLTICKET != 0,
            update_tickets: ticket & UPDATE != 0,
            solve_forbidden_from,
        })
    }

    /// GLPI lets this user solve a ticket alertgate opened (CommonITILObject::canSolve).
    pub fn can_solve(&self) -> bool {
        self.update_tickets && self.solve_forbidden_from.is_empty()
    }

    /// The rights `needs` call for that the user lacks, each with its recipe.
    /// Follow-ups are always needed (updates and recoveries go to the ticket).
    pub fn missing(&self, needs: Needs) -> Vec<MissingRight> {
        let mut missing = Vec::new();
        if needs.create_tickets && !self.create_tickets {
            missing.push(MissingRight::CreateTickets);
        }
        if !self.read_tickets {
            missing.push(MissingRight::ReadTickets);
        }
        let followups = if needs.other_requester {
            self.followup_any
        } else {
            self.followup_own
        };
        if !followups {
            missing.push(MissingRight::AddFollowups {
                other_requester: needs.other_requester,
            });
        }
        if needs.solve && !self.can_solve() {
            let mut reasons = Vec::new();
            if !self.update_tickets {
                reasons.push(if self.interface == "helpdesk" {
                    "no ticket Update right; the simplified interface cannot have one".to_owned()
                } else {
                    "no ticket Update right".to_owned()
                });
            }
            if !self.solve_forbidden_from.is_empty() {
                reasons.push(format!(
                    "the ticket life cycle forbids {} -> Solved",
                    self.solve_forbidden_from.join(", ")
                ));
            }
            missing.push(MissingRight::Solve {
                reason: reasons.join("; "),
            });
        }
        missing
    }
}

impl fmt::Display for ApiRights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "user {} (id {}), profile `{}` ({} interface)",
            self.user.as_deref().unwrap_or("?"),
            self.user_id.map_or("?".to_owned(), |id| id.to_string()),
            self.profile,
            if self.interface == "helpdesk" {
                "simplified"
            } else {
                "standard"
            }
        )
    }
}

/// `ticket_status` is `[]` (nothing forbidden) or `{"from": {"to": 0|1}}`; an
/// absent entry is allowed, as in CommonITILObject::isAllowedStatus.
fn forbidden_moves(matrix: Option<&Value>) -> Result<Vec<(u8, u8)>, String> {
    let rows = match matrix {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) if list.is_empty() => return Ok(Vec::new()),
        Some(Value::Object(rows)) => rows,
        Some(other) => {
            return Err(format!(
                "ticket_status is neither a list nor a map: {other}"
            ))
        }
    };
    let mut forbidden = Vec::new();
    for (from, row) in rows {
        let Some(row) = row.as_object() else {
            continue;
        };
        for (to, allowed) in row {
            let (Ok(from), Ok(to)) = (from.parse::<u8>(), to.parse::<u8>()) else {
                continue;
            };
            if number(allowed) == Some(0) || allowed == &Value::Bool(false) {
                forbidden.push((from, to));
            }
        }
    }
    Ok(forbidden)
}

/// GLPI sends numbers as numbers or strings depending on version and field.
fn number(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn self_service() -> Value {
        // GLPI 10's Self-Service profile (install/empty_data.php): ticket 131077 =
        // READMY | CREATE | SURVEY, followup 5 = SEEPUBLIC | ADDMYTICKET.
        json!({"id": 1, "name": "Self-Service", "interface": "helpdesk",
            "ticket": 131077, "followup": 5, "task": 1,
            "ticket_status": {"1": {"2": 0, "3": 0, "4": 0, "5": 0, "6": 0},
                               "2": {"1": 0, "3": 0, "4": 0, "5": 0, "6": 0},
                               "4": {"1": 0, "2": 0, "3": 0, "5": 0, "6": 0}}})
    }

    #[test]
    fn self_service_cannot_solve_and_says_why() {
        let session = json!({"glpiname": "alertgate", "glpiID": 7});
        let rights = ApiRights::from_profile(&self_service(), Some(&session)).unwrap();
        assert!(rights.create_tickets && rights.read_tickets && rights.followup_own);
        assert!(!rights.can_solve());
        let missing = rights.missing(Needs {
            solve: true,
            ..Needs::default()
        });
        assert_eq!(missing.len(), 1, "{missing:?}");
        let text = missing[0].to_string();
        assert!(text.contains("cannot solve tickets"), "{text}");
        assert!(text.contains("no ticket Update right"), "{text}");
        assert!(
            text.contains("New, Processing (assigned), Pending -> Solved"),
            "{text}"
        );
        assert!(text.contains("Life cycle of tickets"), "{text}");
        assert_eq!(
            rights.to_string(),
            "user alertgate (id 7), profile `Self-Service` (simplified interface)"
        );
        assert!(rights.missing(Needs::default()).is_empty());
        let other = rights.missing(Needs {
            other_requester: true,
            ..Needs::default()
        });
        assert_eq!(
            other,
            [MissingRight::AddFollowups {
                other_requester: true
            }]
        );
    }

    #[test]
    fn technician_and_string_numbers() {
        let tech = json!({"name": "Technician", "interface": "central",
            "ticket": "166919", "followup": "15383", "ticket_status": []});
        let rights = ApiRights::from_profile(&tech, None).unwrap();
        assert!(rights.can_solve() && rights.followup_any && rights.create_tickets);
        assert!(rights
            .missing(Needs {
                create_tickets: true,
                solve: true,
                other_requester: true
            })
            .is_empty());
    }

    #[test]
    fn nothing_granted_names_every_right() {
        let none = json!({"name": "Read-Only", "interface": "central", "ticket": 0});
        let rights = ApiRights::from_profile(&none, None).unwrap();
        let missing = rights.missing(Needs {
            create_tickets: true,
            solve: true,
            other_requester: false,
        });
        assert_eq!(missing.len(), 4, "{missing:?}");
        assert!(ApiRights::from_profile(&json!([]), None).is_err());
        assert!(ApiRights::from_profile(&json!({"ticket": "x"}), None).is_err());
    }
}
