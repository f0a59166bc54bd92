//! The legacy REST API (`apirest.php`) as GLPI answers it, rights included: the API
//! user's active profile decides, as in GLPI, who may create tickets (`ticket` CREATE),
//! add follow-ups (`followup` ADDMYTICKET on own tickets, ADDALLTICKET), solve (`ticket`
//! UPDATE and a `ticket_status` lifecycle that allows the move to Solved) and read
//! tickets (`ticket` READMY on own tickets, READALL).

use super::{
    add_followup, add_solution, notify, open_ticket, GlpiConfig, Inner, NewTicket, Source, State,
    Ticket, STATUS_CLOSED, STATUS_SOLVED,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// GLPI's standard rights (CommonDBTM).
pub const RIGHT_READ: u32 = 1;
pub const RIGHT_UPDATE: u32 = 2;
pub const RIGHT_CREATE: u32 = 4;
pub const RIGHT_DELETE: u32 = 8;
pub const RIGHT_PURGE: u32 = 16;
/// Ticket's own rights (READ is "see my tickets", READMY).
pub const TICKET_READALL: u32 = 1024;
pub const TICKET_READGROUP: u32 = 2048;
pub const TICKET_OWN: u32 = 32768;
pub const TICKET_SURVEY: u32 = 131072;
/// ITILFollowup's rights.
pub const FOLLOWUP_SEEPUBLIC: u32 = 1;
pub const FOLLOWUP_UPDATEMY: u32 = 2;
pub const FOLLOWUP_ADDMYTICKET: u32 = 4;
pub const FOLLOWUP_UPDATEALL: u32 = 1024;
pub const FOLLOWUP_ADDGROUPTICKET: u32 = 2048;
pub const FOLLOWUP_ADDALLTICKET: u32 = 4096;
pub const FOLLOWUP_SEEPRIVATE: u32 = 8192;

/// A GLPI profile, as far as tickets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiProfile {
    pub id: u64,
    pub name: String,
    /// `helpdesk` (simplified interface) or `central` (standard interface).
    pub interface: String,
    pub ticket: u32,
    pub followup: u32,
    pub task: u32,
    /// Status moves the profile's ticket lifecycle forbids (`ticket_status[from][to] = 0`);
    /// every other move is allowed, as in GLPI.
    pub forbidden_moves: Vec<(u8, u8)>,
}

impl Default for ApiProfile {
    fn default() -> Self {
        ApiProfile::technician()
    }
}

impl ApiProfile {
    /// GLPI's Self-Service profile (install/empty_data.php): create tickets, see and
    /// follow up its own; no ticket update right, no move to Solved.
    pub fn self_service() -> ApiProfile {
        let mut forbidden = Vec::new();
        for from in 1..=6u8 {
            for to in 1..=6u8 {
                if from != to && (from, to) != (5, 6) {
                    forbidden.push((from, to));
                }
            }
        }
        ApiProfile {
            id: 1,
            name: "Self-Service".into(),
            interface: "helpdesk".into(),
            ticket: RIGHT_READ | RIGHT_CREATE | TICKET_SURVEY,
            followup: FOLLOWUP_SEEPUBLIC | FOLLOWUP_ADDMYTICKET,
            task: 1,
            forbidden_moves: forbidden,
        }
    }

    /// GLPI's Technician profile: reads and updates every ticket, may solve.
    pub fn technician() -> ApiProfile {
        ApiProfile {
            id: 6,
            name: "Technician".into(),
            interface: "central".into(),
            ticket: 166919,
            followup: 15383,
            task: 13329,
            forbidden_moves: Vec::new(),
        }
    }

    /// The profile README's "Connecting to GLPI" documents for the alertgate user:
    /// standard interface; Tickets: See my tickets, Update, Create; Followups: See public,
    /// Add to my tickets; lifecycle: New / Processing / Pending → Solved allowed, and
    /// nothing else needed (moves to Closed are left forbidden here to prove it).
    pub fn alertgate() -> ApiProfile {
        ApiProfile {
            id: 8,
            name: "alertgate".into(),
            interface: "central".into(),
            ticket: RIGHT_READ | RIGHT_UPDATE | RIGHT_CREATE,
            followup: FOLLOWUP_SEEPUBLIC | FOLLOWUP_ADDMYTICKET,
            task: 0,
            forbidden_moves: (1..=5u8).map(|from| (from, 6)).collect(),
        }
    }

    fn move_allowed(&self, from: u8, to: u8) -> bool {
        !self.forbidden_moves.contains(&(from, to))
    }

    /// GLPI's `ticket_status` matrix: `[]` when nothing is forbidden, else
    /// `{"from": {"to": 0, ...}, ...}`.
    fn ticket_status_json(&self) -> Value {
        if self.forbidden_moves.is_empty() {
            return json!([]);
        }
        let mut matrix = serde_json::Map::new();
        for (from, to) in &self.forbidden_moves {
            let row = matrix.entry(from.to_string()).or_insert_with(|| json!({}));
            row[to.to_string()] = json!(0);
        }
        Value::Object(matrix)
    }

    /// `glpiactiveprofile` as GLPI puts it in the session: the profile's fields and one
    /// key per right.
    fn session_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "interface": self.interface,
            "is_default": 0,
            "helpdesk_hardware": 0,
            "helpdesk_item_type": ["Computer", "Monitor", "NetworkEquipment", "Peripheral", "Phone", "Printer", "Software"],
            "ticket_status": self.ticket_status_json(),
            "problem_status": [],
            "change_status": [],
            "create_ticket_on_login": 0,
            "tickettemplates_id": 0,
            "changetemplates_id": 0,
            "problemtemplates_id": 0,
            "comment": "",
            "entities": {"0": {"id": 0, "name": "Root entity", "is_recursive": 1}},
            "ticket": self.ticket,
            "followup": self.followup,
            "task": self.task,
            "ticketvalidation": 0,
            "ticketcost": 0,
            "knowbase": 0,
            "computer": 0,
        })
    }

    fn can_search(&self) -> bool {
        self.ticket & (RIGHT_READ | TICKET_READALL) != 0
    }

    fn can_view(&self, ticket: &Ticket, user: &str) -> bool {
        self.ticket & TICKET_READALL != 0
            || (self.ticket & RIGHT_READ != 0 && ticket.requester.eq_ignore_ascii_case(user))
    }

    /// CommonITILObject::canAddFollowups.
    fn can_add_followup(&self, ticket: &Ticket, user: &str) -> bool {
        ticket.status != STATUS_CLOSED
            && (self.followup & FOLLOWUP_ADDALLTICKET != 0
                || (self.followup & FOLLOWUP_ADDMYTICKET != 0
                    && ticket.requester.eq_ignore_ascii_case(user)))
    }

    /// CommonITILObject::canSolve: the lifecycle allows the move, the ticket is not
    /// closed, and the user may update it.
    fn can_solve(&self, ticket: &Ticket) -> bool {
        ticket.status != STATUS_CLOSED
            && (ticket.status == STATUS_SOLVED || self.move_allowed(ticket.status, STATUS_SOLVED))
            && self.ticket & RIGHT_UPDATE != 0
    }
}

const NO_PERMISSION: &str = "You don't have permission to perform this action.";

struct HttpRequest {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(super) async fn serve_http(stream: TcpStream, inner: &Arc<Inner>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let Some(request) = read_request(&mut reader).await? else {
        return Ok(());
    };
    let (status, body) = route(inner, &request);
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await?;
    write.write_all(body.as_bytes()).await?;
    write.shutdown().await
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<HttpRequest>> {
    let mut first = String::new();
    if reader.read_line(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Some(HttpRequest {
        method,
        path: percent_decode(path),
        query,
        headers,
        body,
    }))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn glpi_error(status: u16, code: &str, message: &str) -> (u16, Value) {
    (status, json!([code, message]))
}

fn route(inner: &Arc<Inner>, request: &HttpRequest) -> (u16, Value) {
    let config = &inner.config;
    let mut state = inner.state();
    let Some(endpoint) = request.path.strip_prefix("/apirest.php/") else {
        return glpi_error(
            400,
            "ERROR_RESOURCE_NOT_FOUND_NOR_COMMONDBTM",
            "resource not found",
        );
    };
    let endpoint = endpoint.trim_end_matches('/').to_owned();
    *state.api_calls.entry(endpoint.clone()).or_default() += 1;
    if state.api_down {
        return (500, json!(["ERROR", "Internal Server Error"]));
    }
    if let Some(expected) = &config.app_token {
        if request.header("app-token") != Some(expected.as_str()) {
            return glpi_error(
                400,
                "ERROR_WRONG_APP_TOKEN_PARAMETER",
                "parameter app_token seems wrong",
            );
        }
    }
    if endpoint == "initSession" {
        return init_session(config, &mut state, request);
    }
    let Some(session) = request.header("session-token") else {
        return glpi_error(
            400,
            "ERROR_SESSION_TOKEN_MISSING",
            "parameter session_token is missing or empty",
        );
    };
    if !state.sessions.contains(session) {
        return glpi_error(
            401,
            "ERROR_SESSION_TOKEN_INVALID",
            "session_token seems invalid",
        );
    }
    let session = session.to_owned();
    let user = config.api_user().to_owned();
    match (request.method.as_str(), endpoint.as_str()) {
        ("GET", "killSession") => {
            state.sessions.remove(&session);
            (200, json!(true))
        }
        ("GET", "getFullSession") => (200, full_session(config, &state, &session)),
        ("GET", "getActiveProfile") => (
            200,
            json!({ "active_profile": state.api_profile.session_json() }),
        ),
        ("GET", "search/Ticket") => search_tickets(&state, request, &user),
        ("GET", path) if path.starts_with("Ticket/") => get_ticket(&state, path, &user),
        ("POST", "Ticket") => {
            let (answer, notice) = api_create_ticket(inner, &mut state, request, &user);
            drop(state);
            notify::dispatch_now(inner, notice);
            answer
        }
        ("POST", "ITILSolution") => match itil_input(request) {
            Ok((id, content)) => {
                let (answer, notice) = api_solve(inner, &mut state, id, content);
                drop(state);
                notify::dispatch_now(inner, notice);
                answer
            }
            Err(e) => e,
        },
        ("POST", "ITILFollowup") => match itil_input(request) {
            Ok((id, content)) => {
                let (answer, notice) = api_followup(inner, &mut state, id, content, &user);
                drop(state);
                notify::dispatch_now(inner, notice);
                answer
            }
            Err(e) => e,
        },
        _ => glpi_error(
            400,
            "ERROR_RESOURCE_NOT_FOUND_NOR_COMMONDBTM",
            "resource not found",
        ),
    }
}

fn full_session(config: &GlpiConfig, state: &State, session: &str) -> Value {
    let user = config.api_user();
    let name = user.split('@').next().unwrap_or(user);
    json!({
        "session": {
            "valid_id": session,
            "glpi_currenttime": "2026-12-01 21:00:00",
            "glpi_use_mode": 0,
            "glpiID": config.user_id(user).unwrap_or(0),
            "glpiis_ids_visible": "",
            "glpifriendlyname": name,
            "glpiname": name,
            "glpirealname": "",
            "glpifirstname": "",
            "glpidefault_entity": 0,
            "glpiextauth": 0,
            "glpiauthtype": 1,
            "glpiprofiles": {
                state.api_profile.id.to_string(): {"name": state.api_profile.name, "entities": [{"id": 0, "name": "Root entity", "is_recursive": 1}]}
            },
            "glpiactiveprofile": state.api_profile.session_json(),
            "glpiactive_entity": 0,
            "glpiactive_entity_name": "Root entity",
            "glpiactive_entity_shortname": "Root entity",
            "glpiactive_entity_recursive": 1,
            "glpiactiveentities": [0],
            "glpiactiveentities_string": "'0'",
            "glpilanguage": "en_GB",
            "glpigroups": [],
        }
    })
}

fn get_ticket(state: &State, path: &str, user: &str) -> (u16, Value) {
    let Some(id) = path
        .strip_prefix("Ticket/")
        .and_then(|id| id.parse::<u64>().ok())
    else {
        return glpi_error(400, "ERROR_ITEM_NOT_FOUND", "Item not found");
    };
    let Some(ticket) = state.tickets.iter().find(|t| t.id == id) else {
        return glpi_error(404, "ERROR_ITEM_NOT_FOUND", "Item not found");
    };
    if !state.api_profile.can_view(ticket, user) {
        return glpi_error(401, "ERROR_RIGHT_MISSING", NO_PERMISSION);
    }
    (
        200,
        json!({
            "id": ticket.id,
            "entities_id": ticket.entities_id,
            "name": ticket.title,
            "date": "2026-12-01 20:02:50",
            "closedate": null,
            "solvedate": null,
            "date_mod": "2026-12-01 20:02:50",
            "users_id_lastupdater": 2,
            "status": ticket.status,
            "users_id_recipient": 2,
            "requesttypes_id": if ticket.created_by == Source::Mail { 2 } else { 1 },
            "content": ticket.content,
            "urgency": ticket.urgency,
            "impact": ticket.impact,
            "priority": ticket.urgency.max(ticket.impact),
            "itilcategories_id": ticket.itilcategories_id,
            "type": 1,
            "global_validation": 1,
            "is_deleted": 0,
        }),
    )
}

fn input_object(request: &HttpRequest) -> Result<serde_json::Map<String, Value>, (u16, Value)> {
    let body: Value = serde_json::from_slice(&request.body).map_err(|_| {
        glpi_error(
            400,
            "ERROR_JSON_PAYLOAD_INVALID",
            "JSON payload seems not valid",
        )
    })?;
    match body.get("input") {
        Some(Value::Object(input)) => Ok(input.clone()),
        _ => Err(glpi_error(
            400,
            "ERROR_BAD_ARRAY",
            "input parameter must be an array of objects",
        )),
    }
}

fn json_u64(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `POST Ticket {"input":{"name","content","urgency","impact","_users_id_requester",
/// "entities_id","itilcategories_id"}}`.
fn api_create_ticket(
    inner: &Inner,
    state: &mut State,
    request: &HttpRequest,
    user: &str,
) -> ((u16, Value), Option<notify::Notice>) {
    if state.api_profile.ticket & super::RIGHT_CREATE == 0 {
        return (glpi_error(400, "ERROR_GLPI_ADD", NO_PERMISSION), None);
    }
    let input = match input_object(request) {
        Ok(input) => input,
        Err(e) => return (e, None),
    };
    let text = |key: &str| {
        input
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (name, content) = (text("name"), text("content"));
    if name.trim().is_empty() && content.trim().is_empty() {
        return (
            glpi_error(
                400,
                "ERROR_GLPI_ADD",
                "Mandatory fields are not filled. Please correct: Title, Description",
            ),
            None,
        );
    }
    let level = |key: &str| -> Result<u8, (u16, Value)> {
        match json_u64(input.get(key)) {
            None => Ok(3),
            Some(n @ 1..=5) => Ok(n as u8),
            Some(n) => Err(glpi_error(
                400,
                "ERROR_GLPI_ADD",
                &format!("{key} {n} is not between 1 and 5"),
            )),
        }
    };
    let (urgency, impact) = match (level("urgency"), level("impact")) {
        (Ok(u), Ok(i)) => (u, i),
        (Err(e), _) | (_, Err(e)) => return (e, None),
    };
    let requester = match json_u64(input.get("_users_id_requester")) {
        Some(id) => match inner.config.user_by_id(id) {
            Some(address) => address.to_owned(),
            None => {
                return (
                    glpi_error(400, "ERROR_GLPI_ADD", &format!("User {id} not found")),
                    None,
                )
            }
        },
        None => user.to_owned(),
    };
    let notice = open_ticket(
        inner,
        state,
        NewTicket {
            title: if name.trim().is_empty() {
                "(No title)".into()
            } else {
                name
            },
            content,
            requester,
            message_id: None,
            linked_to: None,
            created_by: Source::Api,
            urgency,
            impact,
            entities_id: json_u64(input.get("entities_id")).unwrap_or(0),
            itilcategories_id: json_u64(input.get("itilcategories_id")).unwrap_or(0),
        },
    );
    let id = state.tickets.last().map_or(0, |t| t.id);
    (
        (
            201,
            json!({ "id": id, "message": format!("Your ticket has been registered. (Ticket: {id})") }),
        ),
        notice,
    )
}

fn init_session(config: &GlpiConfig, state: &mut State, request: &HttpRequest) -> (u16, Value) {
    let Some(authorization) = request.header("authorization") else {
        return glpi_error(
            400,
            "ERROR_LOGIN_PARAMETERS_MISSING",
            "parameter(s) login, password or user_token are missing",
        );
    };
    let token = authorization.strip_prefix("user_token ").map(str::trim);
    if token != Some(config.user_token.as_str()) {
        return glpi_error(
            401,
            "ERROR_GLPI_LOGIN_USER_TOKEN",
            "parameter user_token seems invalid",
        );
    }
    state.next_session += 1;
    let session = format!("{:016x}{:08x}", rand::random::<u64>(), state.next_session);
    state.sessions.insert(session.clone());
    (200, json!({ "session_token": session }))
}

/// `criteria[0][field]=1&criteria[0][searchtype]=contains&criteria[0][value]=…`:
/// GLPI's LIKE '%value%' on the title, case-insensitive.
fn search_tickets(state: &State, request: &HttpRequest, user: &str) -> (u16, Value) {
    if !state.api_profile.can_search() {
        return glpi_error(401, "ERROR_RIGHT_MISSING", NO_PERMISSION);
    }
    let field = request.query_value("criteria[0][field]");
    let searchtype = request.query_value("criteria[0][searchtype]");
    let Some(value) = request.query_value("criteria[0][value]") else {
        return glpi_error(
            400,
            "ERROR",
            "the double only supports criteria[0] searches",
        );
    };
    if field != Some("1") || searchtype != Some("contains") {
        return glpi_error(
            400,
            "ERROR",
            "the double only supports title contains searches",
        );
    }
    let needle = value.to_lowercase();
    let rows: Vec<Value> = state
        .tickets
        .iter()
        .filter(|t| t.title.to_lowercase().contains(&needle))
        .filter(|t| state.api_profile.can_view(t, user))
        .map(|t| {
            let mut row = serde_json::Map::new();
            row.insert("1".into(), json!(t.title));
            row.insert("2".into(), json!(t.id));
            let forced: Vec<&str> = request
                .query
                .iter()
                .filter(|(k, _)| k.starts_with("forcedisplay["))
                .map(|(_, v)| v.as_str())
                .collect();
            if forced.contains(&"12") {
                row.insert("12".into(), json!(t.status));
            }
            Value::Object(row)
        })
        .collect();
    let count = rows.len();
    let mut answer = json!({
        "totalcount": count,
        "count": count,
        "sort": [1],
        "order": ["ASC"],
    });
    if count > 0 {
        answer["data"] = Value::Array(rows);
        answer["content-range"] = json!(format!("0-{}/{count}", count - 1));
    }
    (200, answer)
}

/// `{"input":{"itemtype":"Ticket","items_id":N,"content":"…"}}`
fn itil_input(request: &HttpRequest) -> Result<(u64, String), (u16, Value)> {
    let bad = || {
        glpi_error(
            400,
            "ERROR_BAD_ARRAY",
            "input parameter must be an array of objects",
        )
    };
    let body: Value = serde_json::from_slice(&request.body).map_err(|_| {
        glpi_error(
            400,
            "ERROR_JSON_PAYLOAD_INVALID",
            "JSON payload seems not valid",
        )
    })?;
    let input = body.get("input").ok_or_else(bad)?;
    if input.get("itemtype").and_then(Value::as_str) != Some("Ticket") {
        return Err(bad());
    }
    let id = input
        .get("items_id")
        .and_then(Value::as_u64)
        .ok_or_else(bad)?;
    let content = input
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok((id, content))
}

fn created(state: &mut State) -> (u16, Value) {
    state.next_item_id += 1;
    (201, json!({ "id": state.next_item_id, "message": "" }))
}

fn api_solve(
    inner: &Inner,
    state: &mut State,
    id: u64,
    content: String,
) -> ((u16, Value), Option<notify::Notice>) {
    let Some(ticket) = state.tickets.iter().find(|t| t.id == id) else {
        return (glpi_error(400, "ERROR_GLPI_ADD", NO_PERMISSION), None);
    };
    if !state.api_profile.can_solve(ticket) {
        return (glpi_error(400, "ERROR_GLPI_ADD", NO_PERMISSION), None);
    }
    if ticket.status == STATUS_SOLVED {
        return (
            glpi_error(
                400,
                "ERROR_GLPI_ADD",
                "The item is already solved, did anyone pushed a solution before you?",
            ),
            None,
        );
    }
    add_solution(state, id, content, Source::Api);
    let ticket = super::ticket_mut(state, id).clone();
    let notice = notify::event_notice(inner, state, &ticket, notify::Event::Solved);
    (created(state), notice)
}

fn api_followup(
    inner: &Inner,
    state: &mut State,
    id: u64,
    content: String,
    user: &str,
) -> ((u16, Value), Option<notify::Notice>) {
    let Some(ticket) = state.tickets.iter().find(|t| t.id == id) else {
        return (glpi_error(400, "ERROR_GLPI_ADD", NO_PERMISSION), None);
    };
    if !state.api_profile.can_add_followup(ticket, user) {
        return (glpi_error(400, "ERROR_GLPI_ADD", NO_PERMISSION), None);
    }
    let notice = add_followup(
        inner,
        state,
        id,
        content,
        user.to_owned(),
        String::new(),
        None,
        Source::Api,
    );
    (created(state), notice)
}
