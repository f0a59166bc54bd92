//! Client of GLPI's legacy REST API (`apirest.php`): one session opened on first use,
//! reused and renewed on 401; ticket lookup by thread tag, creation, status, solve,
//! follow-up, and the API user's rights. Tokens are kept in [`Secret`] so they never
//! reach logs or Debug output.

use super::rights::ApiRights;
use crate::ticket::TicketStatus;
use serde::Deserialize;
use serde_json::{json, Value};
use std::fmt;
use std::time::Duration;
use tokio::sync::Mutex;

/// A token: deserialised from config as a plain string, printed as `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The token itself, only for putting it in a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `[glpi_api]` in the gateway config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlpiApiConfig {
    /// Base URL of the legacy API, e.g. `https://glpi.example.com/apirest.php`.
    pub url: String,
    /// The API client's App-Token (Setup > General > API), when GLPI requires one.
    #[serde(default)]
    pub app_token: Option<Secret>,
    /// The alertgate user's personal API token (its GLPI user's Remote access keys).
    pub user_token: Secret,
    /// Solve the ticket through the API when alertgate sees the incident recover.
    #[serde(default)]
    pub solve_on_recovery: bool,
    /// Timeout of one HTTP request.
    #[serde(default = "default_request_timeout")]
    pub timeout_secs: u64,
    /// Accept a self-signed or otherwise invalid certificate (test installs only).
    #[serde(default)]
    pub accept_invalid_certs: bool,
    /// How new tickets are opened: by mail through GLPI's collector (its rules route
    /// them) or by `POST Ticket` (the id is known at once, no collector needed).
    #[serde(default)]
    pub create: CreateMode,
    /// With `create = "api"`: the entity id of new tickets (GLPI's default: the API
    /// user's active entity).
    #[serde(default)]
    pub entity: Option<u64>,
    /// With `create = "api"`: the ITIL category id of new tickets.
    #[serde(default)]
    pub category: Option<u64>,
    /// With `create = "api"`: the GLPI user id of the tickets' requester (default: the
    /// API user).
    #[serde(default)]
    pub requester: Option<u64>,
}

/// `[glpi_api] create`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CreateMode {
    /// Mail to the collector's mailbox (GLPI's rules choose entity, category, group).
    #[default]
    Mail,
    /// `POST Ticket` through the API.
    Api,
}

fn default_request_timeout() -> u64 {
    10
}

impl GlpiApiConfig {
    /// A config with defaults for everything but the URL and user token.
    pub fn new(url: impl Into<String>, user_token: impl Into<String>) -> GlpiApiConfig {
        GlpiApiConfig {
            url: url.into(),
            app_token: None,
            user_token: Secret::new(user_token),
            solve_on_recovery: false,
            timeout_secs: default_request_timeout(),
            accept_invalid_certs: false,
            create: CreateMode::Mail,
            entity: None,
            category: None,
            requester: None,
        }
    }

    /// What the configured features need from the API user's profile.
    pub fn needs(&self) -> super::rights::Needs {
        super::rights::Needs {
            create_tickets: self.create == CreateMode::Api,
            solve: self.solve_on_recovery,
            other_requester: self.create == CreateMode::Api && self.requester.is_some(),
        }
    }

    /// Checks what serde cannot: URL scheme, non-empty token, non-zero timeouts.
    pub fn validate(&self) -> Result<(), ApiError> {
        let url = self.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ApiError::Config(format!(
                "glpi_api.url must start with http:// or https://, got `{url}`"
            )));
        }
        if self.user_token.expose().trim().is_empty() {
            return Err(ApiError::Config("glpi_api.user_token is empty".into()));
        }
        if self
            .app_token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            return Err(ApiError::Config(
                "glpi_api.app_token is empty (remove it when GLPI needs none)".into(),
            ));
        }
        if self.timeout_secs == 0 {
            return Err(ApiError::Config("glpi_api.timeout_secs must be > 0".into()));
        }
        if self.create == CreateMode::Mail {
            for (key, set) in [
                ("entity", self.entity.is_some()),
                ("category", self.category.is_some()),
                ("requester", self.requester.is_some()),
            ] {
                if set {
                    return Err(ApiError::Config(format!(
                        "glpi_api.{key} only applies with create = \"api\" (with create = \"mail\", GLPI's mail collector rules choose it)"
                    )));
                }
            }
        }
        if self.requester == Some(0) {
            return Err(ApiError::Config(
                "glpi_api.requester must be a GLPI user id (> 0)".into(),
            ));
        }
        Ok(())
    }
}

/// Errors from the GLPI API. [`ApiError::is_transient`] tells whether retrying later
/// can help.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid GLPI API configuration: {0}")]
    Config(String),
    #[error("GLPI API unreachable: {0}")]
    Unreachable(String),
    #[error("GLPI API server error {status}: {body}")]
    Server { status: u16, body: String },
    #[error("GLPI API login refused ({status}): {body}")]
    Login { status: u16, body: String },
    #[error("GLPI API refused the request ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("unexpected answer from GLPI API: {0}")]
    BadResponse(String),
}

impl ApiError {
    /// Connection problems and 5xx answers may pass; wrong tokens and refused
    /// requests will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, ApiError::Unreachable(_) | ApiError::Server { .. })
    }

    /// GLPI refused this request for good (a 4xx other than a login problem): sending
    /// it again will get the same answer, e.g. `400 ["ERROR_GLPI_ADD","You don't have
    /// permission to perform this action."]` for a solution the profile may not add.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ApiError::Refused { .. })
    }

    /// GLPI's error code (`ERROR_GLPI_ADD`, `ERROR_RIGHT_MISSING`, ...) when the answer
    /// was GLPI's `["CODE", "message"]`.
    pub fn glpi_code(&self) -> Option<String> {
        match self {
            ApiError::Refused { body, .. }
            | ApiError::Login { body, .. }
            | ApiError::Server { body, .. } => glpi_error_code(body),
            _ => None,
        }
    }
}

/// `["ERROR_CODE", "message"]` → `ERROR_CODE`.
fn glpi_error_code(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body.trim_end_matches('…')).ok()?;
    value
        .get(0)
        .and_then(Value::as_str)
        .filter(|code| code.starts_with("ERROR"))
        .map(str::to_owned)
}

/// The outcome of [`GlpiApi::check_rights`]: what the API user may do of what the
/// config asks.
#[derive(Debug)]
pub enum RightsCheck {
    /// Everything the config needs is granted.
    Granted(ApiRights),
    /// Some needed rights are missing (each names its recipe).
    Missing {
        rights: ApiRights,
        missing: Vec<super::rights::MissingRight>,
    },
    /// The rights could not be read (GLPI down, bad token, ...).
    Unavailable(ApiError),
}

impl RightsCheck {
    /// Solutions may be posted: granted, or unknown (GLPI was not reachable; a refusal
    /// later falls back to a follow-up).
    pub fn may_solve(&self) -> bool {
        match self {
            RightsCheck::Granted(_) | RightsCheck::Unavailable(_) => true,
            RightsCheck::Missing { rights, .. } => rights.can_solve(),
        }
    }

    /// Tickets may be created through the API (same reading as [`Self::may_solve`]).
    pub fn may_create(&self) -> bool {
        match self {
            RightsCheck::Granted(_) | RightsCheck::Unavailable(_) => true,
            RightsCheck::Missing { rights, .. } => rights.create_tickets,
        }
    }

    /// Logs the outcome: info when granted, one warning per missing right.
    pub fn log(&self) {
        match self {
            RightsCheck::Granted(rights) => {
                tracing::info!(%rights, "GLPI API user has every right alertgate needs")
            }
            RightsCheck::Missing { rights, missing } => {
                for right in missing {
                    tracing::warn!(%rights, missing = %right, "GLPI API user lacks a right");
                }
                if !rights.can_solve() {
                    tracing::warn!("tickets will not be solved through the API; recoveries go to the ticket as follow-ups");
                }
            }
            RightsCheck::Unavailable(e) => {
                tracing::warn!(error = %e, "could not read the GLPI API user's rights; assuming they are sufficient")
            }
        }
    }
}

/// A ticket for [`GlpiApi::create_ticket`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTicket {
    /// The title (alertgate's subject, thread tag included).
    pub name: String,
    /// The description (HTML is fine: GLPI keeps rich text).
    pub content: String,
    /// GLPI's 1 (very low) .. 5 (very high).
    pub urgency: u8,
    pub impact: u8,
    /// `_users_id_requester`; `None` leaves GLPI's default (the API user).
    pub requester_id: Option<u64>,
    pub entity_id: Option<u64>,
    pub category_id: Option<u64>,
}

impl NewTicket {
    /// A ticket with the configured requester, entity and category of `cfg`.
    pub fn new(cfg: &GlpiApiConfig, name: &str, content: &str, urgency: u8) -> NewTicket {
        NewTicket {
            name: name.to_owned(),
            content: content.to_owned(),
            urgency: urgency.clamp(1, 5),
            impact: urgency.clamp(1, 5),
            requester_id: cfg.requester,
            entity_id: cfg.entity,
            category_id: cfg.category,
        }
    }
}

/// Seconds to wait before lookup attempt `attempt + 1`: 5, 10, 20, 40, then 60.
pub fn lookup_backoff(attempt: u32) -> u64 {
    const FIRST: u64 = 5;
    const MAX: u64 = 60;
    FIRST
        .checked_shl(attempt.min(16))
        .map_or(MAX, |secs| secs.min(MAX))
}

/// GLPI's ticket status codes (1 new … 6 closed) as alertgate sees them.
pub fn ticket_status_from_code(code: i64) -> TicketStatus {
    match code {
        1..=4 => TicketStatus::Open,
        5 => TicketStatus::Solved,
        6 => TicketStatus::Closed,
        _ => TicketStatus::Unknown,
    }
}

/// Longest piece of an error body kept in an error message.
const BODY_EXCERPT_CHARS: usize = 300;

/// The search option ids of GLPI's Ticket: title, id, status.
const FIELD_TITLE: &str = "1";
const FIELD_ID: &str = "2";
const FIELD_STATUS: &str = "12";

/// A GLPI legacy REST API client holding at most one session.
pub struct GlpiApi {
    client: reqwest::Client,
    base: String,
    app_token: Option<Secret>,
    user_token: Secret,
    session: Mutex<Option<Secret>>,
}

impl fmt::Debug for GlpiApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlpiApi")
            .field("base", &self.base)
            .field("app_token", &self.app_token)
            .field("user_token", &self.user_token)
            .finish_non_exhaustive()
    }
}

/// One API call, described so it can be sent again after a session renewal.
enum Call<'a> {
    Get {
        path: &'a str,
        query: &'a [(&'a str, String)],
    },
    Post {
        path: &'a str,
        body: &'a Value,
    },
}

impl GlpiApi {
    pub fn new(cfg: &GlpiApiConfig) -> Result<GlpiApi, ApiError> {
        cfg.validate()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs(cfg.timeout_secs))
            .danger_accept_invalid_certs(cfg.accept_invalid_certs)
            .user_agent(concat!("alertgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Config(format!("cannot build HTTP client: {e}")))?;
        Ok(GlpiApi {
            client,
            base: cfg.url.trim().trim_end_matches('/').to_owned(),
            app_token: cfg.app_token.clone(),
            user_token: cfg.user_token.clone(),
            session: Mutex::new(None),
        })
    }

    /// The newest ticket whose title contains `tag`, with its status; `None` when
    /// GLPI has no such ticket (yet).
    pub async fn find_ticket_by_tag(
        &self,
        tag: &str,
    ) -> Result<Option<(u64, TicketStatus)>, ApiError> {
        let query = [
            ("criteria[0][field]", FIELD_TITLE.to_owned()),
            ("criteria[0][searchtype]", "contains".to_owned()),
            ("criteria[0][value]", tag.to_owned()),
            ("forcedisplay[0]", FIELD_ID.to_owned()),
            ("forcedisplay[1]", FIELD_STATUS.to_owned()),
            ("forcedisplay[2]", FIELD_TITLE.to_owned()),
        ];
        let answer = self
            .call_json(Call::Get {
                path: "search/Ticket",
                query: &query,
            })
            .await?;
        parse_search(&answer, tag)
    }

    /// Opens a ticket with `POST Ticket`; returns its id. A refusal (no Create right,
    /// a bad field) is [`ApiError::Refused`]; an outage is transient.
    pub async fn create_ticket(&self, ticket: &NewTicket) -> Result<u64, ApiError> {
        let mut input = serde_json::Map::new();
        input.insert("name".into(), json!(ticket.name));
        input.insert("content".into(), json!(ticket.content));
        input.insert("urgency".into(), json!(ticket.urgency));
        input.insert("impact".into(), json!(ticket.impact));
        // 1 = incident (2 would be a request).
        input.insert("type".into(), json!(1));
        if let Some(id) = ticket.requester_id {
            input.insert("_users_id_requester".into(), json!(id));
        }
        if let Some(id) = ticket.entity_id {
            input.insert("entities_id".into(), json!(id));
        }
        if let Some(id) = ticket.category_id {
            input.insert("itilcategories_id".into(), json!(id));
        }
        let body = json!({ "input": input });
        let answer = self
            .call_json(Call::Post {
                path: "Ticket",
                body: &body,
            })
            .await?;
        answer.get("id").and_then(json_u64).ok_or_else(|| {
            ApiError::BadResponse(format!(
                "Ticket creation answered without an id: {}",
                excerpt(&answer.to_string())
            ))
        })
    }

    /// The ticket's status now (`GET Ticket/N`): `None` when GLPI has no such ticket;
    /// a ticket in the trash counts as closed (follow-ups to it reach nobody).
    pub async fn ticket_status(&self, id: u64) -> Result<Option<TicketStatus>, ApiError> {
        let path = format!("Ticket/{id}");
        let answer = match self
            .call_json(Call::Get {
                path: &path,
                query: &[],
            })
            .await
        {
            Ok(answer) => answer,
            Err(ApiError::Refused { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if answer.get("is_deleted").and_then(json_i64) == Some(1) {
            return Ok(Some(TicketStatus::Closed));
        }
        match answer.get("status").and_then(json_i64) {
            Some(code) => Ok(Some(ticket_status_from_code(code))),
            None => Err(ApiError::BadResponse(format!(
                "Ticket/{id} answered without a status: {}",
                excerpt(&answer.to_string())
            ))),
        }
    }

    /// The API user's rights, from `getFullSession` (who) and `getActiveProfile`
    /// (what). Compare with [`GlpiApiConfig::needs`] through [`ApiRights::missing`].
    pub async fn rights(&self) -> Result<ApiRights, ApiError> {
        let full = self
            .call_json(Call::Get {
                path: "getFullSession",
                query: &[],
            })
            .await?;
        let session = full.get("session");
        let active = self
            .call_json(Call::Get {
                path: "getActiveProfile",
                query: &[],
            })
            .await?;
        let profile = active
            .get("active_profile")
            .or_else(|| session.and_then(|s| s.get("glpiactiveprofile")))
            .ok_or_else(|| {
                ApiError::BadResponse(format!(
                    "getActiveProfile answered without active_profile: {}",
                    excerpt(&active.to_string())
                ))
            })?;
        ApiRights::from_profile(profile, session).map_err(ApiError::BadResponse)
    }

    /// [`Self::rights`] compared with what `needs` (see [`GlpiApiConfig::needs`]).
    pub async fn check_rights(&self, needs: super::rights::Needs) -> RightsCheck {
        match self.rights().await {
            Ok(rights) => {
                let missing = rights.missing(needs);
                if missing.is_empty() {
                    RightsCheck::Granted(rights)
                } else {
                    RightsCheck::Missing { rights, missing }
                }
            }
            Err(e) => RightsCheck::Unavailable(e),
        }
    }

    /// Adds a solution to the ticket; GLPI then sets it to solved (5).
    pub async fn solve_ticket(&self, id: u64, content: &str) -> Result<(), ApiError> {
        self.add_itil_item("ITILSolution", id, content).await
    }

    /// Adds a follow-up to the ticket.
    pub async fn add_followup(&self, id: u64, content: &str) -> Result<(), ApiError> {
        self.add_itil_item("ITILFollowup", id, content).await
    }

    /// Ends the session, if one is open. Errors are ignored: the session expires anyway.
    pub async fn close(&self) {
        let Some(session) = self.session.lock().await.take() else {
            return;
        };
        let request = self
            .client
            .get(format!("{}/killSession", self.base))
            .header("Session-Token", session.expose());
        if let Err(e) = self.with_app_token(request).send().await {
            tracing::debug!(error = %e, "GLPI killSession failed");
        }
    }

    async fn add_itil_item(&self, itemtype: &str, id: u64, content: &str) -> Result<(), ApiError> {
        let body = json!({"input": {"itemtype": "Ticket", "items_id": id, "content": content}});
        let answer = self
            .call_json(Call::Post {
                path: itemtype,
                body: &body,
            })
            .await?;
        // GLPI answers 201 {"id": N, "message": ""}; a missing id means nothing was added.
        match answer.get("id").and_then(json_u64) {
            Some(_) => Ok(()),
            None => Err(ApiError::BadResponse(format!(
                "{itemtype} creation answered without an id: {}",
                excerpt(&answer.to_string())
            ))),
        }
    }

    /// Sends `call` in the current session; on 401 the session is renewed and the
    /// call sent once more.
    async fn call_json(&self, call: Call<'_>) -> Result<Value, ApiError> {
        let session = self.session_token(false).await?;
        let (status, body) = read_body(self.send(&call, &session).await?).await?;
        let (status, body) = if status == reqwest::StatusCode::UNAUTHORIZED
            && glpi_error_code(&body).as_deref() != Some("ERROR_RIGHT_MISSING")
        {
            tracing::info!("GLPI API session expired; opening a new one");
            let session = self.session_token(true).await?;
            read_body(self.send(&call, &session).await?).await?
        } else {
            (status, body)
        };
        interpret(status, &body)
    }

    async fn send(&self, call: &Call<'_>, session: &Secret) -> Result<reqwest::Response, ApiError> {
        let request = match call {
            Call::Get { path, query } => self
                .client
                .get(format!("{}/{path}", self.base))
                .query(query),
            Call::Post { path, body } => {
                self.client.post(format!("{}/{path}", self.base)).json(body)
            }
        };
        let request = self
            .with_app_token(request)
            .header("Session-Token", session.expose());
        let sent = request.send().await;
        crate::http::metrics::metrics()
            .glpi_api_call(sent.as_ref().is_ok_and(|r| r.status().is_success()));
        sent.map_err(unreachable)
    }

    fn with_app_token(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.app_token {
            Some(token) => request.header("App-Token", token.expose()),
            None => request,
        }
    }

    /// The open session, or a new one when there is none or `renew` is set.
    async fn session_token(&self, renew: bool) -> Result<Secret, ApiError> {
        let mut session = self.session.lock().await;
        if let (Some(token), false) = (session.as_ref(), renew) {
            return Ok(token.clone());
        }
        *session = None;
        let token = self.init_session().await;
        crate::http::metrics::metrics().glpi_session_opened(token.is_ok());
        let token = token?;
        *session = Some(token.clone());
        Ok(token)
    }

    async fn init_session(&self) -> Result<Secret, ApiError> {
        let request = self
            .client
            .get(format!("{}/initSession", self.base))
            .header(
                "Authorization",
                format!("user_token {}", self.user_token.expose()),
            );
        let response = self
            .with_app_token(request)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        if status.is_client_error() {
            let body = response.text().await.unwrap_or_default();
            return Err(ApiError::Login {
                status: status.as_u16(),
                body: excerpt(&body),
            });
        }
        let answer = read_json(response).await?;
        answer
            .get("session_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or_else(|| {
                ApiError::BadResponse("initSession answered without session_token".into())
            })
    }
}

fn unreachable(e: reqwest::Error) -> ApiError {
    // Without the URL: it is ours and known; the cause is what matters.
    ApiError::Unreachable(e.without_url().to_string())
}

async fn read_json(response: reqwest::Response) -> Result<Value, ApiError> {
    let (status, body) = read_body(response).await?;
    interpret(status, &body)
}

async fn read_body(response: reqwest::Response) -> Result<(reqwest::StatusCode, String), ApiError> {
    let status = response.status();
    let body = response.text().await.map_err(unreachable)?;
    Ok((status, body))
}

/// An answer as a result: 5xx transient, 401 a login problem (a missing right is a
/// refusal), other 4xx refusals, 2xx its JSON.
fn interpret(status: reqwest::StatusCode, body: &str) -> Result<Value, ApiError> {
    if status == reqwest::StatusCode::UNAUTHORIZED
        && glpi_error_code(body).as_deref() == Some("ERROR_RIGHT_MISSING")
    {
        return Err(ApiError::Refused {
            status: status.as_u16(),
            body: excerpt(body),
        });
    }
    if status.is_server_error() {
        return Err(ApiError::Server {
            status: status.as_u16(),
            body: excerpt(body),
        });
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(ApiError::Login {
            status: status.as_u16(),
            body: excerpt(body),
        });
    }
    if !status.is_success() {
        return Err(ApiError::Refused {
            status: status.as_u16(),
            body: excerpt(body),
        });
    }
    serde_json::from_str(body).map_err(|e| ApiError::BadResponse(format!("{e}: {}", excerpt(body))))
}

/// Picks the newest ticket whose title really holds `tag` (GLPI's `contains` is a
/// case-insensitive LIKE, so it can return near misses).
fn parse_search(answer: &Value, tag: &str) -> Result<Option<(u64, TicketStatus)>, ApiError> {
    let Some(total) = answer.get("totalcount").and_then(json_u64) else {
        return Err(ApiError::BadResponse(format!(
            "search/Ticket answer has no totalcount: {}",
            excerpt(&answer.to_string())
        )));
    };
    let rows = match answer.get("data") {
        Some(Value::Array(rows)) => rows.as_slice(),
        None | Some(Value::Null) if total == 0 => &[],
        _ => {
            return Err(ApiError::BadResponse(format!(
                "search/Ticket answer has no data list: {}",
                excerpt(&answer.to_string())
            )))
        }
    };
    let mut best: Option<(u64, TicketStatus)> = None;
    for row in rows {
        let Some(id) = row.get(FIELD_ID).and_then(json_u64) else {
            return Err(ApiError::BadResponse(format!(
                "search/Ticket row without a ticket id: {}",
                excerpt(&row.to_string())
            )));
        };
        let title_matches = match row.get(FIELD_TITLE).and_then(Value::as_str) {
            Some(title) => title.contains(tag),
            None => true,
        };
        if !title_matches {
            continue;
        }
        let status = row
            .get(FIELD_STATUS)
            .and_then(json_i64)
            .map_or(TicketStatus::Unknown, ticket_status_from_code);
        if best.is_none_or(|(known, _)| id > known) {
            best = Some((id, status));
        }
    }
    Ok(best)
}

/// GLPI returns numbers as JSON numbers or as strings depending on version and field.
fn json_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn json_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn excerpt(body: &str) -> String {
    let mut text: String = body.chars().take(BODY_EXCERPT_CHARS).collect();
    if body.chars().count() > BODY_EXCERPT_CHARS {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_stays_bounded() {
        let secs: Vec<u64> = (0..8).map(lookup_backoff).collect();
        assert_eq!(secs, [5, 10, 20, 40, 60, 60, 60, 60]);
        assert_eq!(lookup_backoff(u32::MAX), 60);
        assert_eq!(lookup_backoff(63), 60);
    }

    #[test]
    fn status_codes() {
        let mapped: Vec<TicketStatus> = (0..=7).map(ticket_status_from_code).collect();
        use TicketStatus::*;
        assert_eq!(
            mapped,
            [Unknown, Open, Open, Open, Open, Solved, Closed, Unknown]
        );
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let cfg: GlpiApiConfig = toml::from_str(
            "url = \"https://glpi.example.test/apirest.php\"\nuser_token = \"u-secret\"\n",
        )
        .unwrap();
        assert_eq!(cfg.timeout_secs, 10);
        assert!(!cfg.solve_on_recovery);
        assert!(!cfg.accept_invalid_certs);
        assert!(cfg.app_token.is_none());
        assert!(cfg.validate().is_ok());
        let err = toml::from_str::<GlpiApiConfig>(
            "url = \"https://x\"\nuser_token = \"t\"\nsolve = true\n",
        );
        assert!(err.is_err());
        let mut bad = cfg.clone();
        bad.url = "glpi.example.test".into();
        assert!(matches!(bad.validate(), Err(ApiError::Config(_))));
        let mut bad = cfg;
        bad.user_token = Secret::new(" ");
        assert!(matches!(bad.validate(), Err(ApiError::Config(_))));
    }

    #[test]
    fn tokens_never_in_debug_output() {
        let mut cfg = GlpiApiConfig::new("https://glpi.example.test/apirest.php", "u-secret-1");
        cfg.app_token = Some(Secret::new("a-secret-2"));
        let api = GlpiApi::new(&cfg).unwrap();
        for text in [format!("{cfg:?}"), format!("{api:?}"), format!("{cfg:#?}")] {
            assert!(!text.contains("u-secret-1"), "{text}");
            assert!(!text.contains("a-secret-2"), "{text}");
            assert!(text.contains("***"), "{text}");
        }
    }

    #[test]
    fn search_answers() {
        let one =
            json!({"totalcount":1,"count":1,"data":[{"1":"[ALERT-1f3a9c2e] x","2":123,"12":1}]});
        assert_eq!(
            parse_search(&one, "ALERT-1f3a9c2e").unwrap(),
            Some((123, TicketStatus::Open))
        );
        let strings = json!({"totalcount":2,"count":2,"data":[
            {"1":"[ALERT-1f3a9c2e] x","2":"123","12":"6"},
            {"1":"[GLPI #0000123] [ALERT-1f3a9c2e] x","2":"130","12":"5"}]});
        assert_eq!(
            parse_search(&strings, "ALERT-1f3a9c2e").unwrap(),
            Some((130, TicketStatus::Solved))
        );
        let near_miss =
            json!({"totalcount":1,"count":1,"data":[{"1":"[alert-1F3A9C2E] x","2":9,"12":1}]});
        assert_eq!(parse_search(&near_miss, "ALERT-1f3a9c2e").unwrap(), None);
        let none = json!({"totalcount":0,"count":0,"sort":[1],"order":["ASC"]});
        assert_eq!(parse_search(&none, "ALERT-1f3a9c2e").unwrap(), None);
        let broken = json!({"totalcount":1,"count":1,"data":[{"1":"x"}]});
        assert!(matches!(
            parse_search(&broken, "x"),
            Err(ApiError::BadResponse(_))
        ));
        assert!(parse_search(&json!(["ERROR"]), "x").is_err());
    }

    #[test]
    fn error_kinds() {
        assert!(ApiError::Unreachable("x".into()).is_transient());
        assert!(ApiError::Server {
            status: 503,
            body: String::new()
        }
        .is_transient());
        assert!(!ApiError::Refused {
            status: 400,
            body: String::new()
        }
        .is_transient());
        assert!(!ApiError::Login {
            status: 401,
            body: String::new()
        }
        .is_transient());
    }
}
