//! A strict GLPI double for end-to-end tests: an SMTP server playing GLPI's mail
//! collector by the rules of shared/design/glpi-collector.md, GLPI's notification mails
//! sent back by SMTP, and a small HTTP/1.1 server speaking the legacy REST API.
#![allow(dead_code)]

use mail_parser::{Address, HeaderName, Message, MessageParser};
use regex::Regex;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const STATUS_NEW: u8 = 1;
pub const STATUS_ASSIGNED: u8 = 2;
pub const STATUS_PLANNED: u8 = 3;
pub const STATUS_WAITING: u8 = 4;
pub const STATUS_SOLVED: u8 = 5;
pub const STATUS_CLOSED: u8 = 6;

/// How the double is set up; `Default` matches tests/support/gateway.rs.
#[derive(Debug, Clone)]
pub struct GlpiConfig {
    /// GLPI's notification uuid (lowercase letters and digits).
    pub uuid: String,
    /// E-mail addresses of GLPI users (lowercase); only they may open tickets.
    pub users: Vec<String>,
    /// The collector's own mailbox: mail from it is dropped.
    pub collector_address: String,
    /// From of GLPI's notifications.
    pub notification_from: String,
    /// Subject tag, `GLPI` by default.
    pub subject_tag: String,
    pub user_token: String,
    pub app_token: Option<String>,
    /// Send the new-ticket notification.
    pub notify_new: bool,
    /// Send the solved/closed notifications.
    pub notify_solved: bool,
}

impl Default for GlpiConfig {
    fn default() -> Self {
        GlpiConfig {
            uuid: "5e1f0c9a7b3d4e2f8a6b".into(),
            users: vec!["alertgate@example.test".into()],
            collector_address: "glpi@example.test".into(),
            notification_from: "glpi-notifications@glpi.test".into(),
            subject_tag: "GLPI".into(),
            user_token: "user-token-7f3e".into(),
            app_token: Some("app-token-91ab".into()),
            notify_new: true,
            notify_solved: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Mail,
    Api,
    Technician,
}

#[derive(Debug, Clone)]
pub struct Followup {
    pub content: String,
    pub from: String,
    pub subject: String,
    pub message_id: Option<String>,
    pub source: Source,
}

#[derive(Debug, Clone)]
pub struct Ticket {
    pub id: u64,
    pub title: String,
    pub content: String,
    pub status: u8,
    pub requester: String,
    /// Message-ID of the mail that opened it.
    pub message_id: Option<String>,
    pub followups: Vec<Followup>,
    pub solution: Option<String>,
    /// The closed ticket this one was opened for.
    pub linked_to: Option<u64>,
    /// A technician is assigned: a reopened ticket goes back to "assigned".
    pub assigned: bool,
    /// How many times a follow-up reopened it.
    pub reopened: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// From is the collector's own mailbox.
    OwnAddress,
    /// Message-ID looks like one GLPI sent: a loop.
    GlpiMessageId,
    /// `Auto-Submitted` with a value other than `no`.
    AutoSubmitted,
    /// No GLPI user has the sender's address.
    UnknownSender,
    /// The sender may not add a follow-up to the ticket it names.
    NoFollowupRight,
    /// Not a parsable mail.
    Unparsable,
}

#[derive(Debug, Clone)]
pub struct Refused {
    pub from: String,
    pub subject: String,
    pub message_id: Option<String>,
    pub reason: RefuseReason,
}

/// A notification the double sent (or tried to).
#[derive(Debug, Clone)]
pub struct SentNotification {
    pub ticket_id: u64,
    pub event: String,
    pub subject: String,
    pub message_id: String,
    pub result: Result<(), String>,
}

#[derive(Default)]
struct State {
    tickets: Vec<Ticket>,
    refused: Vec<Refused>,
    mails_received: usize,
    notifications: Vec<SentNotification>,
    notify_target: Option<(SocketAddr, String)>,
    notify_new: bool,
    notify_solved: bool,
    api_down: bool,
    sessions: HashSet<String>,
    next_session: u64,
    next_item_id: u64,
    api_calls: HashMap<String, usize>,
}

struct Inner {
    config: GlpiConfig,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct GlpiDouble {
    inner: Arc<Inner>,
    smtp_addr: SocketAddr,
    api_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for GlpiDouble {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl GlpiDouble {
    pub async fn start() -> GlpiDouble {
        Self::start_with(GlpiConfig::default()).await
    }

    pub async fn start_with(config: GlpiConfig) -> GlpiDouble {
        let state = State {
            notify_new: config.notify_new,
            notify_solved: config.notify_solved,
            ..State::default()
        };
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(state),
        });
        let smtp = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let smtp_addr = smtp.local_addr().expect("smtp addr");
        let api_addr = api.local_addr().expect("api addr");
        let collector = {
            let inner = inner.clone();
            tokio::spawn(serve_smtp(smtp, move |mail| {
                collect(&inner, &mail);
            }))
        };
        let rest = {
            let inner = inner.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = api.accept().await {
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        let _ = serve_http(stream, &inner).await;
                    });
                }
            })
        };
        GlpiDouble {
            inner,
            smtp_addr,
            api_addr,
            tasks: vec![collector, rest],
        }
    }

    pub fn config(&self) -> &GlpiConfig {
        &self.inner.config
    }

    pub fn smtp_port(&self) -> u16 {
        self.smtp_addr.port()
    }

    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addr
    }

    /// `http://127.0.0.1:<port>/apirest.php`
    pub fn api_url(&self) -> String {
        format!("http://{}/apirest.php", self.api_addr)
    }

    pub fn tickets(&self) -> Vec<Ticket> {
        self.inner.state().tickets.clone()
    }

    pub fn ticket(&self, id: u64) -> Option<Ticket> {
        self.inner
            .state()
            .tickets
            .iter()
            .find(|t| t.id == id)
            .cloned()
    }

    pub fn refused(&self) -> Vec<Refused> {
        self.inner.state().refused.clone()
    }

    pub fn mails_received(&self) -> usize {
        self.inner.state().mails_received
    }

    pub fn notifications(&self) -> Vec<SentNotification> {
        self.inner.state().notifications.clone()
    }

    /// Where GLPI's notifications go: an SMTP server and the envelope recipient
    /// (alertgate's feedback address). Until set, no notification is sent.
    pub fn set_notify_target(&self, addr: SocketAddr, rcpt: &str) {
        self.inner.state().notify_target = Some((addr, rcpt.to_owned()));
    }

    /// New-ticket notifications on or off.
    pub fn set_notifications(&self, on: bool) {
        self.inner.state().notify_new = on;
    }

    /// Solved/closed notifications on or off.
    pub fn set_solve_notifications(&self, on: bool) {
        self.inner.state().notify_solved = on;
    }

    /// "GLPI down": the API answers 500 to everything.
    pub fn set_api_down(&self, down: bool) {
        self.inner.state().api_down = down;
    }

    /// Every open API session becomes invalid: the next call gets 401.
    pub fn expire_sessions(&self) {
        self.inner.state().sessions.clear();
    }

    /// API calls received for an endpoint (`initSession`, `search/Ticket`,
    /// `ITILSolution`, `ITILFollowup`, `killSession`).
    pub fn api_calls(&self, endpoint: &str) -> usize {
        self.inner
            .state()
            .api_calls
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// A technician takes the ticket (status "assigned").
    pub fn assign(&self, id: u64) {
        let mut state = self.inner.state();
        let ticket = ticket_mut(&mut state, id);
        ticket.assigned = true;
        ticket.status = STATUS_ASSIGNED;
    }

    /// A technician puts the ticket in "waiting".
    pub fn set_waiting(&self, id: u64) {
        ticket_mut(&mut self.inner.state(), id).status = STATUS_WAITING;
    }

    /// A technician solves the ticket; GLPI notifies the requester.
    pub async fn solve(&self, id: u64) {
        let notice = {
            let mut state = self.inner.state();
            let ticket = ticket_mut(&mut state, id);
            ticket.status = STATUS_SOLVED;
            ticket.solution = Some("Solved by the technician.".into());
            let ticket = ticket.clone();
            solved_or_closed_notice(&self.inner, &state, &ticket, "solved")
        };
        if let Some(notice) = notice {
            send_notification(self.inner.clone(), notice).await;
        }
    }

    /// A technician (or the auto-close) closes the ticket; GLPI notifies the requester.
    pub async fn close(&self, id: u64) {
        let notice = {
            let mut state = self.inner.state();
            let ticket = ticket_mut(&mut state, id);
            ticket.status = STATUS_CLOSED;
            let ticket = ticket.clone();
            solved_or_closed_notice(&self.inner, &state, &ticket, "closed")
        };
        if let Some(notice) = notice {
            send_notification(self.inner.clone(), notice).await;
        }
    }

    /// Waits until at least `n` tickets exist; panics with the double's state on timeout.
    pub async fn wait_for_tickets(&self, n: usize, timeout: Duration) -> Vec<Ticket> {
        self.wait_until(timeout, &format!("{n} tickets"), |s| s.tickets.len() >= n)
            .await;
        self.tickets()
    }

    /// Waits until at least `n` mails reached the collector (tickets, follow-ups, refusals).
    pub async fn wait_for_mails(&self, n: usize, timeout: Duration) {
        self.wait_until(timeout, &format!("{n} mails"), |s| s.mails_received >= n)
            .await;
    }

    /// Waits until at least `n` notifications were sent (or failed).
    pub async fn wait_for_notifications(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<SentNotification> {
        self.wait_until(timeout, &format!("{n} notifications"), |s| {
            s.notifications.len() >= n
        })
        .await;
        self.notifications()
    }

    async fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = self.inner.state();
                if done(&state) {
                    return;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "GLPI double: timed out waiting for {what}; mails received {}, tickets {:#?}, refused {:#?}",
                        state.mails_received, state.tickets, state.refused
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn ticket_mut(state: &mut State, id: u64) -> &mut Ticket {
    state
        .tickets
        .iter_mut()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("GLPI double has no ticket {id}"))
}

// ---------------------------------------------------------------------------
// The mail collector

/// One mail as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
}

fn modern_id_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)GLPI_(?<uuid>[a-z0-9]+)(-(?<itemtype>[a-z]+)-(?<items_id>[0-9]+))?/(?<event>[a-z_]+)(\.[0-9]+\.[0-9]+)?@.+")
            .expect("regex")
    })
}

fn legacy_id_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)GLPI_(?<uuid>[a-z0-9]+)(-(?<itemtype>[a-z]+)-(?<items_id>[0-9]+))?\.[0-9]+\.[0-9]+@.+")
            .expect("regex")
    })
}

fn pre10_id_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)GLPI(-[a-z]+)?(-[0-9]+)?\.[0-9]+\.[0-9]+@.+").expect("regex")
    })
}

/// GLPI's own subject regex: greedy and unanchored, the last `#digits]` wins.
fn subject_ticket_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\[.+#(\d+)\]").expect("regex"))
}

fn looks_like_glpi_message_id(id: &str) -> bool {
    modern_id_regex().is_match(id)
        || legacy_id_regex().is_match(id)
        || pre10_id_regex().is_match(id)
}

/// The ticket a header value names, when it holds a GLPI Message-ID of this instance.
fn ticket_in_header(value: &str, uuid: &str) -> Option<u64> {
    for re in [modern_id_regex(), legacy_id_regex()] {
        for caps in re.captures_iter(value) {
            let same_instance = caps["uuid"].eq_ignore_ascii_case(uuid);
            let is_ticket = caps
                .name("itemtype")
                .is_some_and(|t| t.as_str().eq_ignore_ascii_case("ticket"));
            if same_instance && is_ticket {
                if let Some(id) = caps.name("items_id").and_then(|m| m.as_str().parse().ok()) {
                    return Some(id);
                }
            }
        }
    }
    None
}

fn first_address(address: Option<&Address<'_>>) -> String {
    address
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(|a| a.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// What the collector does with one mail.
fn collect(inner: &Arc<Inner>, mail: &ReceivedMail) {
    let config = &inner.config;
    let mut state = inner.state();
    state.mails_received += 1;
    let Some(message) = MessageParser::default().parse(&mail.data) else {
        state.refused.push(Refused {
            from: mail.mail_from.clone(),
            subject: String::new(),
            message_id: None,
            reason: RefuseReason::Unparsable,
        });
        return;
    };
    let from = first_address(message.from());
    let subject = message.subject().unwrap_or_default().to_owned();
    let message_id = message
        .header_raw(HeaderName::MessageId)
        .map(|v| v.trim().to_owned());
    let refuse = |state: &mut State, reason| {
        state.refused.push(Refused {
            from: from.clone(),
            subject: subject.clone(),
            message_id: message_id.clone(),
            reason,
        })
    };

    if from == config.collector_address.to_ascii_lowercase() {
        return refuse(&mut state, RefuseReason::OwnAddress);
    }
    if message_id
        .as_deref()
        .is_some_and(looks_like_glpi_message_id)
    {
        return refuse(&mut state, RefuseReason::GlpiMessageId);
    }
    let auto_submitted = message
        .header_raw("Auto-Submitted")
        .map(|v| v.trim().to_ascii_lowercase());
    if auto_submitted.is_some_and(|v| !v.contains("no")) {
        return refuse(&mut state, RefuseReason::AutoSubmitted);
    }
    if !config.users.iter().any(|u| u.eq_ignore_ascii_case(&from)) {
        return refuse(&mut state, RefuseReason::UnknownSender);
    }

    let named = [HeaderName::InReplyTo, HeaderName::References]
        .into_iter()
        .find_map(|h| {
            message
                .header_raw(h)
                .and_then(|v| ticket_in_header(v, &config.uuid))
        })
        .or_else(|| {
            subject_ticket_regex()
                .captures(&subject)
                .and_then(|c| c[1].parse::<u64>().ok())
        });
    let content = body_of(&message);
    let existing = named.and_then(|id| state.tickets.iter().position(|t| t.id == id));
    let linked_to = match existing {
        Some(index) if state.tickets[index].status != STATUS_CLOSED => {
            let ticket = &mut state.tickets[index];
            if !ticket.requester.eq_ignore_ascii_case(&from) {
                return refuse(&mut state, RefuseReason::NoFollowupRight);
            }
            add_followup(
                ticket,
                Followup {
                    content,
                    from: from.clone(),
                    subject: subject.clone(),
                    message_id: message_id.clone(),
                    source: Source::Mail,
                },
            );
            return;
        }
        Some(index) => Some(state.tickets[index].id),
        None => None,
    };
    let ticket = Ticket {
        id: state.tickets.iter().map(|t| t.id).max().unwrap_or(0) + 1,
        title: if subject.is_empty() {
            "(No title)".into()
        } else {
            subject.clone()
        },
        content,
        status: STATUS_NEW,
        requester: from.clone(),
        message_id: message_id.clone(),
        followups: Vec::new(),
        solution: None,
        linked_to,
        assigned: false,
        reopened: 0,
    };
    let notice = new_ticket_notice(inner, &state, &ticket);
    state.tickets.push(ticket);
    drop(state);
    if let Some(notice) = notice {
        // GLPI queues notifications and sends them later, never inside the collection.
        tokio::spawn(send_notification(inner.clone(), notice));
    }
}

/// A follow-up from the requester reopens a solved or waiting ticket.
fn add_followup(ticket: &mut Ticket, followup: Followup) {
    if matches!(ticket.status, STATUS_SOLVED | STATUS_WAITING) {
        ticket.status = if ticket.assigned {
            STATUS_ASSIGNED
        } else {
            STATUS_NEW
        };
        ticket.solution = None;
        ticket.reopened += 1;
    }
    ticket.followups.push(followup);
}

/// The HTML part when there is one, else the text part (GLPI's choice).
fn body_of(message: &Message<'_>) -> String {
    message
        .body_html(0)
        .filter(|_| !message.html_body.is_empty() && has_real_html(message))
        .or_else(|| message.body_text(0))
        .map(|b| b.into_owned())
        .unwrap_or_default()
}

/// mail-parser synthesises HTML from a text-only mail; GLPI would take the text part.
fn has_real_html(message: &Message<'_>) -> bool {
    message.html_body.iter().any(|&i| {
        message
            .parts
            .get(i as usize)
            .is_some_and(|p| matches!(p.body, mail_parser::PartType::Html(_)))
    })
}

// ---------------------------------------------------------------------------
// Notifications

struct Notice {
    ticket_id: u64,
    event: String,
    target: (SocketAddr, String),
    subject: String,
    message_id: String,
    raw: Vec<u8>,
}

fn new_id(config: &GlpiConfig, ticket_id: u64) -> String {
    format!("<GLPI_{}-Ticket-{ticket_id}/new@glpi.test>", config.uuid)
}

fn new_ticket_notice(inner: &Inner, state: &State, ticket: &Ticket) -> Option<Notice> {
    if !state.notify_new {
        return None;
    }
    let target = state.notify_target.clone()?;
    let config = &inner.config;
    let subject = format!(
        "[{} #{:07}] New ticket {}",
        config.subject_tag, ticket.id, ticket.title
    );
    let message_id = new_id(config, ticket.id);
    let raw = notification_mail(config, ticket, &subject, &message_id, None, "New ticket");
    Some(Notice {
        ticket_id: ticket.id,
        event: "new".into(),
        target,
        subject,
        message_id,
        raw,
    })
}

fn solved_or_closed_notice(
    inner: &Inner,
    state: &State,
    ticket: &Ticket,
    event: &str,
) -> Option<Notice> {
    if !state.notify_solved {
        return None;
    }
    let target = state.notify_target.clone()?;
    let config = &inner.config;
    let action = if event == "solved" {
        "Ticket solved"
    } else {
        "Closing of the ticket"
    };
    let subject = format!(
        "[{} #{:07}] {action} {}",
        config.subject_tag, ticket.id, ticket.title
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let message_id = format!(
        "<GLPI_{}-Ticket-{}/{event}.{now}.{}@glpi.test>",
        config.uuid,
        ticket.id,
        rand::random::<u32>() % 1_000_000
    );
    let root = new_id(config, ticket.id);
    let raw = notification_mail(config, ticket, &subject, &message_id, Some(&root), action);
    Some(Notice {
        ticket_id: ticket.id,
        event: event.into(),
        target,
        subject,
        message_id,
        raw,
    })
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

fn notification_mail(
    config: &GlpiConfig,
    ticket: &Ticket,
    subject: &str,
    message_id: &str,
    in_reply_to: Option<&str>,
    action: &str,
) -> Vec<u8> {
    use base64::Engine as _;
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let mut head = format!(
        "Date: {date}\r\nFrom: GLPI <{from}>\r\nReply-To: GLPI <{from}>\r\nTo: {to}\r\n\
         Subject: {subject}\r\nMessage-ID: {message_id}\r\n",
        from = config.notification_from,
        to = ticket.requester,
        subject = encode_header_text(subject),
    );
    if let Some(root) = in_reply_to {
        head.push_str(&format!("In-Reply-To: {root}\r\nReferences: {root}\r\n"));
    }
    let url = format!("https://glpi.test/front/ticket.form.php?id={}", ticket.id);
    let text = format!(
        "URL : {url}\n\nTicket: Description\n\nTitle : {}\nStatus : {}\nRequester : {}\n",
        ticket.title,
        status_name(ticket.status),
        ticket.requester
    );
    let html = format!(
        "<html><body><p>{action}</p><p>URL : <a href=\"{url}\">{url}</a></p>\
         <p><strong>Title</strong> : {}</p><p><strong>Status</strong> : {}</p></body></html>",
        html_escape(&ticket.title),
        status_name(ticket.status)
    );
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    head.push_str(&format!(
        "Auto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: OOF, DR, NDR, RN, NRN\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"_glpi_b1\"\r\n\r\n\
         --_glpi_b1\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n\
         --_glpi_b1\r\nContent-Type: text/html; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n\
         --_glpi_b1--\r\n",
        b64(&text),
        b64(&html)
    ));
    head.into_bytes()
}

fn status_name(status: u8) -> &'static str {
    match status {
        STATUS_NEW => "New",
        STATUS_ASSIGNED => "Processing (assigned)",
        STATUS_PLANNED => "Processing (planned)",
        STATUS_WAITING => "Pending",
        STATUS_SOLVED => "Solved",
        STATUS_CLOSED => "Closed",
        _ => "Unknown",
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn send_notification(inner: Arc<Inner>, notice: Notice) {
    let (addr, rcpt) = &notice.target;
    let result = smtp_send(
        *addr,
        &inner.config.notification_from,
        &[rcpt.as_str()],
        &notice.raw,
    )
    .await;
    inner.state().notifications.push(SentNotification {
        ticket_id: notice.ticket_id,
        event: notice.event,
        subject: notice.subject,
        message_id: notice.message_id,
        result,
    });
}

// ---------------------------------------------------------------------------
// SMTP: a minimal server (for the collector and for sinks) and a minimal client

async fn serve_smtp<F>(listener: TcpListener, handler: F)
where
    F: Fn(ReceivedMail) + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    while let Ok((stream, _)) = listener.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = smtp_session(stream, &*handler).await;
        });
    }
}

async fn smtp_session(
    stream: TcpStream,
    handler: &(dyn Fn(ReceivedMail) + Send + Sync),
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 glpi.test ESMTP double\r\n").await?;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let command = text.trim_end();
        let upper = command.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-glpi.test\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SIZE 52428800\r\n"
        } else if upper.starts_with("HELO") {
            b"250 glpi.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = Some(angle_address(&command[10..]));
            rcpt_to.clear();
            b"250 2.1.0 Ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            if mail_from.is_none() {
                b"503 5.5.1 MAIL first\r\n"
            } else {
                rcpt_to.push(angle_address(&command[8..]));
                b"250 2.1.5 Ok\r\n"
            }
        } else if upper == "DATA" {
            if rcpt_to.is_empty() {
                b"503 5.5.1 RCPT first\r\n"
            } else {
                write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let data = read_data(&mut reader).await?;
                handler(ReceivedMail {
                    mail_from: mail_from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    data,
                });
                b"250 2.0.0 Ok: queued\r\n"
            }
        } else if upper == "RSET" {
            mail_from = None;
            rcpt_to.clear();
            b"250 2.0.0 Ok\r\n"
        } else if upper == "NOOP" {
            b"250 2.0.0 Ok\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 Command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}

fn angle_address(arg: &str) -> String {
    let arg = arg.trim();
    let inner = arg
        .strip_prefix('<')
        .and_then(|s| s.split_once('>').map(|(a, _)| a))
        .unwrap_or_else(|| arg.split_whitespace().next().unwrap_or(""));
    inner.to_ascii_lowercase()
}

async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(data);
        }
        let unstuffed = if line.starts_with(b"..") {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(unstuffed);
    }
}

async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<(u16, String), String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .map_err(|_| "SMTP reply timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        text.push_str(&line);
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad SMTP reply `{}`", line.trim_end()))?;
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, text));
        }
    }
}

/// Sends one mail over plain SMTP (EHLO, MAIL, RCPT…, DATA, QUIT); the data is sent
/// with CRLF line ends and dot-stuffed.
pub async fn smtp_send(
    addr: SocketAddr,
    from: &str,
    rcpts: &[&str],
    raw: &[u8],
) -> Result<(), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let expect = |got: (u16, String), class: u16| -> Result<(), String> {
        if got.0 / 100 == class {
            Ok(())
        } else {
            Err(format!("unexpected SMTP reply: {}", got.1.trim_end()))
        }
    };
    expect(read_reply(&mut reader).await?, 2)?;
    let mut commands = vec!["EHLO glpi.test".to_string(), format!("MAIL FROM:<{from}>")];
    commands.extend(rcpts.iter().map(|r| format!("RCPT TO:<{r}>")));
    for command in commands {
        write
            .write_all(format!("{command}\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        expect(read_reply(&mut reader).await?, 2)?;
    }
    write
        .write_all(b"DATA\r\n")
        .await
        .map_err(|e| e.to_string())?;
    expect(read_reply(&mut reader).await?, 3)?;
    write
        .write_all(&dot_stuff(raw))
        .await
        .map_err(|e| e.to_string())?;
    expect(read_reply(&mut reader).await?, 2)?;
    let _ = write.write_all(b"QUIT\r\n").await;
    Ok(())
}

fn dot_stuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 8);
    let text = raw
        .strip_suffix(b"\r\n")
        .or_else(|| raw.strip_suffix(b"\n"))
        .unwrap_or(raw);
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// An SMTP server that keeps every mail it receives (e.g. to catch GLPI's notifications).
pub struct SmtpSink {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<ReceivedMail>>>,
    task: JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().expect("sink addr");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let store = mails.clone();
        let task = tokio::spawn(serve_smtp(listener, move |mail| {
            store.lock().unwrap_or_else(|e| e.into_inner()).push(mail);
        }));
        SmtpSink { addr, mails, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn mails(&self) -> Vec<ReceivedMail> {
        self.mails.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "SMTP sink: timed out waiting for {n} mails, got {}",
                mails.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The legacy REST API (apirest.php)

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

async fn serve_http(stream: TcpStream, inner: &Arc<Inner>) -> std::io::Result<()> {
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
    match (request.method.as_str(), endpoint.as_str()) {
        ("GET", "killSession") => {
            state.sessions.remove(&session);
            (200, json!(true))
        }
        ("GET", "search/Ticket") => search_tickets(&state, request),
        ("POST", "ITILSolution") => match itil_input(request) {
            Ok((id, content)) => {
                let (answer, notice) = api_solve(inner, &mut state, id, content);
                drop(state);
                if let Some(notice) = notice {
                    tokio::spawn(send_notification(inner.clone(), notice));
                }
                answer
            }
            Err(e) => e,
        },
        ("POST", "ITILFollowup") => match itil_input(request) {
            Ok((id, content)) => api_followup(&mut state, id, content),
            Err(e) => e,
        },
        _ => glpi_error(
            400,
            "ERROR_RESOURCE_NOT_FOUND_NOR_COMMONDBTM",
            "resource not found",
        ),
    }
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
fn search_tickets(state: &State, request: &HttpRequest) -> (u16, Value) {
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
) -> ((u16, Value), Option<Notice>) {
    let Some(ticket) = state.tickets.iter_mut().find(|t| t.id == id) else {
        return (
            glpi_error(
                400,
                "ERROR_GLPI_ADD",
                "You don't have permission to perform this action.",
            ),
            None,
        );
    };
    if matches!(ticket.status, STATUS_SOLVED | STATUS_CLOSED) {
        return (
            glpi_error(
                400,
                "ERROR_GLPI_ADD",
                "The item is already solved, did anyone pushed a solution before you?",
            ),
            None,
        );
    }
    ticket.status = STATUS_SOLVED;
    ticket.solution = Some(content);
    let ticket = ticket.clone();
    let notice = solved_or_closed_notice(inner, state, &ticket, "solved");
    (created(state), notice)
}

fn api_followup(state: &mut State, id: u64, content: String) -> (u16, Value) {
    let Some(ticket) = state.tickets.iter_mut().find(|t| t.id == id) else {
        return glpi_error(
            400,
            "ERROR_GLPI_ADD",
            "You don't have permission to perform this action.",
        );
    };
    if ticket.status == STATUS_CLOSED {
        return glpi_error(
            400,
            "ERROR_GLPI_ADD",
            "You don't have permission to perform this action.",
        );
    }
    let from = ticket.requester.clone();
    add_followup(
        ticket,
        Followup {
            content,
            from,
            subject: String::new(),
            message_id: None,
            source: Source::Api,
        },
    );
    created(state)
}
