//! A deliberately plain SMTP client for tests: it writes exactly the bytes a test gives it
//! and reads replies (multi-line aware), so tests see the server's real wire behaviour.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub struct RawClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// One reply: code and its text lines (without the code).
#[derive(Debug, Clone)]
pub struct ServerReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl ServerReply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::from_stream(stream)
    }

    /// A client on an already connected socket (e.g. bound to another source address).
    pub fn from_stream(stream: TcpStream) -> RawClient {
        // The body and the final dot are two writes: without this, Nagle holds the dot
        // until the server's delayed ACK (40 ms a mail).
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        RawClient {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Read one reply; None when the server closed the connection.
    pub async fn reply(&mut self) -> Option<ServerReply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
                .await
                .expect("reply timed out")
                .ok()?;
            if n == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code: u16 = line.get(..3)?.parse().ok()?;
            lines.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Some(ServerReply { code, lines });
            }
        }
    }

    /// Send a command line and read its reply.
    pub async fn cmd(&mut self, line: &str) -> ServerReply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply()
            .await
            .unwrap_or_else(|| panic!("connection closed after {line:?}"))
    }

    /// True when the server has closed the connection (EOF).
    pub async fn closed(&mut self) -> bool {
        let mut line = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// A whole transaction; returns the reply to the final dot.
    pub async fn send_mail(&mut self, from: &str, to: &str, body: &[u8]) -> ServerReply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        if r.code != 250 {
            return r;
        }
        let r = self.cmd(&format!("RCPT TO:<{to}>")).await;
        if r.code != 250 {
            return r;
        }
        let r = self.cmd("DATA").await;
        if r.code != 354 {
            return r;
        }
        self.send(&dot_stuff(body)).await;
        self.send(b".\r\n").await;
        self.reply().await.expect("reply to final dot")
    }
}

/// Dot-stuff a CRLF message body and make sure it ends with CRLF.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}
