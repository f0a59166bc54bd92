//! `alertgate.toml`: the schema, its defaults, and validation that reports every problem
//! at once with the file, the key (and line when we can find it), what is wrong and what is
//! expected. Unknown keys are errors, collected rather than stopping at the first.

use ipnet::IpNet;
use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "{}:{}: `{}`: {}",
                self.file.display(),
                line,
                self.key,
                self.message
            ),
            None => write!(
                f,
                "{}: `{}`: {}",
                self.file.display(),
                self.key,
                self.message
            ),
        }
    }
}

/// Every problem of one configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub correlation: crate::correlate::CorrelationPolicy,
    /// Required; optional here only so a missing section is reported with the other problems.
    pub compose: Option<crate::compose::ComposeConfig>,
    /// Required; optional here only so a missing section is reported with the other problems.
    pub relay: Option<crate::deliver::RelayConfig>,
    #[serde(default)]
    pub feedback: FeedbackConfig,
    /// GLPI's REST API, to look tickets up and solve them (optional).
    pub glpi_api: Option<crate::feedback::GlpiApiConfig>,
    /// The HTTP listener (metrics, probes, status page); none without the section.
    pub http: Option<crate::http::HttpConfig>,
    /// GLPI's web address, for ticket links on the status page.
    pub glpi: Option<crate::http::GlpiWebConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Addresses to listen on, e.g. "127.0.0.1:2525" or "[::1]:2525".
    pub listen: Vec<String>,
    /// Addresses speaking TLS from the first byte (RFC 8314, "SMTPS", vROps "SSL"),
    /// with the `[server.tls]` certificate.
    pub listen_tls: Vec<String>,
    /// Name used in the greeting, EHLO reply and `Received:` header.
    pub hostname: String,
    /// Client networks allowed to connect (CIDR); everything else gets 554 at connect.
    pub allowed_networks: Vec<String>,
    /// Accepted recipients: full addresses or `@domain`.
    pub accepted_recipients: Vec<String>,
    /// Addresses GLPI's notifications come back to (learned ticket ids).
    pub feedback_addresses: Vec<String>,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    /// Errors in one session before 421 and close.
    pub max_errors: u32,
    /// Longest accepted command line, CRLF included (RFC 5321 says 512 at least).
    pub max_line_length: usize,
    /// Seconds to wait for the next command (RFC 5321 4.5.3.2.7: 5 minutes).
    pub command_timeout_secs: u64,
    /// Seconds to wait for each chunk of DATA (RFC 5321 4.5.3.2.5: 3 minutes per block).
    pub data_timeout_secs: u64,
    /// On shutdown, how long sessions in DATA may take to finish.
    pub shutdown_grace_secs: u64,
    /// Sessions from one client address at a time; 0 = no limit (Postfix's
    /// `smtpd_client_connection_count_limit`).
    pub max_connections_per_client: usize,
    /// Bytes per second a DATA transfer must average: its deadline is
    /// `data_timeout_secs` plus the bytes received over this rate (`smtpd_min_data_rate`).
    pub min_data_rate: u64,
    /// When every slot is taken, a session waiting this long for its next command is
    /// closed first to make room.
    pub idle_eviction_secs: u64,
    /// Bytes received in DATA and not yet committed, across sessions, beyond which a new
    /// DATA gets `452 4.3.1` until they are committed (DATA streams to disk: this bounds
    /// the spool's scratch space, memory stays small per session).
    pub max_inflight_bytes: usize,
    pub tls: Option<TlsConfig>,
    pub auth: AuthConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec!["127.0.0.1:2525".into()],
            listen_tls: Vec::new(),
            hostname: default_hostname(),
            allowed_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            accepted_recipients: Vec::new(),
            feedback_addresses: Vec::new(),
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 200,
            max_errors: 10,
            max_line_length: 2048,
            command_timeout_secs: 300,
            data_timeout_secs: 180,
            shutdown_grace_secs: 30,
            max_connections_per_client: 50,
            min_data_rate: 500,
            idle_eviction_secs: 10,
            max_inflight_bytes: 2 << 30,
            tls: None,
            auth: AuthConfig::default(),
        }
    }
}

fn default_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[derive(Debug, Clone, Deserialize)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Users allowed to AUTH (vROps "Requires Authentication").
    pub users: Vec<AuthUser>,
    /// Refuse MAIL from clients that did not authenticate.
    pub required: bool,
    /// Offer AUTH without TLS to loopback clients (for tests and same-host tools only).
    pub allow_plaintext_on_loopback: bool,
    /// Wait before answering the 6th to 10th failed AUTH of one address in a minute
    /// (the 11th gets 421).
    pub failure_delay_ms: u64,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthUser {
    pub username: String,
    /// Plaintext (accepted; `check` warns): prefer `password_hash`.
    #[serde(default)]
    pub password: Option<String>,
    /// argon2id (`alertgate passwd`) or SHA-512-crypt, optionally with Dovecot's
    /// `{SCHEME}` prefix.
    #[serde(default)]
    pub password_hash: Option<String>,
}

// Hand-written so that no password or hash reaches a log line.
impl fmt::Debug for AuthUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthUser")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field(
                "password_hash",
                &self.password_hash.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            users: Vec::new(),
            required: false,
            allow_plaintext_on_loopback: false,
            failure_delay_ms: 3000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// SQLite database file; its directory is created when missing. With `url` set, the
    /// directory still holds this gateway's drafts (`<path>.incoming`) and pid file.
    pub path: PathBuf,
    /// A PostgreSQL store shared by gateways (`postgres://user:password@host/db`); when
    /// set it is the store, instead of the SQLite file.
    pub url: Option<String>,
    /// Most messages committed together by the spool writer.
    pub group_commit_max: usize,
    /// Days a processed (or dropped, or feedback) spooled message is kept; incidents'
    /// history stays.
    pub keep_processed_days: u64,
    /// Days a sent outbound mail is kept.
    pub keep_sent_days: u64,
    /// Seconds between two background prunings.
    pub prune_interval_secs: u64,
}

impl StoreConfig {
    /// Where the store is: the PostgreSQL `url` when set, else the SQLite `path`.
    pub fn location(&self) -> crate::store::Location {
        match &self.url {
            Some(url) => crate::store::Location::Postgres(url.clone()),
            None => crate::store::Location::Sqlite(self.path.clone()),
        }
    }

    /// Where sessions stream DATA before it is committed.
    pub fn incoming_dir(&self) -> PathBuf {
        crate::store::spool::incoming_dir(&self.path)
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("./var/alertgate.db"),
            url: None,
            group_commit_max: 512,
            keep_processed_days: 7,
            keep_sent_days: 7,
            prune_interval_secs: 600,
        }
    }
}

/// Learning GLPI ticket ids (from notifications sent to `server.feedback_addresses`,
/// or from `[glpi_api]`), and what alertgate assumes of GLPI's timing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedbackConfig {
    /// How long an incident's updates wait for its ticket id before they are sent
    /// unthreaded (and how long the API looks the ticket up). Unset: derived from the
    /// collector's interval and batch and the backlog (see [`FeedbackConfig::lookup_timeout_secs`]).
    pub ticket_lookup_timeout_secs: Option<u64>,
    /// GLPI's mail collector (cron task `mailgate`) runs this often (GLPI's default 600).
    pub collector_interval_secs: u64,
    /// At most this many mails per collector run ("Number of emails to process", GLPI's
    /// default 10).
    pub collector_batch: u64,
    /// Without the API, an incident mails GLPI at most once per this many seconds;
    /// updates in between are merged into the next mail (0: no limit).
    #[serde(alias = "min_mail_interval")]
    pub min_mail_interval_secs: u64,
    /// Extra words meaning "solved" in GLPI's notifications (subject label or status
    /// line), besides the built-in English, French, German, Spanish, Italian and Portuguese.
    pub solved_words: Vec<String>,
    /// Extra words meaning "closed".
    pub closed_words: Vec<String>,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            ticket_lookup_timeout_secs: None,
            collector_interval_secs: 600,
            collector_batch: 10,
            min_mail_interval_secs: 60,
            solved_words: Vec::new(),
            closed_words: Vec::new(),
        }
    }
}

impl FeedbackConfig {
    /// Seconds beyond the collector runs: GLPI's notification queue (a 60 s cron by
    /// default) and delivery back to alertgate.
    const NOTIFICATION_SLACK_SECS: u64 = 300;

    /// How long to wait for a ticket id when `unanswered` mails alertgate sent are
    /// still waiting for GLPI: the explicit `ticket_lookup_timeout_secs`, else the
    /// collector runs the backlog takes (`unanswered / collector_batch`, rounded up)
    /// plus two missed runs, plus the notification slack.
    pub fn lookup_timeout_secs_for_backlog(&self, unanswered: u64) -> u64 {
        if let Some(explicit) = self.ticket_lookup_timeout_secs {
            return explicit;
        }
        let batch = self.collector_batch.max(1);
        let runs = unanswered.div_ceil(batch) + 2;
        runs.saturating_mul(self.collector_interval_secs.max(1))
            .saturating_add(Self::NOTIFICATION_SLACK_SECS)
    }

    /// [`Self::lookup_timeout_secs_for_backlog`] for one mail (no backlog).
    pub fn lookup_timeout_secs(&self) -> u64 {
        self.lookup_timeout_secs_for_backlog(1)
    }
}

impl Config {
    /// A ticket id can be learned, so updates are held until it is.
    pub fn feedback_enabled(&self) -> bool {
        !self.server.feedback_addresses.is_empty() || self.glpi_api.is_some()
    }
}

/// The warning for a config that cannot thread anything.
pub const NO_FEEDBACK_WARNING: &str = "neither server.feedback_addresses nor [glpi_api] is set: alertgate cannot learn GLPI's ticket ids, so GLPI will open a new ticket for every update and recovery (route GLPI's notifications back to a feedback address, or configure [glpi_api]; see README, \"Connecting to GLPI\")";

/// What happens to a mail no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnmatchedPolicy {
    /// Passed through to GLPI unchanged but tagged: today's behaviour is the floor.
    #[default]
    Forward,
    /// Kept in the store, listed by `alertgate queue`.
    Hold,
    /// Logged and dropped.
    Drop,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RulesConfig {
    /// Rule directories, later ones override earlier ones by rule name.
    pub dirs: Vec<PathBuf>,
    pub unmatched: UnmatchedPolicy,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dirs: vec![PathBuf::from("rules")],
            unmatched: UnmatchedPolicy::Forward,
        }
    }
}

/// A recipient pattern: a whole address or every address of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientPattern {
    Address(String),
    Domain(String),
}

impl RecipientPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(domain) = s.strip_prefix('@') {
            if domain.is_empty() || domain.contains('@') || domain.contains(' ') {
                return Err(format!(
                    "`{s}` is not a domain pattern (expected `@example.org`)"
                ));
            }
            return Ok(RecipientPattern::Domain(domain.to_string()));
        }
        match s.split_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !s.contains(' ') =>
            {
                Ok(RecipientPattern::Address(s))
            }
            _ => Err(format!(
                "`{s}` is not an address (expected `user@example.org` or `@example.org`)"
            )),
        }
    }

    pub fn matches(&self, address: &str) -> bool {
        let address = address.to_ascii_lowercase();
        match self {
            RecipientPattern::Address(a) => *a == address,
            RecipientPattern::Domain(d) => {
                address.rsplit_once('@').is_some_and(|(_, dom)| dom == d)
            }
        }
    }
}

/// The parts of the config that need parsing beyond serde, checked once at load.
#[derive(Debug, Clone)]
pub struct ServerPolicy {
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    pub allowed_networks: Vec<IpNet>,
    pub accepted_recipients: Vec<RecipientPattern>,
    pub feedback_addresses: Vec<RecipientPattern>,
}

impl ServerPolicy {
    pub fn client_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allowed_networks.iter().any(|net| net.contains(&ip))
    }

    pub fn is_feedback(&self, address: &str) -> bool {
        self.feedback_addresses.iter().any(|p| p.matches(address))
    }

    pub fn recipient_accepted(&self, address: &str) -> bool {
        self.accepted_recipients.iter().any(|p| p.matches(address)) || self.is_feedback(address)
    }
}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub config: Config,
    pub policy: ServerPolicy,
    pub compose: crate::compose::ComposeConfig,
    pub relay: crate::deliver::RelayConfig,
    pub http: Option<crate::http::HttpSettings>,
    /// What works but probably not as meant (`check` prints them, `serve` logs them).
    pub warnings: Vec<ConfigProblem>,
}

impl LoadedConfig {
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| single(path, "", None, format!("cannot read file: {e}")))?;
        Self::from_str(path, &text)
    }

    pub fn from_str(path: &Path, text: &str) -> Result<LoadedConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut unknown = Vec::new();
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(path, text, &e))?;
        let parsed: Result<Config, _> =
            serde_ignored::deserialize(de, |p| unknown.push(p.to_string()));
        for key in unknown {
            problems.push(ConfigProblem {
                file: path.to_path_buf(),
                line: find_key_line(text, &key),
                message:
                    "unknown key (check the spelling; see examples/alertgate.toml for every key)"
                        .into(),
                key,
            });
        }
        let config = match parsed {
            Ok(c) => c,
            Err(e) => {
                problems.push(toml_problem(path, text, &e));
                return Err(ConfigError { problems });
            }
        };
        let policy = validate(path, text, &config, &mut problems);
        let http = config.http.as_ref().and_then(|c| {
            crate::http::HttpSettings::from_config(c)
                .map_err(|found| {
                    for (key, value, message) in found {
                        let line = Some(value.as_str())
                            .filter(|v| !v.is_empty())
                            .and_then(|v| find_value_line(text, v))
                            .or_else(|| find_key_line(text, &key));
                        problems.push(ConfigProblem {
                            file: path.to_path_buf(),
                            line,
                            key,
                            message,
                        });
                    }
                })
                .ok()
        });
        validate_sections(path, text, &config, &mut problems);
        let warnings = warnings(path, text, &config);
        match (
            problems.is_empty(),
            config.compose.clone(),
            config.relay.clone(),
        ) {
            (true, Some(compose), Some(relay)) => Ok(LoadedConfig {
                path: path.to_path_buf(),
                config,
                policy,
                compose,
                relay,
                http,
                warnings,
            }),
            _ => Err(ConfigError { problems }),
        }
    }
}

fn single(path: &Path, key: &str, line: Option<usize>, message: String) -> ConfigError {
    ConfigError {
        problems: vec![ConfigProblem {
            file: path.to_path_buf(),
            line,
            key: key.into(),
            message,
        }],
    }
}

fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError {
        problems: vec![toml_problem(path, text, e)],
    }
}

fn toml_problem(path: &Path, text: &str, e: &toml::de::Error) -> ConfigProblem {
    let line = e.span().map(|s| line_of_offset(text, s.start));
    ConfigProblem {
        file: path.to_path_buf(),
        line,
        key: String::new(),
        message: e.message().trim().to_string(),
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Line of `section.key` (best effort: the key assigned inside its `[section]`).
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = match dotted.rsplit_once('.') {
        Some((s, k)) => (s, k),
        None => ("", dotted),
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == dotted {
                return Some(i + 1);
            }
            continue;
        }
        let assigned = t.split('=').next().map(str::trim).unwrap_or("");
        if current == section && (assigned == key || assigned.trim_matches('"') == key) {
            return Some(i + 1);
        }
    }
    None
}

fn find_value_line(text: &str, value: &str) -> Option<usize> {
    let quoted = format!("\"{value}\"");
    text.lines()
        .position(|l| l.contains(&quoted))
        .map(|i| i + 1)
}

fn validate(
    path: &Path,
    text: &str,
    config: &Config,
    problems: &mut Vec<ConfigProblem>,
) -> ServerPolicy {
    let server = &config.server;
    let mut push = |key: &str, value: Option<&str>, message: String| {
        let line = value
            .and_then(|v| find_value_line(text, v))
            .or_else(|| find_key_line(text, key));
        problems.push(ConfigProblem {
            file: path.to_path_buf(),
            line,
            key: key.into(),
            message,
        });
    };

    let mut listen = Vec::new();
    if server.listen.is_empty() {
        push(
            "server.listen",
            None,
            "no listen address (expected e.g. [\"127.0.0.1:2525\"])".into(),
        );
    }
    for addr in &server.listen {
        match addr.parse::<SocketAddr>() {
            Ok(a) => listen.push(a),
            Err(_) => push(
                "server.listen",
                Some(addr),
                format!("`{addr}` is not a socket address (expected IP:PORT, e.g. \"127.0.0.1:2525\" or \"[::1]:2525\")"),
            ),
        }
    }
    let mut listen_tls = Vec::new();
    for addr in &server.listen_tls {
        match addr.parse::<SocketAddr>() {
            Ok(a) => listen_tls.push(a),
            Err(_) => push(
                "server.listen_tls",
                Some(addr),
                format!(
                    "`{addr}` is not a socket address (expected IP:PORT, e.g. \"0.0.0.0:465\")"
                ),
            ),
        }
    }
    if !server.listen_tls.is_empty() && server.tls.is_none() {
        push(
            "server.listen_tls",
            None,
            "implicit TLS needs a certificate: add [server.tls] cert and key".into(),
        );
    }
    for (i, user) in server.auth.users.iter().enumerate() {
        let key = "server.auth.users";
        match (&user.password, &user.password_hash) {
            (Some(_), Some(_)) => push(
                key,
                Some(&user.username),
                format!(
                    "user `{}` (#{}): give either password or password_hash, not both",
                    user.username,
                    i + 1
                ),
            ),
            (None, None) => push(
                key,
                Some(&user.username),
                format!(
                    "user `{}` (#{}): no password_hash (make one with `alertgate passwd`)",
                    user.username,
                    i + 1
                ),
            ),
            (None, Some(hash)) => {
                if let Some(problem) = crate::smtp::auth::hash_problem(hash) {
                    push(
                        key,
                        Some(&user.username),
                        format!("user `{}`: password_hash: {problem}", user.username),
                    );
                }
            }
            (Some(_), None) => {}
        }
    }
    let mut seen = HashSet::new();
    for a in listen.iter().chain(&listen_tls) {
        // Port 0 (any free port, tests) cannot clash.
        if a.port() != 0 && !seen.insert(*a) {
            push("server.listen", None, format!("`{a}` is listed twice"));
        }
    }

    let mut allowed_networks = Vec::new();
    for net in &server.allowed_networks {
        match parse_network(net) {
            Ok(n) => allowed_networks.push(n),
            Err(msg) => push("server.allowed_networks", Some(net), msg),
        }
    }

    let mut patterns = |key: &str, list: &[String]| {
        let mut out = Vec::new();
        for r in list {
            match RecipientPattern::parse(r) {
                Ok(p) => out.push(p),
                Err(msg) => push(key, Some(r), msg),
            }
        }
        out
    };
    let accepted_recipients = patterns("server.accepted_recipients", &server.accepted_recipients);
    let feedback_addresses = patterns("server.feedback_addresses", &server.feedback_addresses);
    if accepted_recipients.is_empty()
        && problems
            .iter()
            .all(|p| p.key != "server.accepted_recipients")
    {
        problems.push(ConfigProblem {
            file: path.to_path_buf(),
            line: find_key_line(text, "server.accepted_recipients").or_else(|| find_key_line(text, "server")),
            key: "server.accepted_recipients".into(),
            message: "no accepted recipient: the gateway would refuse every mail (expected e.g. [\"glpi@example.org\"])".into(),
        });
    }

    let mut check_positive = |key: &str, v: u64| {
        if v == 0 {
            problems.push(ConfigProblem {
                file: path.to_path_buf(),
                line: find_key_line(text, key),
                key: key.into(),
                message: "must be greater than 0".into(),
            });
        }
    };
    check_positive("server.max_message_size", server.max_message_size as u64);
    check_positive("server.max_recipients", server.max_recipients as u64);
    check_positive("server.max_connections", server.max_connections as u64);
    check_positive("server.max_errors", server.max_errors as u64);
    check_positive("server.command_timeout_secs", server.command_timeout_secs);
    check_positive("server.data_timeout_secs", server.data_timeout_secs);
    check_positive("server.min_data_rate", server.min_data_rate);
    check_positive(
        "store.group_commit_max",
        config.store.group_commit_max as u64,
    );
    check_positive(
        "store.prune_interval_secs",
        config.store.prune_interval_secs,
    );
    if let Some(url) = &config.store.url {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            problems.push(ConfigProblem {
                file: path.to_path_buf(),
                line: find_key_line(text, "store.url"),
                key: "store.url".into(),
                message: "must start with postgres:// or postgresql:// (e.g. \"postgres://alertgate:secret@db.example.org/alertgate\")".into(),
            });
        }
    }
    if server.max_line_length < 512 {
        problems.push(ConfigProblem {
            file: path.to_path_buf(),
            line: find_key_line(text, "server.max_line_length"),
            key: "server.max_line_length".into(),
            message: format!(
                "{} is below RFC 5321's minimum of 512",
                server.max_line_length
            ),
        });
    }
    if let Some(tls) = &server.tls {
        for (key, file) in [("server.tls.cert", &tls.cert), ("server.tls.key", &tls.key)] {
            if !file.is_file() {
                problems.push(ConfigProblem {
                    file: path.to_path_buf(),
                    line: find_key_line(text, key),
                    key: key.into(),
                    message: format!(
                        "`{}` is not a readable file (expected a PEM file)",
                        file.display()
                    ),
                });
            }
        }
    }

    if let Some(relay) = &config.relay {
        for (key, message) in relay.problems() {
            problems.push(ConfigProblem {
                file: path.to_path_buf(),
                line: find_key_line(text, key).or_else(|| find_key_line(text, "relay")),
                key: key.into(),
                message,
            });
        }
    }

    ServerPolicy {
        listen,
        listen_tls,
        allowed_networks,
        accepted_recipients,
        feedback_addresses,
    }
}

/// Each stage's own validation, run once here so `check` and `serve` report the same
/// precise message (and `serve` never starts with a config a stage would reject).
fn validate_sections(path: &Path, text: &str, config: &Config, problems: &mut Vec<ConfigProblem>) {
    let mut push = |key: &str, message: String| {
        problems.push(ConfigProblem {
            file: path.to_path_buf(),
            line: find_key_line(text, key).or_else(|| {
                key.split_once('.')
                    .and_then(|(section, _)| find_key_line(text, section))
            }),
            key: key.into(),
            message,
        });
    };
    if let Some(compose) = &config.compose {
        if let Err(e) = compose.validate() {
            let key = match &e {
                crate::compose::ComposeError::InvalidAddress { field, .. } => {
                    format!("compose.{field}")
                }
                _ => "compose".to_owned(),
            };
            push(&key, e.to_string());
        }
    }
    if let Err(e) = config.correlation.validate() {
        let key = match e {
            crate::correlate::PolicyError::ZeroRepeatInterval => "correlation.repeat_interval",
            crate::correlate::PolicyError::IncidentCache(_) => "correlation.incident_cache",
            _ => "correlation.host_aliases",
        };
        push(key, e.to_string());
    }
    // The SMTP client's own checks (the maildir outbox is created at start, not here).
    if let Some(relay) = config
        .relay
        .as_ref()
        .filter(|r| r.kind == crate::deliver::RelayKind::Smtp && r.problems().is_empty())
    {
        if let Err(e) = crate::deliver::RelayClient::new(relay) {
            push("relay", e.to_string());
        }
    }
    if let Some(api) = &config.glpi_api {
        if let Err(e) = api.validate() {
            push("glpi_api", e.to_string());
        }
    }
    let feedback = &config.feedback;
    if feedback.collector_interval_secs == 0 {
        push(
            "feedback.collector_interval_secs",
            "must be greater than 0 (GLPI's mail collector runs every 600 s by default)".into(),
        );
    }
    if feedback.collector_batch == 0 {
        push(
            "feedback.collector_batch",
            "must be greater than 0 (GLPI's collector imports 10 mails per run by default)".into(),
        );
    }
    if feedback.ticket_lookup_timeout_secs == Some(0) {
        push(
            "feedback.ticket_lookup_timeout_secs",
            "must be greater than 0 (omit it to derive it from the collector's timing)".into(),
        );
    }
    for (key, words) in [
        ("feedback.solved_words", &feedback.solved_words),
        ("feedback.closed_words", &feedback.closed_words),
    ] {
        if words.iter().any(|w| w.trim().is_empty()) {
            push(key, "has an empty word".into());
        }
    }
}

/// Settings that work but lose what the admin most likely wants.
fn warnings(path: &Path, text: &str, config: &Config) -> Vec<ConfigProblem> {
    let mut warnings = Vec::new();
    let mut warn = |key: &str, message: String| {
        warnings.push(ConfigProblem {
            file: path.to_path_buf(),
            line: find_key_line(text, key),
            key: key.into(),
            message,
        })
    };
    if !config.feedback_enabled() {
        warn("server.feedback_addresses", NO_FEEDBACK_WARNING.into());
    }
    let feedback = &config.feedback;
    if let Some(timeout) = feedback.ticket_lookup_timeout_secs {
        if timeout < feedback.collector_interval_secs {
            warn(
                "feedback.ticket_lookup_timeout_secs",
                format!(
                    "{timeout} s is shorter than one collector run ({} s): updates will often go out unthreaded and open extra tickets (omit it to derive it from the collector's timing)",
                    feedback.collector_interval_secs
                ),
            );
        }
    }
    for user in config
        .server
        .auth
        .users
        .iter()
        .filter(|u| u.password.is_some())
    {
        warn(
            "server.auth.users",
            format!(
                "user `{}` has a plaintext password; prefer password_hash (`alertgate passwd`)",
                user.username
            ),
        );
    }
    if let Some(http) = &config.http {
        let public = http
            .listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| !a.ip().is_loopback());
        if public && http.token.is_none() {
            warn(
                "http.listen",
                format!("{} is reachable from other hosts but no `http.token` is set: they get 401 and the page's actions are off", http.listen),
            );
        }
    }
    warnings
}

/// A CIDR, or a bare address meaning a single host.
fn parse_network(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!("`{s}` is not a network (expected CIDR like \"192.0.2.0/24\" or \"::1/128\", or a single address)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<LoadedConfig, ConfigError> {
        let text =
            format!("{text}\n[compose]\nfrom = \"a@example.test\"\nto = \"glpi@example.test\"\n[relay]\nhost = \"127.0.0.1\"\n");
        LoadedConfig::from_str(Path::new("test.toml"), &text)
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let c = load("[server]\naccepted_recipients = [\"glpi@example.test\"]\n").expect("valid");
        assert_eq!(c.policy.listen.len(), 1);
        assert!(c.policy.client_allowed("127.0.0.1".parse().unwrap()));
        assert!(!c.policy.client_allowed("192.0.2.1".parse().unwrap()));
        assert!(c.policy.recipient_accepted("GLPI@example.test"));
        assert!(!c.policy.recipient_accepted("other@example.test"));
    }

    #[test]
    fn unknown_key_and_bad_cidr_are_both_reported() {
        let text = "[server]\naccepted_recipients = [\"glpi@example.test\"]\nallowed_networks = [\"10.0.0.0/33\"]\nlisten_adress = 1\n";
        let err = load(text).expect_err("invalid");
        let msg = err.to_string();
        assert!(
            msg.contains("test.toml:4: `server.listen_adress`: unknown key"),
            "{msg}"
        );
        assert!(
            msg.contains("test.toml:3: `server.allowed_networks`: `10.0.0.0/33` is not a network"),
            "{msg}"
        );
    }

    #[test]
    fn store_url_must_be_a_postgres_url() {
        let base = "[server]\naccepted_recipients = [\"glpi@example.test\"]\n[store]\n";
        let c = load(&format!("{base}url = \"postgres://ag:pw@db.example/ag\"\n")).expect("valid");
        assert_eq!(
            c.config.store.location(),
            crate::store::Location::Postgres("postgres://ag:pw@db.example/ag".into())
        );
        let err = load(&format!("{base}url = \"mysql://db.example/ag\"\n"))
            .expect_err("not postgres")
            .to_string();
        assert!(
            err.contains("test.toml:4: `store.url`: must start with postgres://"),
            "{err}"
        );
        let plain = load(base).expect("valid");
        assert!(matches!(
            plain.config.store.location(),
            crate::store::Location::Sqlite(_)
        ));
    }

    #[test]
    fn domain_patterns_match_only_their_domain() {
        let p = RecipientPattern::parse("@Example.test").unwrap();
        assert!(p.matches("a@example.test"));
        assert!(!p.matches("a@example.test.evil"));
        assert!(RecipientPattern::parse("no-at-sign").is_err());
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = load("[server]\nlisten = [\n").expect_err("invalid");
        assert!(err.to_string().contains("test.toml:"), "{err}");
    }

    #[test]
    fn lookup_timeout_derives_from_the_collector_unless_set() {
        let c = load("[server]\naccepted_recipients = [\"g@x.test\"]\n").unwrap();
        let f = &c.config.feedback;
        assert_eq!((f.collector_interval_secs, f.collector_batch), (600, 10));
        assert_eq!(f.min_mail_interval_secs, 60);
        // One mail: its run plus two missed runs, plus the notification slack.
        assert_eq!(f.lookup_timeout_secs(), 3 * 600 + 300);
        // A backlog of 300 mails takes 30 runs.
        assert_eq!(f.lookup_timeout_secs_for_backlog(300), 32 * 600 + 300);
        assert_eq!(c.warnings.len(), 1, "no feedback source: {:?}", c.warnings);
        let c = load(
            "[server]\naccepted_recipients = [\"g@x.test\"]\nfeedback_addresses = [\"a@x.test\"]\n\
             [feedback]\nticket_lookup_timeout_secs = 5000\ncollector_interval_secs = 60\n",
        )
        .unwrap();
        assert_eq!(c.config.feedback.lookup_timeout_secs_for_backlog(300), 5000);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn auth_users_listen_tls_and_http_are_checked() {
        let text = "[server]\naccepted_recipients = [\"g@x.test\"]\nlisten_tls = [\"127.0.0.1:465\"]\n[server.auth]\nusers = [{ username = \"a\", password_hash = \"md5:x\" }, { username = \"b\" }]\n[http]\nlisten = \"nowhere\"\ntoken = \"short\"\n";
        let msg = load(text).expect_err("invalid").to_string();
        for expected in [
            "`server.listen_tls`: implicit TLS needs a certificate",
            "user `a`: password_hash: unknown scheme",
            "user `b` (#2): no password_hash",
            "`http.listen`: `nowhere` is not a socket address",
            "`http.token`: too short",
        ] {
            assert!(msg.contains(expected), "{expected} missing:\n{msg}");
        }
        let plain = load("[server]\naccepted_recipients = [\"g@x.test\"]\n[server.auth]\nusers = [{ username = \"a\", password = \"p\" }]\n[http]\nlisten = \"0.0.0.0:9925\"\n").expect("valid");
        let warnings: Vec<String> = plain.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("user `a` has a plaintext password")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("no `http.token`")),
            "{warnings:?}"
        );
        assert_eq!(plain.http.map(|h| h.listen.port()), Some(9925));
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_networks() {
        let c = load("[server]\naccepted_recipients = [\"g@x.test\"]\n").unwrap();
        assert!(c.policy.client_allowed("::ffff:127.0.0.1".parse().unwrap()));
    }
}
