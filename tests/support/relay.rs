//! `RecordingRelay`: a real, minimal SMTP server on 127.0.0.1 standing in for the
//! upstream relay in end-to-end tests. It records accepted mail, can be switched to
//! temporary or permanent failure at run time, stopped and brought back on its port,
//! and optionally offers STARTTLS (self-signed, rcgen) and AUTH PLAIN/LOGIN.
#![allow(dead_code)]

use base64::Engine;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;

/// How the relay answers transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// 250 everywhere; mail is recorded.
    Accept,
    /// 451 4.3.0 to every RCPT TO.
    TempFailRcpt,
    /// 451 4.3.0 after the message data (the data is read, not recorded).
    TempFailData,
    /// 550 5.7.1 to every RCPT TO.
    RejectRcpt,
    /// 550 5.7.1 after the message data.
    RejectData,
}

/// One mail the relay accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// Reverse path without angle brackets ("" for the null sender).
    pub from: String,
    pub to: Vec<String>,
    /// The message as sent, CRLF line ends, dot-unstuffed, without the final ".".
    pub raw: Vec<u8>,
    /// Whether the session was under TLS when the mail was sent.
    pub tls: bool,
    /// The user that authenticated, if any.
    pub auth_user: Option<String>,
}

impl ReceivedMail {
    pub fn raw_str(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }

    /// The value of the first header of that name (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.raw_str();
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        let mut lines = head.split("\r\n").peekable();
        while let Some(line) = lines.next() {
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            if !field.eq_ignore_ascii_case(name) {
                continue;
            }
            let mut value = value.trim().to_string();
            while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
                value.push(' ');
                value.push_str(next.trim());
                lines.next();
            }
            return Some(value);
        }
        None
    }
}

/// Options fixed at start.
#[derive(Debug, Clone, Default)]
pub struct RelayOptions {
    /// Offer STARTTLS with a self-signed certificate for "localhost" and 127.0.0.1.
    pub starttls: bool,
    /// Require AUTH (PLAIN or LOGIN) with this user and password before MAIL.
    pub auth: Option<(String, String)>,
    /// Wait this long before every reply, the greeting included (a slow relay).
    pub reply_delay: Duration,
    /// Wait this long before answering the final dot (a content filter at work).
    pub data_done_delay: Duration,
    /// Advertise `SIZE n` (instead of 50 MB) and refuse bigger mail with 552 5.3.4,
    /// as Postfix's `message_size_limit` does.
    pub size_limit: Option<usize>,
}

struct State {
    mode: RelayMode,
    received: Vec<ReceivedMail>,
    connections: usize,
    transactions: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    options: RelayOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A test thread that panicked while holding the lock must not hide the mail.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The test relay. Dropping it stops it (best effort; prefer `stop().await`).
pub struct RecordingRelay {
    shared: Arc<Shared>,
    port: u16,
    running: Option<Running>,
}

impl RecordingRelay {
    /// Starts in `Accept` mode on an ephemeral port, plain text, no AUTH.
    pub async fn start() -> RecordingRelay {
        Self::start_with(0, RelayOptions::default()).await
    }

    /// Starts on a given port (e.g. the port of a relay that was stopped).
    pub async fn start_on(port: u16) -> RecordingRelay {
        Self::start_with(port, RelayOptions::default()).await
    }

    /// Starts with options, on `port` (0 for an ephemeral one).
    pub async fn start_with(port: u16, options: RelayOptions) -> RecordingRelay {
        let tls = options.starttls.then(tls_acceptor);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: RelayMode::Accept,
                received: Vec::new(),
                connections: 0,
                transactions: 0,
            }),
            changed: Notify::new(),
            options,
            tls,
        });
        let mut relay = RecordingRelay {
            shared,
            port,
            running: None,
        };
        relay.listen().await;
        relay
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    pub fn set_mode(&self, mode: RelayMode) {
        self.shared.lock().mode = mode;
    }

    pub fn mode(&self) -> RelayMode {
        self.shared.lock().mode
    }

    /// Mail accepted so far, in acceptance order.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.shared.lock().received.clone()
    }

    /// Forgets the recorded mail.
    pub fn clear(&self) {
        self.shared.lock().received.clear();
    }

    /// TCP connections accepted so far (tells pooled reuse from reconnects).
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// MAIL FROM commands seen so far, accepted or not (counts delivery attempts).
    pub fn transactions(&self) -> usize {
        self.shared.lock().transactions
    }

    /// Waits until at least `n` mails were accepted and returns all of them.
    /// Panics with what did arrive if `timeout` passes first.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "relay received {} of {n} mails within {timeout:?}: {:#?}",
                    received.len(),
                    received
                        .iter()
                        .map(|m| (&m.from, &m.to))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// Closes the listener and every open connection: clients then get
    /// "connection refused" until `restart`.
    pub async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            // The receiver lives in the task; a send error means it already ended.
            let _ = running.stop.send(true);
            if let Err(err) = running.task.await {
                if err.is_panic() {
                    std::panic::resume_unwind(err.into_panic());
                }
            }
        }
    }

    /// Listens again on the same port, keeping mode and recorded mail.
    pub async fn restart(&mut self) {
        if self.running.is_none() {
            self.listen().await;
        }
    }

    async fn listen(&mut self) {
        let listener = bind(self.port).await;
        self.port = listener
            .local_addr()
            .expect("listener has an address")
            .port();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&self.shared), stop_rx));
        self.running = Some(Running { stop, task });
    }
}

impl Drop for RecordingRelay {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.task.abort();
        }
    }
}

/// Binds, retrying briefly: a port just released can take a moment to be free again.
async fn bind(port: u16) -> TcpListener {
    let mut last_error = None;
    for _ in 0..50 {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(err) => last_error = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("test relay cannot bind 127.0.0.1:{port}: {last_error:?}");
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((socket, _)) = accepted {
                    shared.lock().connections += 1;
                    sessions.spawn(session(socket, Arc::clone(&shared)));
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    // Aborting drops every session's socket, which closes the connections.
    sessions.shutdown().await;
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Session {
    shared: Arc<Shared>,
    tls: bool,
    auth_user: Option<String>,
    from: Option<String>,
    to: Vec<String>,
}

const MAX_LINE: usize = 1 << 20;

async fn session(socket: TcpStream, shared: Arc<Shared>) {
    let mut session = Session {
        shared,
        tls: false,
        auth_user: None,
        from: None,
        to: Vec::new(),
    };
    let mut io: BufReader<Box<dyn Stream>> = BufReader::new(Box::new(socket));
    tokio::time::sleep(session.shared.options.reply_delay).await;
    if reply(&mut io, "220 relay.test ESMTP RecordingRelay\r\n")
        .await
        .is_err()
    {
        return;
    }
    loop {
        let Some(line) = read_line(&mut io).await else {
            return;
        };
        match session.command(&line, &mut io).await {
            Step::Continue => {}
            Step::Quit => return,
            Step::StartTls => match session.start_tls(io).await {
                Some(upgraded) => io = upgraded,
                None => return,
            },
        }
    }
}

enum Step {
    Continue,
    Quit,
    StartTls,
}

impl Session {
    async fn command(&mut self, line: &str, io: &mut BufReader<Box<dyn Stream>>) -> Step {
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim()),
            None => (line.to_ascii_uppercase(), ""),
        };
        let answer = match verb.as_str() {
            "EHLO" => self.ehlo(),
            "HELO" => "250 relay.test\r\n".to_string(),
            "STARTTLS" if self.shared.tls.is_some() && !self.tls => {
                if reply(io, "220 2.0.0 Ready to start TLS\r\n").await.is_err() {
                    return Step::Quit;
                }
                return Step::StartTls;
            }
            "AUTH" if self.shared.options.auth.is_some() && self.auth_user.is_none() => {
                self.auth(arg, io).await
            }
            "MAIL" => self.mail(arg),
            "RCPT" => self.rcpt(arg),
            "DATA" => return self.data(io).await,
            "RSET" => {
                self.reset();
                "250 2.0.0 Ok\r\n".to_string()
            }
            "NOOP" => "250 2.0.0 Ok\r\n".to_string(),
            "VRFY" => "252 2.0.0 Cannot verify\r\n".to_string(),
            "QUIT" => {
                let _ = reply(io, "221 2.0.0 Bye\r\n").await;
                return Step::Quit;
            }
            _ => "502 5.5.2 Command not recognized\r\n".to_string(),
        };
        tokio::time::sleep(self.shared.options.reply_delay).await;
        if reply(io, &answer).await.is_err() {
            return Step::Quit;
        }
        Step::Continue
    }

    fn ehlo(&mut self) -> String {
        self.reset();
        let size = format!(
            "SIZE {}",
            self.shared.options.size_limit.unwrap_or(52_428_800)
        );
        let mut lines = vec![
            "relay.test",
            "PIPELINING",
            "8BITMIME",
            size.as_str(),
            "SMTPUTF8",
        ];
        if self.shared.tls.is_some() && !self.tls {
            lines.push("STARTTLS");
        }
        if self.shared.options.auth.is_some() {
            lines.push("AUTH PLAIN LOGIN");
        }
        lines.push("ENHANCEDSTATUSCODES");
        let last = lines.len() - 1;
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
            .collect()
    }

    async fn auth(&mut self, arg: &str, io: &mut BufReader<Box<dyn Stream>>) -> String {
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_string())),
            None => (arg.to_ascii_uppercase(), None),
        };
        let credentials = match mechanism.as_str() {
            "PLAIN" => {
                let encoded = match initial {
                    Some(i) => Some(i),
                    None => challenge(io, "").await,
                };
                encoded.and_then(|e| decode(&e)).and_then(|plain| {
                    let mut parts = plain.split('\0').skip(1);
                    Some((parts.next()?.to_string(), parts.next()?.to_string()))
                })
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => decode(&i),
                    None => challenge(io, "VXNlcm5hbWU6").await.and_then(|e| decode(&e)),
                };
                match user {
                    Some(user) => challenge(io, "UGFzc3dvcmQ6")
                        .await
                        .and_then(|e| decode(&e))
                        .map(|password| (user, password)),
                    None => None,
                }
            }
            _ => return "504 5.5.4 Unrecognized authentication type\r\n".to_string(),
        };
        match (credentials, &self.shared.options.auth) {
            (Some(given), Some(expected)) if given == *expected => {
                self.auth_user = Some(given.0);
                "235 2.7.0 Authentication successful\r\n".to_string()
            }
            _ => "535 5.7.8 Authentication credentials invalid\r\n".to_string(),
        }
    }

    fn mail(&mut self, arg: &str) -> String {
        self.shared.lock().transactions += 1;
        if self.shared.options.auth.is_some() && self.auth_user.is_none() {
            return "530 5.7.0 Authentication required\r\n".to_string();
        }
        if self.from.is_some() {
            return "503 5.5.1 Nested MAIL command\r\n".to_string();
        }
        match path_arg(arg, "FROM:") {
            Some(path) => {
                self.from = Some(path);
                "250 2.1.0 Ok\r\n".to_string()
            }
            None => "501 5.5.4 Syntax: MAIL FROM:<address>\r\n".to_string(),
        }
    }

    fn rcpt(&mut self, arg: &str) -> String {
        if self.from.is_none() {
            return "503 5.5.1 Need MAIL before RCPT\r\n".to_string();
        }
        match self.shared.lock().mode {
            RelayMode::TempFailRcpt => return "451 4.3.0 Temporary failure, try later\r\n".into(),
            RelayMode::RejectRcpt => return "550 5.7.1 Relaying denied\r\n".into(),
            _ => {}
        }
        match path_arg(arg, "TO:") {
            Some(path) if !path.is_empty() => {
                self.to.push(path);
                "250 2.1.5 Ok\r\n".to_string()
            }
            _ => "501 5.5.4 Syntax: RCPT TO:<address>\r\n".to_string(),
        }
    }

    async fn data(&mut self, io: &mut BufReader<Box<dyn Stream>>) -> Step {
        if self.from.is_none() || self.to.is_empty() {
            let text = "503 5.5.1 Need MAIL and RCPT before DATA\r\n";
            return if reply(io, text).await.is_ok() {
                Step::Continue
            } else {
                Step::Quit
            };
        }
        if reply(io, "354 End data with <CR><LF>.<CR><LF>\r\n")
            .await
            .is_err()
        {
            return Step::Quit;
        }
        let Some(raw) = read_data(io).await else {
            return Step::Quit;
        };
        let from = self.from.take().unwrap_or_default();
        let to = std::mem::take(&mut self.to);
        tokio::time::sleep(self.shared.options.data_done_delay).await;
        let too_big = self
            .shared
            .options
            .size_limit
            .is_some_and(|max| raw.len() > max);
        let answer = {
            let mut state = self.shared.lock();
            match state.mode {
                _ if too_big => "552 5.3.4 Message size exceeds fixed limit\r\n".to_string(),
                RelayMode::TempFailData => "451 4.3.0 Temporary failure, try later\r\n".to_string(),
                RelayMode::RejectData => "550 5.7.1 Message rejected\r\n".to_string(),
                _ => {
                    state.received.push(ReceivedMail {
                        from,
                        to,
                        raw,
                        tls: self.tls,
                        auth_user: self.auth_user.clone(),
                    });
                    format!("250 2.0.0 Ok: queued as {}\r\n", state.received.len())
                }
            }
        };
        self.shared.changed.notify_waiters();
        if reply(io, &answer).await.is_err() {
            return Step::Quit;
        }
        Step::Continue
    }

    async fn start_tls(
        &mut self,
        io: BufReader<Box<dyn Stream>>,
    ) -> Option<BufReader<Box<dyn Stream>>> {
        let acceptor = self.shared.tls.clone()?;
        // Anything the client pipelined after STARTTLS is discarded, as RFC 3207 requires.
        let plain = io.into_inner();
        let upgraded = acceptor.accept(plain).await.ok()?;
        self.tls = true;
        self.auth_user = None;
        self.reset();
        Some(BufReader::new(Box::new(upgraded)))
    }

    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }
}

/// `FROM:<a@b> SIZE=10` → "a@b"; `FROM:<>` → "".
fn path_arg(arg: &str, prefix: &str) -> Option<String> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    let path = rest.split_whitespace().next()?;
    let inner = path.strip_prefix('<')?.strip_suffix('>')?;
    Some(inner.to_string())
}

async fn challenge(io: &mut BufReader<Box<dyn Stream>>, prompt: &str) -> Option<String> {
    reply(io, &format!("334 {prompt}\r\n")).await.ok()?;
    read_line(io).await.filter(|answer| answer != "*")
}

fn decode(encoded: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

async fn reply(io: &mut BufReader<Box<dyn Stream>>, text: &str) -> std::io::Result<()> {
    let stream = io.get_mut();
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await
}

/// One command line without its line end; None at EOF, on error or on an overlong line.
async fn read_line(io: &mut BufReader<Box<dyn Stream>>) -> Option<String> {
    let mut buf = Vec::new();
    let n = (&mut *io)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buf)
        .await
        .ok()?;
    if n == 0 || !buf.ends_with(b"\n") {
        return None;
    }
    let text = String::from_utf8_lossy(&buf);
    Some(text.trim_end_matches(['\r', '\n']).to_string())
}

/// The message after DATA, dot-unstuffed, with CRLF line ends; None if the client went away.
async fn read_data(io: &mut BufReader<Box<dyn Stream>>) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = (&mut *io)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .ok()?;
        if n == 0 {
            return None;
        }
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if content == b"." {
            return Some(raw);
        }
        let content = content.strip_prefix(b".").unwrap_or(content);
        raw.extend_from_slice(content);
        raw.extend_from_slice(b"\r\n");
    }
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("rcgen makes a self-signed certificate");
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        certified.key_pair.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("the generated certificate and key match");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
