//! SMTP load generator for the benchmarks: N sessions send M mails of a given size over
//! persistent connections (one transaction per mail), optionally at a fixed total rate,
//! and report accepted msgs/s and p50/p99/max accept latency (DATA end → 250).
//!
//! `cargo run --release --example loadgen -- --addr 127.0.0.1:2525 --sessions 10 --messages 20000`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    addr: SocketAddr,
    sessions: usize,
    messages: usize,
    size: usize,
    rate: f64,
    /// Alert-shaped mails with a distinct host per mail (or every `repeat`-th distinct).
    repeat: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:2525".parse().map_err(|e| format!("{e}"))?,
        sessions: 10,
        messages: 20_000,
        size: 2048,
        rate: 0.0,
        repeat: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|e| bad(&e))?,
            "--sessions" => args.sessions = value.parse().map_err(|e| bad(&e))?,
            "--messages" => args.messages = value.parse().map_err(|e| bad(&e))?,
            "--size" => args.size = value.parse().map_err(|e| bad(&e))?,
            "--rate" => args.rate = value.parse().map_err(|e| bad(&e))?,
            "--repeat" => args.repeat = value.parse::<usize>().map_err(|e| bad(&e))?.max(1),
            _ => return Err(format!("unknown flag {flag} (expected --addr --sessions --messages --size --rate --repeat)")),
        }
    }
    Ok(args)
}

/// A Centreon-style service mail of about `size` bytes; host distinct per `n / repeat`.
/// Padded with trace headers, as mail that crossed a few relays is, so the alert text
/// stays what a real notification carries.
fn mail(n: usize, size: usize, repeat: usize) -> Vec<u8> {
    let key = n / repeat;
    let host = format!("bench-host-{:04}", key / 40);
    let service = format!("svc-{:02}", key % 40);
    let mut trace = String::new();
    let mut hop = 0;
    while trace.len() + 520 < size {
        hop += 1;
        trace.push_str(&format!(
            "Received: from relay-{hop}.example.test (relay-{hop}.example.test [10.0.{hop}.25])\r\n\
\tby mx-{hop}.example.test (Postfix) with ESMTPS id 4Tv1Xy2ZqCz{n:08}{hop};\r\n\
\tTue, 12 Mar 2024 14:05:02 +0100 (CET)\r\n"
        ));
    }
    let mut m = format!(
        "{trace}To: glpi@example.test\r\nSubject: ** PROBLEM alert - {host}/{service} is CRITICAL **\r\n\
Message-Id: <bench.{n}.{t}@loadgen.test>\r\nFrom: centreon-engine@central.example.test\r\n\r\n\
***** centreon Notification *****\r\n\r\nNotification Type: PROBLEM\r\n\r\nService: {service}\r\n\
Host: {host}\r\nAddress: 10.0.0.5\r\nState: CRITICAL\r\n\r\n\
Date/Time: 2024-03-12 Additional Info : CRITICAL - check failed\r\n",
        t = std::process::id()
    );
    if m.len() < size {
        let pad = size - m.len();
        m = format!(
            "X-Padding: {}\r\n{m}",
            "x".repeat(pad.saturating_sub(13).max(1))
        );
    }
    m.into_bytes()
}

async fn read_code(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<u16> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::ErrorKind::InvalidData.into());
        }
    }
}

async fn session(
    args: Arc<Args>,
    next: Arc<AtomicUsize>,
    start: Instant,
) -> std::io::Result<(Vec<Duration>, usize)> {
    let stream = TcpStream::connect(args.addr).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    read_code(&mut r).await?;
    w.write_all(b"EHLO loadgen.test\r\n").await?;
    read_code(&mut r).await?;
    let mut latencies = Vec::new();
    let mut refused = 0;
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= args.messages {
            break;
        }
        if args.rate > 0.0 {
            let due = start + Duration::from_secs_f64(n as f64 / args.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        // Envelope pipelined in one write, as Postfix does.
        w.write_all(b"MAIL FROM:<bench@loadgen.test>\r\nRCPT TO:<glpi@example.test>\r\nDATA\r\n")
            .await?;
        for _ in 0..3 {
            read_code(&mut r).await?;
        }
        let mut body = mail(n, args.size, args.repeat);
        body.extend_from_slice(b".\r\n");
        let sent = Instant::now();
        w.write_all(&body).await?;
        let code = read_code(&mut r).await?;
        if code == 250 {
            latencies.push(sent.elapsed());
        } else {
            refused += 1;
        }
    }
    w.write_all(b"QUIT\r\n").await?;
    Ok((latencies, refused))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.sessions)
        .map(|_| tokio::spawn(session(args.clone(), next.clone(), start)))
        .collect();
    let mut latencies = Vec::new();
    let mut refused = 0;
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok((l, r))) => {
                latencies.extend(l);
                refused += r;
            }
            _ => errors += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "{{\"accepted\":{},\"refused\":{},\"session_errors\":{},\"secs\":{:.3},\"msgs_per_sec\":{:.1},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        latencies.len(),
        refused,
        errors,
        secs,
        latencies.len() as f64 / secs,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
    );
}
