//! Client of GLPI's legacy REST API (`apirest.php`): one session opened on first use,
//! reused and renewed on 401; ticket lookup by thread tag, solve, follow-up.
//! Tokens are kept in [`Secret`] so they never reach logs or Debug output.

use crate::correlate::TicketStatus;
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
        let response = self.send(&call, &session).await?;
        let response = if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            tracing::info!("GLPI API session expired; opening a new one");
            let session = self.session_token(true).await?;
            self.send(&call, &session).await?
        } else {
            response
        };
        read_json(response).await
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
    let status = response.status();
    let body = response.text().await.map_err(unreachable)?;
    if status.is_server_error() {
        return Err(ApiError::Server {
            status: status.as_u16(),
            body: excerpt(&body),
        });
    }
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(ApiError::Login {
            status: status.as_u16(),
            body: excerpt(&body),
        });
    }
    if !status.is_success() {
        return Err(ApiError::Refused {
            status: status.as_u16(),
            body: excerpt(&body),
        });
    }
    serde_json::from_str(&body)
        .map_err(|e| ApiError::BadResponse(format!("{e}: {}", excerpt(&body))))
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
