//! A strict GLPI double for end-to-end tests: an SMTP server playing GLPI's mail
//! collector by the rules of shared/design/glpi-collector.md, GLPI's notification mails
//! sent back by SMTP, and a small HTTP/1.1 server speaking the legacy REST API.
//!
//! Time is GLPI's: by default the collector imports each mail the instant it arrives and
//! notifications leave at once (the "instant" mode), but [`GlpiConfig::batched`] makes
//! the collector a cron task (`mailgate`: every `interval`, at most `per_run` mails) and
//! notifications leave through their own queue (`queuednotification`). The REST API
//! enforces the API user's profile rights as GLPI does ([`ApiProfile`]).
#![allow(dead_code)]

mod api;
mod notify;

#[allow(unused_imports)]
pub use api::*;
#[allow(unused_imports)]
pub use notify::{modern_new_id, GlpiVersion, Labels, Language};

use mail_parser::{Address, HeaderName, Message, MessageParser};
use regex::Regex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const STATUS_NEW: u8 = 1;
pub const STATUS_ASSIGNED: u8 = 2;
pub const STATUS_PLANNED: u8 = 3;
pub const STATUS_WAITING: u8 = 4;
pub const STATUS_SOLVED: u8 = 5;
pub const STATUS_CLOSED: u8 = 6;

/// When a cron-like part of GLPI does its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// At once (the double's historical mode; no real GLPI works like this).
    Instant,
    /// A cron task: every `interval`, at most `per_run` items, oldest first.
    Every { interval: Duration, per_run: usize },
}

/// GLPI's default "Number of emails to process" of a mail collector.
pub const GLPI_COLLECTOR_BATCH: usize = 10;
/// GLPI's default number of notifications sent per `queuednotification` run.
pub const GLPI_NOTIFICATIONS_PER_RUN: usize = 50;

/// How the double is set up; `Default` matches tests/support/gateway.rs.
#[derive(Debug, Clone)]
pub struct GlpiConfig {
    /// GLPI's notification uuid (lowercase letters and digits).
    pub uuid: String,
    /// E-mail addresses of GLPI users (lowercase); only they may open tickets. The
    /// first one is the API user (the one whose user token is `user_token`).
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
    /// Send the "New followup" notification for every follow-up.
    pub notify_followups: bool,
    /// The mail collector's cron (`mailgate`).
    pub collector: Schedule,
    /// The notification queue's cron (`queuednotification`).
    pub notification_queue: Schedule,
    /// Which GLPI's notification shapes (Message-IDs, threading) the double speaks.
    pub version: GlpiVersion,
    /// Language of the notifications (subject label, status line).
    pub language: Language,
    /// The API user's active profile.
    pub api_profile: ApiProfile,
    /// Host part of GLPI's Message-IDs.
    pub host: String,
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
            notify_followups: false,
            collector: Schedule::Instant,
            notification_queue: Schedule::Instant,
            version: GlpiVersion::Modern,
            language: Language::En,
            api_profile: ApiProfile::technician(),
            host: "glpi.test".into(),
        }
    }
}

impl GlpiConfig {
    /// GLPI's real timing: the collector runs every `interval` and imports at most
    /// `per_run` mails; notifications leave every `interval` too, 50 a run.
    pub fn batched(interval: Duration, per_run: usize) -> GlpiConfig {
        GlpiConfig {
            collector: Schedule::Every { interval, per_run },
            notification_queue: Schedule::Every {
                interval,
                per_run: GLPI_NOTIFICATIONS_PER_RUN,
            },
            ..GlpiConfig::default()
        }
    }

    /// The notification queue runs every `interval`, sending at most `per_run`.
    pub fn notifications_every(mut self, interval: Duration, per_run: usize) -> GlpiConfig {
        self.notification_queue = Schedule::Every { interval, per_run };
        self
    }

    pub fn with_version(mut self, version: GlpiVersion) -> GlpiConfig {
        self.version = version;
        self
    }

    pub fn with_language(mut self, language: Language) -> GlpiConfig {
        self.language = language;
        self
    }

    pub fn with_profile(mut self, profile: ApiProfile) -> GlpiConfig {
        self.api_profile = profile;
        self
    }

    /// The API user's e-mail address.
    pub fn api_user(&self) -> &str {
        self.users.first().map(String::as_str).unwrap_or("")
    }

    /// GLPI user id of an address (users are numbered from 7, like a fresh install's
    /// first added user); `None` for an unknown address.
    pub fn user_id(&self, address: &str) -> Option<u64> {
        self.users
            .iter()
            .position(|u| u.eq_ignore_ascii_case(address))
            .map(|i| i as u64 + 7)
    }

    fn user_by_id(&self, id: u64) -> Option<&str> {
        id.checked_sub(7)
            .and_then(|i| self.users.get(i as usize))
            .map(String::as_str)
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
    /// When it was added.
    pub at: Instant,
    /// Order of everything that happened in the double (follow-ups, solutions).
    pub seq: u64,
}

/// GLPI's `ITILSolution.status` (CommonITILValidation's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolutionStatus {
    /// 2: the ticket is solved, waiting for the requester (or auto-close).
    Waiting,
    /// 3: the ticket was closed.
    Accepted,
    /// 4: a follow-up reopened the ticket.
    Refused,
}

#[derive(Debug, Clone)]
pub struct Solution {
    pub content: String,
    pub source: Source,
    pub status: SolutionStatus,
    pub at: Instant,
    pub seq: u64,
}

#[derive(Debug, Clone)]
pub struct Ticket {
    pub id: u64,
    pub title: String,
    /// The first mail's body (or the API's `content`).
    pub content: String,
    pub status: u8,
    pub requester: String,
    /// Message-ID of the mail that opened it.
    pub message_id: Option<String>,
    pub followups: Vec<Followup>,
    /// The current solution's content (`None` once refused).
    pub solution: Option<String>,
    /// Every solution ever added, with its status.
    pub solutions: Vec<Solution>,
    /// The closed ticket this one was opened for.
    pub linked_to: Option<u64>,
    /// A technician is assigned: a reopened ticket goes back to "assigned".
    pub assigned: bool,
    /// How many times a follow-up reopened it.
    pub reopened: u32,
    /// How it was opened (a mail through the collector, or `POST Ticket`).
    pub created_by: Source,
    pub created_at: Instant,
    pub urgency: u8,
    pub impact: u8,
    pub entities_id: u64,
    pub itilcategories_id: u64,
}

impl Ticket {
    /// Follow-ups added after the first solution (none, when nothing ever reopened it).
    pub fn followups_after_solution(&self) -> Vec<&Followup> {
        match self.solutions.first() {
            Some(first) => self
                .followups
                .iter()
                .filter(|f| f.seq > first.seq)
                .collect(),
            None => Vec::new(),
        }
    }

    /// Solutions a later follow-up refused (reopened the ticket).
    pub fn refused_solutions(&self) -> usize {
        self.solutions
            .iter()
            .filter(|s| s.status == SolutionStatus::Refused)
            .count()
    }
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
    /// When GLPI queued it (the event) and when it left.
    pub queued_at: Instant,
    pub sent_at: Instant,
}

#[derive(Default)]
struct State {
    tickets: Vec<Ticket>,
    refused: Vec<Refused>,
    /// Mails the collector imported (tickets, follow-ups, refusals).
    mails_received: usize,
    /// Mails the mailbox accepted over SMTP.
    mails_accepted: usize,
    /// Mails accepted but not imported yet (cron mode).
    mailbox: VecDeque<ReceivedMail>,
    collector_paused: bool,
    collector_runs: usize,
    notifications: Vec<SentNotification>,
    /// Notifications waiting for the next `queuednotification` run.
    notification_queue: VecDeque<notify::Notice>,
    notify_target: Option<(SocketAddr, String)>,
    notify_new: bool,
    notify_solved: bool,
    notify_followups: bool,
    api_down: bool,
    api_profile: ApiProfile,
    sessions: HashSet<String>,
    next_session: u64,
    next_item_id: u64,
    api_calls: HashMap<String, usize>,
    seq: u64,
}

impl State {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
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
            notify_followups: config.notify_followups,
            api_profile: config.api_profile.clone(),
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
        let mut tasks = Vec::new();
        let mailbox = {
            let inner = inner.clone();
            tokio::spawn(serve_smtp(smtp, move |mail| {
                deliver_to_mailbox(&inner, mail);
            }))
        };
        tasks.push(mailbox);
        if let Schedule::Every { interval, per_run } = inner.config.collector {
            let inner = inner.clone();
            tasks.push(tokio::spawn(async move {
                let mut ticks = cron(interval);
                loop {
                    ticks.tick().await;
                    run_collector(&inner, per_run, false);
                }
            }));
        }
        if let Schedule::Every { interval, per_run } = inner.config.notification_queue {
            let inner = inner.clone();
            tasks.push(tokio::spawn(async move {
                let mut ticks = cron(interval);
                loop {
                    ticks.tick().await;
                    notify::run_queue(&inner, per_run).await;
                }
            }));
        }
        let rest = {
            let inner = inner.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = api.accept().await {
                    let inner = inner.clone();
                    tokio::spawn(async move {
                        let _ = api::serve_http(stream, &inner).await;
                    });
                }
            })
        };
        tasks.push(rest);
        GlpiDouble {
            inner,
            smtp_addr,
            api_addr,
            tasks,
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

    /// Every follow-up of a ticket, oldest first (empty for an unknown ticket).
    pub fn followups(&self, id: u64) -> Vec<Followup> {
        self.ticket(id).map(|t| t.followups).unwrap_or_default()
    }

    /// Each ticket's id with its first mail (title and body), in ticket order.
    pub fn first_mails(&self) -> Vec<(u64, String, String)> {
        self.inner
            .state()
            .tickets
            .iter()
            .map(|t| (t.id, t.title.clone(), t.content.clone()))
            .collect()
    }

    /// Solutions refused by a follow-up, over every ticket.
    pub fn solutions_refused(&self) -> usize {
        self.inner
            .state()
            .tickets
            .iter()
            .map(Ticket::refused_solutions)
            .sum()
    }

    /// Reopenings (a follow-up to a solved or waiting ticket), over every ticket.
    pub fn reopen_count(&self) -> u32 {
        self.inner.state().tickets.iter().map(|t| t.reopened).sum()
    }

    pub fn refused(&self) -> Vec<Refused> {
        self.inner.state().refused.clone()
    }

    /// Mails the collector imported (whatever became of them).
    pub fn mails_received(&self) -> usize {
        self.inner.state().mails_received
    }

    /// Mails the mailbox accepted over SMTP, imported or not.
    pub fn mails_accepted(&self) -> usize {
        self.inner.state().mails_accepted
    }

    /// Mails waiting in the mailbox for a collector run.
    pub fn mailbox_len(&self) -> usize {
        self.inner.state().mailbox.len()
    }

    /// Collector runs so far (cron mode).
    pub fn collector_runs(&self) -> usize {
        self.inner.state().collector_runs
    }

    /// A stopped collector leaves every mail in the mailbox (its cron task disabled).
    pub fn pause_collector(&self, paused: bool) {
        self.inner.state().collector_paused = paused;
    }

    /// One collector run now, as the cron would do it (even when paused, like "Execute"
    /// on the cron task's page); returns the mails imported.
    pub fn run_collector_now(&self) -> usize {
        let per_run = match self.inner.config.collector {
            Schedule::Every { per_run, .. } => per_run,
            Schedule::Instant => usize::MAX,
        };
        run_collector(&self.inner, per_run, true)
    }

    /// Notifications waiting for the next queue run.
    pub fn notifications_queued(&self) -> usize {
        self.inner.state().notification_queue.len()
    }

    /// Sends every queued notification now.
    pub async fn flush_notifications(&self) {
        notify::run_queue(&self.inner, usize::MAX).await;
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

    /// "New followup" notifications on or off.
    pub fn set_followup_notifications(&self, on: bool) {
        self.inner.state().notify_followups = on;
    }

    /// The API user's active profile from now on.
    pub fn set_profile(&self, profile: ApiProfile) {
        self.inner.state().api_profile = profile;
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
    /// `ITILSolution`, `ITILFollowup`, `Ticket`, `Ticket/N`, `getFullSession`,
    /// `getActiveProfile`, `killSession`).
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
            add_solution(
                &mut state,
                id,
                "Solved by the technician.".into(),
                Source::Technician,
            );
            let ticket = ticket_mut(&mut state, id).clone();
            notify::event_notice(&self.inner, &state, &ticket, notify::Event::Solved)
        };
        notify::dispatch(&self.inner, notice).await;
    }

    /// A technician (or the auto-close) closes the ticket; GLPI notifies the requester.
    pub async fn close(&self, id: u64) {
        let notice = {
            let mut state = self.inner.state();
            let ticket = ticket_mut(&mut state, id);
            ticket.status = STATUS_CLOSED;
            for solution in &mut ticket.solutions {
                if solution.status == SolutionStatus::Waiting {
                    solution.status = SolutionStatus::Accepted;
                }
            }
            let ticket = ticket.clone();
            notify::event_notice(&self.inner, &state, &ticket, notify::Event::Closed)
        };
        notify::dispatch(&self.inner, notice).await;
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

    /// Waits until the collector imported every mail the mailbox accepted.
    pub async fn wait_mailbox_empty(&self, timeout: Duration) {
        self.wait_until(timeout, "an empty mailbox", |s| s.mailbox.is_empty())
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

    /// Waits until `done` holds for the tickets; panics with the double's state on timeout.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Ticket]) -> bool,
    ) -> Vec<Ticket> {
        self.wait_until(timeout, what, |s| done(&s.tickets)).await;
        self.tickets()
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
                        "GLPI double: timed out waiting for {what}; mails received {} (in the mailbox {}), tickets {:#?}, refused {:#?}",
                        state.mails_received, state.mailbox.len(), state.tickets, state.refused
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A cron's ticks: the first one `interval` from now, missed ones not made up.
fn cron(interval: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

fn ticket_mut(state: &mut State, id: u64) -> &mut Ticket {
    state
        .tickets
        .iter_mut()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("GLPI double has no ticket {id}"))
}

/// Solves a ticket: a new solution waiting for approval, status solved.
fn add_solution(state: &mut State, id: u64, content: String, source: Source) {
    let seq = state.next_seq();
    let ticket = ticket_mut(state, id);
    ticket.status = STATUS_SOLVED;
    ticket.solution = Some(content.clone());
    ticket.solutions.push(Solution {
        content,
        source,
        status: SolutionStatus::Waiting,
        at: Instant::now(),
        seq,
    });
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

/// The mailbox takes every mail; the collector imports it now or at its next run.
fn deliver_to_mailbox(inner: &Arc<Inner>, mail: ReceivedMail) {
    let mut state = inner.state();
    state.mails_accepted += 1;
    match inner.config.collector {
        Schedule::Instant => {
            drop(state);
            collect(inner, &mail);
        }
        Schedule::Every { .. } => state.mailbox.push_back(mail),
    }
}

/// One `mailgate` run: the oldest `per_run` mails of the mailbox are imported.
fn run_collector(inner: &Arc<Inner>, per_run: usize, forced: bool) -> usize {
    let batch: Vec<ReceivedMail> = {
        let mut state = inner.state();
        if state.collector_paused && !forced {
            return 0;
        }
        state.collector_runs += 1;
        let n = per_run.min(state.mailbox.len());
        state.mailbox.drain(..n).collect()
    };
    for mail in &batch {
        collect(inner, mail);
    }
    batch.len()
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
        Regex::new(r"(?i)GLPI(-(?<itemtype>[a-z]+))?(-(?<items_id>[0-9]+))?\.[0-9]+\.[0-9]+@.+")
            .expect("regex")
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

/// The ticket a header value names, when it holds a Message-ID of the shape this GLPI
/// version's collector looks for (and, from GLPI 10 on, of this instance's uuid).
fn ticket_in_header(value: &str, config: &GlpiConfig) -> Option<u64> {
    let re = match config.version {
        GlpiVersion::Modern => modern_id_regex(),
        GlpiVersion::Legacy10 => legacy_id_regex(),
        GlpiVersion::V9_5 => pre10_id_regex(),
    };
    for caps in re.captures_iter(value) {
        let same_instance = caps
            .name("uuid")
            .is_none_or(|u| u.as_str().eq_ignore_ascii_case(&config.uuid));
        let is_ticket = caps
            .name("itemtype")
            .is_some_and(|t| t.as_str().eq_ignore_ascii_case("ticket"));
        if same_instance && is_ticket {
            if let Some(id) = caps.name("items_id").and_then(|m| m.as_str().parse().ok()) {
                return Some(id);
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
                .and_then(|v| ticket_in_header(v, config))
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
            if !state.tickets[index].requester.eq_ignore_ascii_case(&from) {
                return refuse(&mut state, RefuseReason::NoFollowupRight);
            }
            let id = state.tickets[index].id;
            let notice = add_followup(
                inner,
                &mut state,
                id,
                content,
                from.clone(),
                subject.clone(),
                message_id.clone(),
                Source::Mail,
            );
            drop(state);
            notify::dispatch_now(inner, notice);
            return;
        }
        Some(index) => Some(state.tickets[index].id),
        None => None,
    };
    let title = if subject.is_empty() {
        "(No title)".into()
    } else {
        subject.clone()
    };
    let notice = open_ticket(
        inner,
        &mut state,
        NewTicket {
            title,
            content,
            requester: from.clone(),
            message_id: message_id.clone(),
            linked_to,
            created_by: Source::Mail,
            urgency: 3,
            impact: 3,
            entities_id: 0,
            itilcategories_id: 0,
        },
    );
    drop(state);
    // GLPI queues notifications and sends them later, never inside the collection.
    notify::dispatch_now(inner, notice);
}

/// What opening a ticket needs (from a mail or `POST Ticket`).
struct NewTicket {
    title: String,
    content: String,
    requester: String,
    message_id: Option<String>,
    linked_to: Option<u64>,
    created_by: Source,
    urgency: u8,
    impact: u8,
    entities_id: u64,
    itilcategories_id: u64,
}

/// Opens a ticket; returns its id and the new-ticket notification to send.
fn open_ticket(inner: &Inner, state: &mut State, new: NewTicket) -> Option<notify::Notice> {
    let ticket = Ticket {
        id: state.tickets.iter().map(|t| t.id).max().unwrap_or(0) + 1,
        title: new.title,
        content: new.content,
        status: STATUS_NEW,
        requester: new.requester,
        message_id: new.message_id,
        followups: Vec::new(),
        solution: None,
        solutions: Vec::new(),
        linked_to: new.linked_to,
        assigned: false,
        reopened: 0,
        created_by: new.created_by,
        created_at: Instant::now(),
        urgency: new.urgency,
        impact: new.impact,
        entities_id: new.entities_id,
        itilcategories_id: new.itilcategories_id,
    };
    state.tickets.push(ticket.clone());
    notify::event_notice(inner, state, &ticket, notify::Event::New)
}

/// A follow-up from the requester reopens a solved or waiting ticket (and a solved
/// ticket's solution is then refused). Returns the "New followup" notification.
#[allow(clippy::too_many_arguments)]
fn add_followup(
    inner: &Inner,
    state: &mut State,
    id: u64,
    content: String,
    from: String,
    subject: String,
    message_id: Option<String>,
    source: Source,
) -> Option<notify::Notice> {
    let seq = state.next_seq();
    let ticket = ticket_mut(state, id);
    if matches!(ticket.status, STATUS_SOLVED | STATUS_WAITING) {
        ticket.status = if ticket.assigned {
            STATUS_ASSIGNED
        } else {
            STATUS_NEW
        };
        ticket.solution = None;
        ticket.reopened += 1;
        for solution in &mut ticket.solutions {
            if solution.status == SolutionStatus::Waiting {
                solution.status = SolutionStatus::Refused;
            }
        }
    }
    ticket.followups.push(Followup {
        content,
        from,
        subject,
        message_id,
        source,
        at: Instant::now(),
        seq,
    });
    let ticket = ticket.clone();
    notify::event_notice(inner, state, &ticket, notify::Event::Followup)
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
