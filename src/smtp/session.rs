//! One inbound SMTP session: line framing and limits here, command grammar by smtp-proto,
//! the RFC 5321 state machine, STARTTLS, AUTH PLAIN/LOGIN, and DATA into the durable spool.
//! Replies are queued and flushed when the client's pipelined input is used up.

use super::reply::{self, Reply};
use super::Shared;
use crate::store::Envelope;
use base64::Engine;
use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver};
use smtp_proto::{Error as ProtoError, Request};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Anything a session can speak over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const READ_CHUNK: usize = 16 * 1024;

struct Transaction {
    mail_from: String,
    rcpt_to: Vec<String>,
}

enum AuthStep {
    PlainResponse,
    LoginUser,
    LoginPassword { user: String },
}

/// What the session loop must do after a command.
enum Next {
    Continue,
    Data,
    StartTls,
    Close,
}

// One per message in flight, moved rather than stored: boxing the big variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum DataOutcome {
    Complete(Box<crate::store::spool::Draft>),
    TooBig,
    /// The draft could not be written (disk full…): drained, answered 451.
    NotStored(std::io::Error),
}

pub struct Session {
    io: Box<dyn Io>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    discarding_long_line: bool,
    tls: bool,
    helo: Option<String>,
    esmtp: bool,
    auth_user: Option<String>,
    auth_step: Option<AuthStep>,
    transaction: Option<Transaction>,
    errors: u32,
    /// Set after a throttled AUTH failure: the next flush waits this long first.
    reply_delay: Option<std::time::Duration>,
    shutdown: watch::Receiver<bool>,
    /// The connection slot, through which the server may ask an idle session to close.
    slot: Option<super::slots::Slot>,
}

/// Why a read did not bring more input.
enum ReadEnd {
    Closed,
    TimedOut,
}

impl Session {
    pub fn new(
        io: Box<dyn Io>,
        shared: Arc<Shared>,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Session {
        Session {
            io,
            shared,
            peer,
            rbuf: Vec::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(512),
            discarding_long_line: false,
            tls: false,
            helo: None,
            esmtp: false,
            auth_user: None,
            auth_step: None,
            transaction: None,
            errors: 0,
            reply_delay: None,
            shutdown,
            slot: None,
        }
    }

    pub fn with_slot(mut self, slot: super::slots::Slot) -> Session {
        self.slot = Some(slot);
        self
    }

    fn set_idle(&self, since: Option<Instant>) {
        if let Some(slot) = &self.slot {
            slot.set_idle(since.map(Instant::into_std));
        }
    }

    fn host(&self) -> &str {
        &self.shared.config.server.hostname
    }

    fn reply(&mut self, r: Reply) {
        crate::http::metrics::metrics().smtp_reply(r.code);
        r.write_to(&mut self.wbuf);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if let Some(delay) = self.reply_delay.take() {
            tokio::time::sleep(delay).await;
        }
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Run the session to its end; I/O errors just end it (the client went away).
    pub async fn run(mut self) {
        let greeting = Reply::new(220, "", format!("{} ESMTP alertgate", self.host()));
        self.reply(greeting);
        if let Err(e) = self.serve().await {
            tracing::debug!(peer = %self.peer, error = %e, "session ended by I/O error");
        }
        let _ = self.io.shutdown().await;
    }

    async fn serve(&mut self) -> std::io::Result<()> {
        // Per-request deadline (Postfix's smtpd_per_request_deadline): a whole command
        // line must arrive within the command timeout, however it is dribbled.
        let mut request_started = Instant::now();
        loop {
            let mut handled = false;
            while let Some(line) = self.take_line() {
                handled = true;
                let next = match line {
                    Ok(line) => self.handle_line(&line),
                    Err(r) => self.refuse(r),
                };
                match next {
                    Next::Continue => {}
                    Next::Close => return self.flush().await,
                    Next::Data => {
                        self.flush().await?;
                        self.set_idle(None);
                        let outcome = self.receive_data().await?;
                        if let Next::Close = self.finish_data(outcome).await {
                            return self.flush().await;
                        }
                    }
                    Next::StartTls => {
                        self.flush().await?;
                        self.start_tls().await?;
                    }
                }
            }
            self.flush().await?;
            if *self.shutdown.borrow() {
                let r = reply::shutting_down(self.host());
                self.reply(r);
                return self.flush().await;
            }
            if handled {
                request_started = Instant::now();
                self.set_idle(Some(request_started));
            }
            let deadline = request_started + self.shared.command_timeout();
            if !self.read_more(deadline).await? {
                return Ok(());
            }
        }
    }

    /// Read more input; Ok(false) when the client closed, missed the deadline, the
    /// server needs this idle session's slot, or we are shutting down.
    async fn read_more(&mut self, deadline: Instant) -> std::io::Result<bool> {
        let mut shutdown = self.shutdown.clone();
        let evicted = self.slot.as_ref().map(|slot| Arc::clone(&slot.evicted));
        let evicted = async move {
            match evicted {
                Some(notify) => notify.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = self.read_until(deadline) => match read? {
                Ok(()) => Ok(true),
                Err(ReadEnd::Closed) => Ok(false),
                Err(ReadEnd::TimedOut) => {
                    tracing::info!(peer = %self.peer, "session timed out");
                    let r = reply::timeout(self.host());
                    self.reply(r);
                    self.flush().await?;
                    Ok(false)
                }
            },
            _ = evicted => {
                tracing::info!(peer = %self.peer, "idle session closed to free its slot");
                let r = reply::idle_evicted(self.host());
                self.reply(r);
                self.flush().await?;
                Ok(false)
            }
            _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                let r = reply::shutting_down(self.host());
                self.reply(r);
                self.flush().await?;
                Ok(false)
            }
        }
    }

    /// One read into the input buffer, unless `deadline` passes first.
    async fn read_until(&mut self, deadline: Instant) -> std::io::Result<Result<(), ReadEnd>> {
        // Straight into the buffer's spare room: no zeroed chunk to fill and copy per read.
        self.rbuf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.rbuf)).await {
            Ok(Ok(0)) => Ok(Err(ReadEnd::Closed)),
            Ok(Ok(_)) => Ok(Ok(())),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(Err(ReadEnd::TimedOut)),
        }
    }

    /// The next complete line from the input buffer (without CRLF), or a line-too-long error.
    fn take_line(&mut self) -> Option<Result<Vec<u8>, Reply>> {
        let max = self.shared.config.server.max_line_length;
        match self.rbuf.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let mut line: Vec<u8> = self.rbuf.drain(..=pos).collect();
                if std::mem::take(&mut self.discarding_long_line) {
                    return Some(Err(reply::line_too_long()));
                }
                if line.len() > max {
                    return Some(Err(reply::line_too_long()));
                }
                line.truncate(line.len() - 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Some(Ok(line))
            }
            None if self.rbuf.len() > max => {
                // Keep reading to the end of this line, but never buffer it.
                self.rbuf.clear();
                self.discarding_long_line = true;
                None
            }
            None => None,
        }
    }

    /// Send an error reply and count it; past the limit the session ends.
    fn refuse(&mut self, r: Reply) -> Next {
        tracing::info!(peer = %self.peer, code = r.code, reason = %r.text, "command refused");
        // RFC 5321 4.2.2: 421 is the server closing the channel.
        let closing = r.code == 421;
        self.reply(r);
        if closing {
            return Next::Close;
        }
        self.errors += 1;
        if self.errors >= self.shared.config.server.max_errors {
            tracing::info!(peer = %self.peer, errors = self.errors, "too many errors, closing");
            self.reply(reply::too_many_errors());
            return Next::Close;
        }
        Next::Continue
    }

    fn answer(&mut self, r: Reply) -> Next {
        if r.is_error() {
            self.refuse(r)
        } else {
            self.reply(r);
            Next::Continue
        }
    }

    fn handle_line(&mut self, line: &[u8]) -> Next {
        if let Some(step) = self.auth_step.take() {
            return match self.continue_auth(step, line) {
                Some(r) => self.answer(r),
                None => Next::Continue,
            };
        }
        let mut framed = Vec::with_capacity(line.len() + 2);
        framed.extend_from_slice(line);
        framed.extend_from_slice(b"\r\n");
        let request = match Request::parse(&mut framed.iter()) {
            Ok(req) => req.into_owned(),
            // A SIZE too big for smtp-proto is still a well-formed number: too big.
            Err(ProtoError::InvalidParameter { param: "SIZE" })
                if declared_size(line)
                    .is_some_and(|n| n > self.shared.config.server.max_message_size as u64) =>
            {
                return self.refuse(reply::message_too_big())
            }
            Err(e) => return self.refuse(proto_error_reply(e)),
        };
        match request {
            Request::Ehlo { host } => self.answer_helo(host, true),
            Request::Helo { host } => self.answer_helo(host, false),
            Request::Lhlo { .. } => self.refuse(reply::unknown_command()),
            Request::Mail { from } => {
                let r = self.mail(from, line);
                self.answer(r)
            }
            Request::Rcpt { to } => {
                let r = self.rcpt(&to.address);
                self.answer(r)
            }
            Request::Data => match self.data_allowed() {
                Ok(()) => {
                    self.reply(reply::start_data());
                    Next::Data
                }
                Err(r) => self.refuse(r),
            },
            Request::Rset => {
                self.transaction = None;
                self.answer(reply::ok())
            }
            Request::Noop { .. } => self.answer(reply::ok()),
            Request::Vrfy { .. } => self.answer(reply::vrfy()),
            Request::Help { .. } => self.answer(reply::help()),
            Request::Quit => {
                self.reply(reply::bye());
                Next::Close
            }
            Request::StartTls => self.starttls_allowed(),
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                let r = self.auth(mechanism, &initial_response);
                match r {
                    Some(r) => self.answer(r),
                    None => Next::Continue,
                }
            }
            Request::Bdat { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.refuse(reply::not_implemented()),
        }
    }

    fn answer_helo(&mut self, host: String, esmtp: bool) -> Next {
        // Never echo (or store) control bytes from the client's name: NUL in a reply
        // breaks clients and log lines.
        let host: String = host.chars().filter(|c| !c.is_control()).collect();
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        self.transaction = None;
        if !esmtp {
            let r = Reply::new(250, "", self.host().to_string());
            return self.answer(r);
        }
        let mut lines = vec![
            format!("{} greets {}", self.host(), host),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.shared.config.server.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.shared.tls.is_some() && !self.tls {
            lines.push("STARTTLS".to_string());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        lines.push("HELP".to_string());
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.wbuf
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
        Next::Continue
    }

    fn auth_configured(&self) -> bool {
        !self.shared.config.server.auth.users.is_empty()
    }

    /// AUTH is only offered over TLS, unless plaintext on loopback is explicitly allowed.
    fn auth_offered(&self) -> bool {
        self.auth_configured() && (self.tls || self.plaintext_auth_allowed())
    }

    fn plaintext_auth_allowed(&self) -> bool {
        self.shared.config.server.auth.allow_plaintext_on_loopback && self.peer.ip().is_loopback()
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<String>, line: &[u8]) -> Reply {
        if self.helo.is_none() {
            return reply::need_helo();
        }
        if self.transaction.is_some() {
            return reply::nested_mail();
        }
        if self.shared.config.server.auth.required && self.auth_user.is_none() {
            return reply::auth_required();
        }
        if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
            return reply::binarymime_unsupported();
        }
        // smtp-proto wraps a SIZE beyond usize round to a small number: read it here.
        let declared = declared_size(line).unwrap_or(from.size as u64);
        if declared > self.shared.config.server.max_message_size as u64 {
            return reply::message_too_big();
        }
        self.transaction = Some(Transaction {
            mail_from: from.address,
            rcpt_to: Vec::new(),
        });
        reply::sender_ok()
    }

    fn rcpt(&mut self, address: &str) -> Reply {
        let max = self.shared.config.server.max_recipients;
        let accepted = self.shared.policy.recipient_accepted(address);
        let Some(tx) = self.transaction.as_mut() else {
            return reply::need_mail();
        };
        // smtp-proto accepts the null path here; a recipient never is one.
        if address.is_empty() {
            return reply::bad_recipient_address();
        }
        if !accepted {
            return reply::relay_denied(address);
        }
        if tx.rcpt_to.len() >= max {
            return reply::too_many_recipients();
        }
        tx.rcpt_to.push(address.to_string());
        reply::recipient_ok()
    }

    fn data_allowed(&self) -> Result<(), Reply> {
        match &self.transaction {
            None => Err(reply::need_mail()),
            Some(tx) if tx.rcpt_to.is_empty() => Err(reply::need_rcpt()),
            // Bytes received and not yet committed, across sessions, past the cap.
            Some(_)
                if self.shared.spool.inflight_bytes()
                    >= self.shared.config.server.max_inflight_bytes =>
            {
                tracing::warn!(peer = %self.peer, inflight = self.shared.spool.inflight_bytes(), "DATA deferred: max_inflight_bytes reached");
                Err(reply::inflight_full())
            }
            Some(_) => Ok(()),
        }
    }

    /// Read the message body up to the final dot, streaming it to a spool draft so that
    /// memory does not grow with its size; past the size limit (or when the draft cannot
    /// be written) keep draining, so the client hears our answer, but keep nothing.
    async fn receive_data(&mut self) -> std::io::Result<DataOutcome> {
        let max = self.shared.config.server.max_message_size;
        let mut receiver = DataReceiver::new();
        let mut chunk: Vec<u8> = Vec::with_capacity(READ_CHUNK + 1024);
        let mut draft = self.shared.spool.draft().await;
        let mut discard: Option<DummyDataReceiver> = None;
        let mut too_big = false;
        let started = Instant::now();
        let mut received = self.rbuf.len();
        loop {
            let mut iter = self.rbuf.iter();
            let done = match discard.as_mut() {
                Some(d) => d.ingest(&mut iter),
                None => receiver.ingest(&mut iter, &mut chunk),
            };
            let consumed = self.rbuf.len() - iter.as_slice().len();
            // What follows the dot (a pipelined QUIT) stays; the buffer keeps its room.
            self.rbuf.drain(..consumed);
            if discard.is_none() {
                let stored = match draft.as_mut() {
                    Ok(d) if d.len() + chunk.len() <= max => d.write(&chunk).await,
                    Ok(_) => {
                        too_big = true;
                        Ok(())
                    }
                    Err(_) => Ok(()),
                };
                chunk.clear();
                if let Err(e) = stored {
                    draft = Err(e);
                }
                if too_big || draft.is_err() {
                    discard = Some(DummyDataReceiver::new_data(&receiver));
                }
            }
            if done {
                return Ok(match draft {
                    _ if too_big => DataOutcome::TooBig,
                    Ok(d) => DataOutcome::Complete(Box::new(d)),
                    Err(e) => DataOutcome::NotStored(e),
                });
            }
            // A shutdown does not interrupt DATA: the message in flight gets its answer.
            // The deadline grows only with the bytes received (minimum data rate).
            let deadline = self.shared.data_deadline(started, received);
            let before = self.rbuf.len();
            match self.read_until(deadline).await? {
                Ok(()) => received += self.rbuf.len() - before,
                Err(ReadEnd::Closed) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Err(ReadEnd::TimedOut) => {
                    tracing::info!(peer = %self.peer, "timeout during DATA, nothing stored");
                    let r = reply::timeout(self.host());
                    self.reply(r);
                    self.flush().await?;
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
            }
        }
    }

    async fn finish_data(&mut self, outcome: DataOutcome) -> Next {
        let Some(tx) = self.transaction.take() else {
            return self.refuse(reply::need_mail());
        };
        let draft = match outcome {
            DataOutcome::TooBig => {
                return self.refuse(reply::message_too_big());
            }
            DataOutcome::NotStored(e) => {
                tracing::error!(peer = %self.peer, error = %e, "refused: cannot write the message");
                return self.answer(reply::store_failed());
            }
            DataOutcome::Complete(draft) => draft,
        };
        let envelope = Envelope {
            peer: self.peer.to_string(),
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt_to,
            tls: self.tls,
            auth_user: self.auth_user.clone(),
            received_at: crate::store::unix_now(),
        };
        let head = self.received_header(&envelope).into_bytes();
        let size = head.len() + draft.len();
        let (from, rcpts) = (envelope.mail_from.clone(), envelope.rcpt_to.join(","));
        let message_id = super::header::message_id(draft.head());
        match self
            .shared
            .spool
            .store_draft(envelope, head, *draft, message_id)
            .await
        {
            Ok(id) => {
                tracing::info!(spool_id = id, peer = %self.peer, from = %from, rcpt = %rcpts, size, "accepted");
                crate::http::metrics::metrics().smtp_accepted();
                self.answer(reply::queued(id))
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, from = %from, error = %e, "refused: store failed");
                self.answer(reply::store_failed())
            }
        }
    }

    fn received_header(&self, env: &Envelope) -> String {
        let protocol = match (self.esmtp, self.tls, self.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        let helo: String = env.helo.chars().filter(|c| !c.is_control()).collect();
        let rcpt = match env.rcpt_to.as_slice() {
            [one] => format!("\r\n\tfor <{one}>"),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ([{ip}])\r\n\tby {host} (alertgate) with {protocol}{rcpt};\r\n\t{date}\r\n",
            ip = self.peer.ip(),
            host = self.host(),
        )
    }

    fn starttls_allowed(&mut self) -> Next {
        if self.tls {
            return self.refuse(reply::already_tls());
        }
        if self.shared.tls.is_none() {
            return self.refuse(reply::not_implemented());
        }
        self.reply(reply::tls_ready());
        Next::StartTls
    }

    async fn start_tls(&mut self) -> std::io::Result<()> {
        let Some(acceptor) = self.shared.tls.clone() else {
            return Err(std::io::ErrorKind::Unsupported.into());
        };
        // RFC 3207: anything the client pipelined after STARTTLS is not to be trusted.
        self.rbuf.clear();
        let plain = std::mem::replace(&mut self.io, Box::new(tokio::io::empty()));
        match acceptor.accept(plain).await {
            Ok(stream) => {
                self.io = Box::new(stream);
                self.tls = true;
                self.helo = None;
                self.esmtp = false;
                self.transaction = None;
                self.auth_user = None;
                Ok(())
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, error = %e, "TLS handshake failed");
                Err(e)
            }
        }
    }

    /// Start AUTH; None when a challenge (334) was queued and the answer comes next line.
    fn auth(&mut self, mechanism: u64, initial: &str) -> Option<Reply> {
        if !self.auth_configured() {
            return Some(reply::auth_not_enabled());
        }
        if self.shared.auth_throttle.blocked(self.peer.ip()) {
            return Some(reply::too_many_auth_failures());
        }
        if !self.tls && !self.plaintext_auth_allowed() {
            return Some(if self.shared.tls.is_some() {
                reply::encryption_required()
            } else {
                reply::must_starttls_first()
            });
        }
        if self.helo.is_none() {
            return Some(reply::need_helo());
        }
        if self.auth_user.is_some() {
            return Some(reply::already_authenticated());
        }
        if self.transaction.is_some() {
            return Some(reply::nested_mail());
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.challenge("", AuthStep::PlainResponse);
                None
            }
            smtp_proto::AUTH_PLAIN => Some(self.check_plain(initial.as_bytes())),
            smtp_proto::AUTH_LOGIN if initial.is_empty() => {
                self.challenge("Username:", AuthStep::LoginUser);
                None
            }
            smtp_proto::AUTH_LOGIN => match decode_b64(initial.as_bytes()) {
                Some(user) => {
                    self.challenge("Password:", AuthStep::LoginPassword { user });
                    None
                }
                None => Some(reply::auth_bad_base64()),
            },
            _ => Some(reply::auth_mechanism_unsupported()),
        }
    }

    fn challenge(&mut self, prompt: &str, step: AuthStep) {
        let encoded = base64::engine::general_purpose::STANDARD.encode(prompt);
        self.wbuf
            .extend_from_slice(format!("334 {encoded}\r\n").as_bytes());
        self.auth_step = Some(step);
    }

    /// The client's answer to a 334 challenge; None when another challenge was queued.
    fn continue_auth(&mut self, step: AuthStep, line: &[u8]) -> Option<Reply> {
        if line == b"*" {
            return Some(reply::auth_aborted());
        }
        match step {
            AuthStep::PlainResponse => Some(self.check_plain(line)),
            AuthStep::LoginUser => match decode_b64(line) {
                Some(user) => {
                    self.challenge("Password:", AuthStep::LoginPassword { user });
                    None
                }
                None => Some(reply::auth_bad_base64()),
            },
            AuthStep::LoginPassword { user } => match decode_b64(line) {
                Some(password) => Some(self.check_credentials(&user, &password)),
                None => Some(reply::auth_bad_base64()),
            },
        }
    }

    fn check_plain(&mut self, b64: &[u8]) -> Reply {
        let Some(decoded) = base64::engine::general_purpose::STANDARD
            .decode(b64.trim_ascii())
            .ok()
        else {
            return reply::auth_bad_base64();
        };
        // authzid NUL authcid NUL passwd
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        let [_, user, password] = parts.as_slice() else {
            return reply::auth_failed();
        };
        let (Ok(user), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(password))
        else {
            return reply::auth_failed();
        };
        self.check_credentials(user, password)
    }

    fn check_credentials(&mut self, user: &str, password: &str) -> Reply {
        let ok = self
            .shared
            .config
            .server
            .auth
            .users
            .iter()
            .any(|u| u.username == user && super::auth::verify(u, password));
        if ok {
            tracing::info!(peer = %self.peer, user, "authenticated");
            self.auth_user = Some(user.to_string());
            reply::auth_ok()
        } else {
            tracing::info!(peer = %self.peer, user, "authentication failed");
            self.throttle_failure()
        }
    }

    /// A failed AUTH: answered at once, after a delay, or with 421 (see `auth::AuthThrottle`).
    fn throttle_failure(&mut self) -> Reply {
        match self.shared.auth_throttle.failure(self.peer.ip()) {
            super::auth::Throttle::Answer => reply::auth_failed(),
            super::auth::Throttle::Delay(d) => {
                self.reply_delay = Some(d);
                reply::auth_failed()
            }
            super::auth::Throttle::Refuse => {
                tracing::warn!(peer = %self.peer, "too many failed AUTH attempts, closing");
                reply::too_many_auth_failures()
            }
        }
    }

    /// Sessions on the implicit-TLS listener start encrypted.
    pub fn with_tls(mut self) -> Session {
        self.tls = true;
        self
    }
}

/// The `SIZE=` parameter of a MAIL command line, saturating: a number of any length
/// that does not fit in 64 bits is `u64::MAX`, never wrapped.
fn declared_size(line: &[u8]) -> Option<u64> {
    let close = line.iter().position(|b| *b == b'>')?;
    line[close + 1..]
        .split(|b| b.is_ascii_whitespace())
        .find_map(|param| {
            let (key, value) = param.split_at(param.iter().position(|b| *b == b'=')?);
            key.eq_ignore_ascii_case(b"SIZE").then_some(&value[1..])
        })
        .filter(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
        .map(|digits| {
            digits.iter().fold(0u64, |n, d| {
                n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            })
        })
}

fn decode_b64(b: &[u8]) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b.trim_ascii())
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn proto_error_reply(e: ProtoError) -> Reply {
    match e {
        ProtoError::UnknownCommand => reply::unknown_command(),
        ProtoError::InvalidSenderAddress => reply::bad_sender_address(),
        ProtoError::InvalidRecipientAddress => reply::bad_recipient_address(),
        ProtoError::SyntaxError { syntax } => reply::syntax(syntax),
        ProtoError::InvalidParameter { param } => {
            reply::syntax(&format!("invalid value for {param}"))
        }
        ProtoError::UnsupportedParameter { param } => reply::unsupported_parameter(&param),
        ProtoError::ResponseTooLong => reply::line_too_long(),
        ProtoError::NeedsMoreData { .. } | ProtoError::InvalidResponse { .. } => {
            reply::unknown_command()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::auth::constant_time_eq;

    #[test]
    fn protocol_errors_map_to_precise_replies() {
        assert_eq!(proto_error_reply(ProtoError::UnknownCommand).code, 500);
        assert_eq!(
            proto_error_reply(ProtoError::InvalidSenderAddress).code,
            501
        );
        assert_eq!(
            proto_error_reply(ProtoError::UnsupportedParameter { param: "X".into() }).code,
            555
        );
    }

    #[test]
    fn declared_size_saturates_instead_of_wrapping() {
        assert_eq!(declared_size(b"MAIL FROM:<a@b> SIZE=100"), Some(100));
        assert_eq!(
            declared_size(b"MAIL FROM:<a@b> body=8bitmime size=7"),
            Some(7)
        );
        assert_eq!(
            declared_size(b"MAIL FROM:<a@b> SIZE=99999999999999999999999"),
            Some(u64::MAX)
        );
        assert_eq!(declared_size(b"MAIL FROM:<a@b>"), None);
        assert_eq!(declared_size(b"MAIL FROM:<a@b> SIZE="), None);
        assert_eq!(declared_size(b"MAIL FROM:<a=b@c> X=1"), None);
    }

    #[test]
    fn plain_credentials_decode_and_compare() {
        assert_eq!(decode_b64(b" dXNlcg== "), Some("user".into()));
        assert!(decode_b64(b"!!!").is_none());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
