//! The HTTP listener (`[http]`): Prometheus `/metrics`, `/health` and `/ready` probes,
//! the server-rendered status page `/`, and its POST-only actions (retry a dead letter,
//! release a held mail), behind client networks and an optional bearer token.

pub mod metrics;
mod page;

use crate::store::{self, outbound, status, StoreError};
use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The `[http]` section. Without the section there is no HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// Clients allowed (CIDR or address); others get 403.
    pub allowed_networks: Vec<String>,
    /// Bearer token required from non-loopback clients, and for every action.
    pub token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9925".into(),
            allowed_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            token: None,
        }
    }
}

/// `[glpi]`: GLPI's web address, for links to tickets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlpiWebConfig {
    /// e.g. "https://glpi.example.org" (the ticket is `{url}/front/ticket.form.php?id=N`).
    pub url: String,
}

/// `[http]` checked at load.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub allowed_networks: Vec<IpNet>,
    pub token: Option<String>,
}

impl HttpSettings {
    /// Every problem as (key, value, message).
    pub fn from_config(c: &HttpConfig) -> Result<HttpSettings, Vec<(String, String, String)>> {
        let mut problems = Vec::new();
        let listen = c.listen.parse::<SocketAddr>().map_err(|_| {
            (
                "http.listen".to_string(),
                c.listen.clone(),
                format!(
                    "`{}` is not a socket address (expected IP:PORT, e.g. \"127.0.0.1:9925\")",
                    c.listen
                ),
            )
        });
        let mut allowed_networks = Vec::new();
        for net in &c.allowed_networks {
            let parsed = net
                .trim()
                .parse::<IpNet>()
                .or_else(|_| net.trim().parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(n) => allowed_networks.push(n),
                Err(_) => problems.push((
                    "http.allowed_networks".into(),
                    net.clone(),
                    format!("`{net}` is not a network (expected CIDR like \"192.0.2.0/24\" or a single address)"),
                )),
            }
        }
        if c.token.as_deref().is_some_and(|t| t.trim().len() < 16) {
            problems.push((
                "http.token".into(),
                String::new(),
                "too short: use at least 16 characters (e.g. `openssl rand -hex 24`)".into(),
            ));
        }
        match listen {
            Ok(listen) if problems.is_empty() => Ok(HttpSettings {
                listen,
                allowed_networks,
                token: c.token.clone().map(|t| t.trim().to_string()),
            }),
            Ok(_) => Err(problems),
            Err(p) => {
                problems.insert(0, p);
                Err(problems)
            }
        }
    }
}

/// What the handlers share.
struct AppState {
    settings: HttpSettings,
    db: Mutex<store::Db>,
    glpi_url: Option<String>,
    glpi_api: bool,
}

type Shared = Arc<AppState>;

/// A bound HTTP listener.
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl HttpServer {
    pub async fn bind(
        settings: HttpSettings,
        store: &store::Location,
        glpi_url: Option<String>,
        glpi_api: bool,
    ) -> anyhow::Result<HttpServer> {
        let db = store::Db::open(store, store::Durability::Derived)?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| anyhow::anyhow!("http: cannot listen on {}: {e}", settings.listen))?;
        let state = Arc::new(AppState {
            settings,
            db: Mutex::new(db),
            glpi_url: glpi_url.map(|u| u.trim_end_matches('/').to_string()),
            glpi_api,
        });
        Ok(HttpServer {
            listener,
            router: router(state),
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub async fn serve(self, mut stop: watch::Receiver<bool>) {
        let addr = self.local_addr();
        tracing::info!(listen = ?addr, "http listener started");
        let app = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let result = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "http listener failed");
        }
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/actions/retry/{id}", post(retry_dead))
        .route("/actions/release/{id}", post(release_held))
        .layer(axum::middleware::from_fn_with_state(state.clone(), access))
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn token_matches(expected: &str, given: &str) -> bool {
    crate::smtp::auth::constant_time_eq(expected.as_bytes(), given.as_bytes())
}

/// Client networks first, then the token for anyone but loopback.
async fn access(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer.ip()),
        v4 => v4,
    };
    if !state
        .settings
        .allowed_networks
        .iter()
        .any(|n| n.contains(&ip))
    {
        return (
            StatusCode::FORBIDDEN,
            "client not in [http] allowed_networks\n",
        )
            .into_response();
    }
    if let Some(token) = &state.settings.token {
        let given = bearer(request.headers());
        let is_action = request.method() == Method::POST;
        // Actions may carry the token in their form instead; checked by the handler.
        if !ip.is_loopback() && !is_action && !given.is_some_and(|g| token_matches(token, g)) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "bearer token required\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn with_conn<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    state: &Shared,
    f: impl FnOnce(&mut store::Db) -> Result<T, E> + Send + 'static,
) -> Result<T, Response> {
    let state = state.clone();
    let joined = tokio::task::spawn_blocking(move || {
        // A handler that panicked left no transaction open (Tx rolls back on drop).
        let mut db = state.db.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut db)
    })
    .await;
    match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err((StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()),
    }
}

async fn metrics_text(State(state): State<Shared>) -> Response {
    match with_conn(&state, |c| metrics::metrics().render(c)).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn health() -> Response {
    json_response(StatusCode::OK, serde_json::json!({"status": "up"}))
}

fn json_response(code: StatusCode, body: serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

async fn ready(State(state): State<Shared>) -> Response {
    let store = with_conn(&state, status::writable).await;
    let store_check = match &store {
        Ok(()) => serde_json::json!({"ok": true}),
        Err(_) => serde_json::json!({"ok": false, "error": "store not writable"}),
    };
    let delivery = metrics::metrics().last_delivery();
    let delivery_ok = delivery.as_ref().is_none_or(|(ok, _)| *ok);
    let delivery_check = match delivery {
        None => serde_json::json!({"ok": true, "detail": "no attempt yet"}),
        Some((ok, detail)) => serde_json::json!({"ok": ok, "detail": detail}),
    };
    let mut checks = serde_json::json!({"store": store_check, "delivery": delivery_check});
    let mut api_ok = true;
    if state.glpi_api {
        let session = metrics::metrics().glpi_session();
        api_ok = session != Some(false);
        checks["glpi_api"] = serde_json::json!({"ok": api_ok, "session": match session {
            None => "not opened yet",
            Some(true) => "valid",
            Some(false) => "login failed",
        }});
    }
    let all = store.is_ok() && delivery_ok && api_ok;
    let code = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, serde_json::json!({"ready": all, "checks": checks}))
}

/// Filters of the status page.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageQuery {
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub q: String,
}

async fn status_page(State(state): State<Shared>, Query(query): Query<PageQuery>) -> Response {
    let glpi_url = state.glpi_url.clone();
    let actions = state.settings.token.is_some();
    let rendered = with_conn(&state, move |db| {
        let data = page::PageData::read(db)?;
        Ok::<_, StoreError>(page::render(&data, &query, glpi_url.as_deref(), actions))
    })
    .await;
    match rendered {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(r) => r,
    }
}

/// The action's form; a POST with only the bearer header may have no body at all.
fn action_form(body: &[u8]) -> ActionForm {
    serde_urlencoded::from_bytes(body).unwrap_or(ActionForm {
        token: String::new(),
    })
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    #[serde(default)]
    token: String,
}

/// Actions need the token (header or form field); without a configured token they are
/// off. Returns the refusal, if any.
fn action_refused(state: &AppState, headers: &HeaderMap, form: &ActionForm) -> Option<Response> {
    let Some(token) = &state.settings.token else {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "actions are disabled: set [http] token to enable them\n",
            )
                .into_response(),
        );
    };
    let given = bearer(headers).unwrap_or(form.token.trim());
    (!token_matches(token, given))
        .then(|| (StatusCode::FORBIDDEN, "wrong or missing token\n").into_response())
}

async fn retry_dead(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<i64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = action_form(&body);
    if let Some(r) = action_refused(&state, &headers, &form) {
        return r;
    }
    let done = with_conn(&state, move |c| {
        outbound::retry(c, Some(id), store::unix_now())
    })
    .await;
    action_result(done, id, "dead letter")
}

async fn release_held(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<i64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = action_form(&body);
    if let Some(r) = action_refused(&state, &headers, &form) {
        return r;
    }
    let done = with_conn(&state, move |c| outbound::requeue(c, id, store::unix_now())).await;
    action_result(done, id, "held mail")
}

fn action_result(done: Result<usize, Response>, id: i64, what: &str) -> Response {
    match done {
        Ok(0) => (StatusCode::NOT_FOUND, format!("no {what} o{id}\n")).into_response(),
        Ok(_) => {
            tracing::info!(id, "{what} queued again from the status page");
            Redirect::to("/").into_response()
        }
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    const TOKEN: &str = "0123456789abcdef0123";

    fn app(dir: &std::path::Path) -> Router {
        let settings = HttpSettings::from_config(&HttpConfig {
            listen: "127.0.0.1:0".into(),
            allowed_networks: vec!["127.0.0.0/8".into(), "192.0.2.0/24".into()],
            token: Some(TOKEN.into()),
        })
        .expect("valid");
        let db = store::open(&store::Location::Sqlite(dir.join("db"))).unwrap();
        router(Arc::new(AppState {
            settings,
            db: Mutex::new(db),
            glpi_url: None,
            glpi_api: false,
        }))
    }

    async fn status(
        app: Router,
        from: &str,
        method: &str,
        path: &str,
        bearer: Option<&str>,
    ) -> StatusCode {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = req.body(Body::empty()).unwrap();
        let peer = SocketAddr::new(from.parse().unwrap(), 40000);
        req.extensions_mut().insert(ConnectInfo(peer));
        app.oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn networks_then_token_for_anyone_but_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let a = app(dir.path());
        assert_eq!(
            status(a.clone(), "198.51.100.7", "GET", "/health", Some(TOKEN)).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(a.clone(), "192.0.2.7", "GET", "/metrics", None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(a.clone(), "192.0.2.7", "GET", "/metrics", Some("nope")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(a.clone(), "192.0.2.7", "GET", "/metrics", Some(TOKEN)).await,
            StatusCode::OK
        );
        assert_eq!(
            status(a.clone(), "127.0.0.1", "GET", "/", None).await,
            StatusCode::OK
        );
        assert_eq!(
            status(a.clone(), "::ffff:192.0.2.7", "GET", "/health", Some(TOKEN)).await,
            StatusCode::OK
        );
        // Actions: the token even from loopback; POST only.
        assert_eq!(
            status(a.clone(), "127.0.0.1", "POST", "/actions/retry/1", None).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(
                a.clone(),
                "127.0.0.1",
                "POST",
                "/actions/retry/1",
                Some(TOKEN)
            )
            .await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(
                a.clone(),
                "192.0.2.7",
                "GET",
                "/actions/retry/1",
                Some(TOKEN)
            )
            .await,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(a, "127.0.0.1", "GET", "/nothing", None).await,
            StatusCode::NOT_FOUND
        );
    }
}
