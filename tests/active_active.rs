//! Acceptance of issue 13's active-active pair: two gateways on one PostgreSQL (the
//! tests' private instance), a GLPI double behind both. Mails sent alternately to either
//! make one ticket per incident with every update threaded and nothing twice; a gateway
//! SIGKILLed in the middle of a burst loses nothing its 250 promised and its claims
//! return to the survivor within a lease period; PostgreSQL restarted under load costs
//! 451s while it is down and nothing else.

mod support;

use alertgate::store::outbound::OutboundState;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::alerts::centreon_service;
use support::gateway::{config_text, TestGateway};
use support::glpi::{GlpiDouble, Ticket};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const FEEDBACK: &str = "alertgate@example.test";
/// Short leases, so a dead gateway's work returns quickly.
const LEASE_SECS: u64 = 3;

/// `[store]` keys putting a gateway on the shared database `url`, plus the feedback
/// section both gateways of a pair use (GLPI's notifications teach the ticket ids); no
/// storm digest (these tests are about sharing, not storms).
fn shared_sections(url: &str) -> String {
    format!(
        "[store]\nurl = \"{url}\"\nlease_secs = {LEASE_SECS}\n\
         [feedback]\ncollector_interval_secs = 2\ncollector_batch = 10\nmin_mail_interval = 0\n\
         [correlation]\nmax_new_incidents_per_minute = 100000\n"
    )
}

async fn pair_member(glpi: &GlpiDouble, url: &str) -> TestGateway {
    TestGateway::with_relay(
        glpi.smtp_port(),
        &format!("feedback_addresses = [\"{FEEDBACK}\"]"),
        &shared_sections(url),
    )
    .await
}

/// One SMTP transaction on a new connection; the reply code to the final dot, or `None`
/// when the gateway could not be reached or went away (a client then tries the other).
async fn offer(addr: SocketAddr, raw: &[u8]) -> Option<u16> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        expect(&mut r, 220).await?;
        for (line, code) in [
            ("EHLO monitor.test\r\n", 250),
            ("MAIL FROM:<centreon@example.test>\r\n", 250),
            ("RCPT TO:<glpi@example.test>\r\n", 250),
            ("DATA\r\n", 354),
        ] {
            w.write_all(line.as_bytes()).await.ok()?;
            let got = read_code(&mut r).await?;
            if got != code {
                return Some(got);
            }
        }
        w.write_all(&support::client::dot_stuff(raw)).await.ok()?;
        w.write_all(b".\r\n").await.ok()?;
        let code = read_code(&mut r).await?;
        let _ = w.write_all(b"QUIT\r\n").await;
        Some(code)
    };
    tokio::time::timeout(Duration::from_secs(60), attempt)
        .await
        .ok()
        .flatten()
}

async fn expect(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, code: u16) -> Option<()> {
    (read_code(r).await? == code).then_some(())
}

async fn read_code(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<u16> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3)?.parse().ok();
        }
    }
}

/// Offers `raw` to `first`, then to `second` while the answer is not a 250 (a client
/// retrying on the other MX); gives up after `limit`.
async fn deliver_to_either(first: SocketAddr, second: SocketAddr, raw: &[u8], limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut targets = [first, second].into_iter().cycle();
    while Instant::now() < deadline {
        let addr = targets.next().unwrap_or(first);
        if offer(addr, raw).await == Some(250) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no gateway accepted a mail within {limit:?}");
}

/// The mails of `incidents` incidents (`srv-N/check`), `steps` per incident: problems
/// of rising severity, then the recovery; in rounds, so incidents interleave.
fn incident_mails(incidents: usize, steps: usize) -> Vec<(usize, Vec<u8>)> {
    let mut mails = Vec::new();
    for step in 0..steps {
        for i in 0..incidents {
            let (kind, state, output) = if step + 1 == steps {
                ("RECOVERY", "OK", "fine".to_string())
            } else if step % 2 == 0 {
                ("PROBLEM", "WARNING", format!("slow {step}"))
            } else {
                ("PROBLEM", "CRITICAL", format!("timeout {step}"))
            };
            let host = format!("srv-{i:03}");
            mails.push((
                i,
                centreon_service(kind, &host, "http", state, &format!("http {output}")),
            ));
        }
    }
    mails
}

fn tag_of(title: &str) -> Option<String> {
    let start = title.find("[ALERT-")? + 1;
    title.get(start..start + 14).map(str::to_string)
}

/// Waits until `done` holds (checked every 200 ms); false on timeout.
async fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done()
}

/// One ticket per incident, each follow-up threaded into its own incident's ticket, no
/// mail of ours twice in GLPI, and every outbound mail sent once.
fn assert_one_truth(glpi: &GlpiDouble, gw: &TestGateway, incidents: usize) {
    let tickets = glpi.tickets();
    assert!(
        glpi.refused().is_empty(),
        "GLPI refused: {:#?}",
        glpi.refused()
    );
    let mut tags = HashSet::new();
    for t in &tickets {
        let tag = tag_of(&t.title).unwrap_or_else(|| panic!("untagged ticket {}", t.title));
        assert!(tags.insert(tag.clone()), "two tickets for {tag}");
        for f in &t.followups {
            assert!(
                f.subject.contains(&tag),
                "ticket {} got another incident's follow-up: {}",
                t.id,
                f.subject
            );
        }
    }
    assert_eq!(
        tickets.len(),
        incidents,
        "{:#?}",
        tickets.iter().map(|t| &t.title).collect::<Vec<_>>()
    );
    let mut seen = HashSet::new();
    for id in tickets.iter().flat_map(message_ids) {
        assert!(seen.insert(id.clone()), "{id} reached GLPI twice");
    }
    let rows = gw.outbound_rows();
    let sent = rows
        .iter()
        .filter(|r| r.state == OutboundState::Sent)
        .count();
    assert_eq!(
        sent,
        rows.len(),
        "every outbound mail is sent: {:?}",
        rows.iter().map(|r| r.state).collect::<Vec<_>>()
    );
    assert_eq!(
        glpi.mails_received(),
        sent,
        "GLPI received each outbound mail once"
    );
}

fn message_ids(t: &Ticket) -> Vec<String> {
    t.message_id
        .iter()
        .cloned()
        .chain(t.followups.iter().filter_map(|f| f.message_id.clone()))
        .collect()
}

fn complete(t: &Ticket) -> bool {
    t.followups.iter().any(|f| f.content.contains("RECOVERED"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_alternating_make_one_ticket_per_incident() {
    const INCIDENTS: usize = 200;
    let url = support::postgres::shared().create_database();
    let glpi = GlpiDouble::start().await;
    let a = pair_member(&glpi, &url).await;
    let b = pair_member(&glpi, &url).await;
    glpi.set_notify_target(b.addr, FEEDBACK);

    for (n, (_, mail)) in incident_mails(INCIDENTS, 3).into_iter().enumerate() {
        let gw = if n % 2 == 0 { &a } else { &b };
        gw.send(&mail).await;
    }
    let done = eventually(Duration::from_secs(180), || {
        let tickets = glpi.tickets();
        tickets.len() >= INCIDENTS && tickets.iter().all(complete) && glpi.mailbox_len() == 0
    })
    .await;
    let tickets = glpi.tickets();
    assert!(
        done,
        "{} tickets, {} complete, {} mails in GLPI's mailbox",
        tickets.len(),
        tickets.iter().filter(|t| complete(t)).count(),
        glpi.mailbox_len()
    );
    let spooled = a.spool_rows();
    assert!(spooled.len() >= INCIDENTS * 3);
    assert!(spooled
        .iter()
        .all(|r| r.state != alertgate::store::SpoolState::New));
    assert_one_truth(&glpi, &a, INCIDENTS);
    a.shutdown().await;
    b.shutdown().await;
}

/// The real binary on a fixed port, on the shared database.
fn binary_member(
    dir: &std::path::Path,
    relay_port: u16,
    url: &str,
) -> (std::path::PathBuf, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let relay = format!(
        "[relay]\nhost = \"127.0.0.1\"\nport = {relay_port}\ntls = \"none\"\n[relay.retry]\ninitial_backoff_secs = 1\nmax_backoff_secs = 2\n",
    );
    let text = config_text(
        dir,
        &format!("feedback_addresses = [\"{FEEDBACK}\"]"),
        &format!("{relay}\n{}", shared_sections(url)),
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let cfg = dir.join("alertgate.toml");
    std::fs::write(&cfg, text).expect("write config");
    (cfg, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn start_binary(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_alertgate"))
        .args(["serve", "-c"])
        .arg(config)
        .env("ALERTGATE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(config.with_extension("log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("start alertgate")
}

async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("alertgate did not start listening on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_mid_burst_loses_nothing_and_its_claims_return() {
    const INCIDENTS: usize = 200;
    const STEPS: usize = 10;
    const CLIENTS: usize = 10;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("alertgate=warn")
        .with_test_writer()
        .try_init();
    let url = support::postgres::shared().create_database();
    let glpi = GlpiDouble::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The victim's relay accepts connections and never answers: the victim is in the
    // middle of delivering, holding leases, when it is killed.
    let tarpit = tarpit().await;
    let (cfg, victim) = binary_member(dir.path(), tarpit, &url);
    let mut child = start_binary(&cfg);
    wait_listening(victim).await;
    let survivor = pair_member(&glpi, &url).await;
    glpi.set_notify_target(survivor.addr, FEEDBACK);

    // Each client owns some incidents and sends their mails in order, alternating the
    // gateways mail by mail; a mail refused or cut off goes to the other one.
    let mut per_client: Vec<Vec<Vec<u8>>> = vec![Vec::new(); CLIENTS];
    for (incident, mail) in incident_mails(INCIDENTS, STEPS) {
        per_client[incident % CLIENTS].push(mail);
    }
    let sent = Arc::new(Mutex::new(0usize));
    let survivor_addr = survivor.addr;
    let clients: Vec<_> = per_client
        .into_iter()
        .map(|mails| {
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                for (n, mail) in mails.iter().enumerate() {
                    let (first, second) = if n % 2 == 0 {
                        (victim, survivor_addr)
                    } else {
                        (survivor_addr, victim)
                    };
                    deliver_to_either(first, second, mail, Duration::from_secs(120)).await;
                    *sent.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                }
            })
        })
        .collect();

    let total = INCIDENTS * STEPS;
    let deadline = Instant::now() + Duration::from_secs(120);
    while *sent.lock().unwrap_or_else(|p| p.into_inner()) < total / 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let victim_pid = child.id();
    child.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    let _ = child.wait();
    let database = url.rsplit('/').next().unwrap_or_default().to_string();
    let victims_leases = leased_by(&database, victim_pid);
    assert!(
        !victims_leases.is_empty(),
        "the victim (pid {victim_pid}) held no lease when killed: the takeover is not shown; {}\n{}",
        support::postgres::shared()
            .psql_in(&database, "SELECT lease_owner, state, count(*) FROM outbound GROUP BY 1, 2")
            .unwrap_or_else(|e| e),
        std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default()
    );
    let at_kill = *sent.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        at_kill < total * 9 / 10,
        "the kill came after the burst; it proves nothing"
    );
    // The survivor takes over what the victim held within about one lease period (the
    // lease, plus the survivor's retry backoff of at most 2 s and polling).
    let taken_over = eventually(Duration::from_secs(LEASE_SECS + 15), || {
        leased_by(&database, victim_pid).is_empty()
    })
    .await;
    assert!(
        taken_over,
        "the victim's leases were not taken over within {}s: {:?} (held at the kill: {victims_leases:?})",
        LEASE_SECS + 15,
        leased_by(&database, victim_pid)
    );
    eprintln!(
        "the victim held {} leases at the kill; taken over after {:?}",
        victims_leases.len(),
        killed_at.elapsed()
    );
    for c in clients {
        c.await.expect("client");
    }

    // Every spooled mail is processed (the victim's uncommitted claims went back).
    let processed = eventually(Duration::from_secs(120), || {
        survivor
            .spool_rows()
            .iter()
            .all(|r| r.state != alertgate::store::SpoolState::New)
    })
    .await;
    assert!(
        processed,
        "spooled mails left unprocessed after the kill: {} new\n{}",
        survivor
            .spool_rows()
            .iter()
            .filter(|r| r.state == alertgate::store::SpoolState::New)
            .count(),
        support::postgres::shared()
            .psql(
                "SELECT pid, datname, state, wait_event_type, wait_event, left(query, 100), now() - xact_start \
                 FROM pg_stat_activity WHERE datname IS NOT NULL"
            )
            .unwrap_or_else(|e| e)
    );
    let done = eventually(Duration::from_secs(240), || {
        let tickets = glpi.tickets();
        tickets.len() >= INCIDENTS
            && tickets.iter().all(complete)
            && glpi.mailbox_len() == 0
            && survivor
                .outbound_rows()
                .iter()
                .all(|r| r.state == OutboundState::Sent)
    })
    .await;
    let tickets = glpi.tickets();
    assert!(
        done,
        "{} tickets, {} complete, {} mails in GLPI's mailbox, outbound: {:?}\n{}",
        tickets.len(),
        tickets.iter().filter(|t| complete(t)).count(),
        glpi.mailbox_len(),
        count_states(&survivor),
        explain_missing(&glpi, &survivor)
    );
    // Every Message-ID a gateway answered 250 for is in the shared spool once processed
    // (a mail both took, after a cut-off reply, is recognised as a duplicate).
    let rows = survivor.spool_rows();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        if let Some(id) = &r.message_id {
            *by_id.entry(id.clone()).or_default() += 1;
        }
    }
    let alert_mails = rows
        .iter()
        .filter(|r| r.message_id.as_deref().is_some_and(|m| m.contains("svc.")))
        .count();
    assert!(
        alert_mails >= total,
        "{alert_mails} alert mails spooled of {total}"
    );
    assert_one_truth(&glpi, &survivor, INCIDENTS);
    eprintln!(
        "killed after {at_kill} of {total} mails; all delivered {:?} after the kill",
        killed_at.elapsed()
    );
    survivor.shutdown().await;
}

/// A relay that accepts connections and never says a word (the connections stay open).
async fn tarpit() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind tarpit");
    let port = listener.local_addr().expect("tarpit addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    port
}

/// The outbound mails and GLPI actions still leased by the gateway process `pid` (a
/// lease owner is `host:pid:nonce`).
fn leased_by(database: &str, pid: u32) -> Vec<String> {
    let sql = format!(
        "SELECT 'outbound ' || id FROM outbound WHERE lease_owner LIKE '%:{pid}:%' AND state = 'queued' \
         UNION ALL SELECT 'glpi_action ' || id FROM glpi_actions WHERE lease_owner LIKE '%:{pid}:%' AND state = 'pending'"
    );
    support::postgres::shared()
        .psql_in(database, &sql)
        .unwrap_or_else(|e| panic!("psql: {e}"))
        .lines()
        .map(str::to_string)
        .collect()
}

/// For a failing run: a few incidents without a ticket, with their outbound mails.
fn explain_missing(glpi: &GlpiDouble, gw: &TestGateway) -> String {
    let ticketed: HashSet<String> = glpi
        .tickets()
        .iter()
        .filter_map(|t| tag_of(&t.title))
        .collect();
    let incidents = gw.incidents();
    let missing: Vec<_> = incidents
        .iter()
        .filter(|i| !ticketed.contains(&i.tag))
        .collect();
    let rows = gw.outbound_rows();
    let mut out = format!(
        "{} of {} incidents without a ticket\n",
        missing.len(),
        incidents.len()
    );
    for incident in missing.iter().take(3) {
        out.push_str(&format!("{incident:?}\n"));
        for r in rows.iter().filter(|r| r.order_key == incident.tag) {
            out.push_str(&format!(
                "   outbound {} {:?} attempts {} {:?} {}\n",
                r.id, r.state, r.attempts, r.last_error, r.subject
            ));
        }
    }
    out
}

fn count_states(gw: &TestGateway) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in gw.outbound_rows() {
        *counts.entry(format!("{:?}", r.state)).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarted_under_load_costs_451s_and_nothing_else() {
    // Its own server: restarting the shared one would break the other tests.
    let server = support::postgres::PgServer::start_new().expect("private PostgreSQL");
    let url = server.url();
    let glpi = GlpiDouble::start().await;
    let a = pair_member(&glpi, &url).await;
    let b = pair_member(&glpi, &url).await;
    glpi.set_notify_target(b.addr, FEEDBACK);

    let mails = incident_mails(40, 3);
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut restarted = false;
    for (n, (_, mail)) in mails.iter().enumerate() {
        if n == mails.len() / 3 {
            server.stop();
            // While it is down: a 451, not a 250 and not a hang.
            for gw in [&a, &b] {
                let code = offer(gw.addr, mail).await;
                assert_eq!(code, Some(451), "while PostgreSQL is down");
                refused += 1;
            }
            server.start().expect("PostgreSQL starts again");
            restarted = true;
        }
        let gw = if n % 2 == 0 { &a } else { &b };
        // The first commits after the restart may still find a lost connection.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match offer(gw.addr, mail).await {
                Some(250) => break,
                Some(451) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => panic!("mail {n}: {other:?} after the restart"),
            }
        }
        accepted.push(n);
    }
    assert!(restarted && refused == 2);
    let done = eventually(Duration::from_secs(120), || {
        let tickets = glpi.tickets();
        tickets.len() >= 40 && tickets.iter().all(complete) && glpi.mailbox_len() == 0
    })
    .await;
    assert!(
        done,
        "{} tickets after the restart: {:?}",
        glpi.tickets().len(),
        count_states(&a)
    );
    assert_eq!(accepted.len(), mails.len());
    assert_one_truth(&glpi, &a, 40);
    a.shutdown().await;
    b.shutdown().await;
}

/// A client retrying on the other MX hands both gateways the same mail: the pair
/// recognises the second copy by Message-ID and content (whichever gateway took it, and
/// however close together the two arrive) and GLPI sees one mail, one ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_mail_given_to_both_gateways_is_processed_once() {
    const INCIDENTS: usize = 40;
    let url = support::postgres::shared().create_database();
    let glpi = GlpiDouble::start().await;
    let a = pair_member(&glpi, &url).await;
    let b = pair_member(&glpi, &url).await;
    glpi.set_notify_target(b.addr, FEEDBACK);

    for (n, (_, mail)) in incident_mails(INCIDENTS, 2).into_iter().enumerate() {
        // Alternate which gateway gets the copy first; send both copies concurrently.
        let (first, second) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        tokio::join!(first.send(&mail), second.send(&mail));
    }
    let expected_mails = INCIDENTS * 2;
    let done = eventually(Duration::from_secs(120), || {
        let tickets = glpi.tickets();
        tickets.len() >= INCIDENTS && tickets.iter().all(complete) && glpi.mailbox_len() == 0
    })
    .await;
    assert!(done, "{} tickets", glpi.tickets().len());
    // GLPI's notifications (feedback) are spooled too; the alerts are the rest.
    let spooled: Vec<_> = a
        .spool_rows()
        .into_iter()
        .filter(|r| r.state != alertgate::store::SpoolState::Feedback)
        .collect();
    assert_eq!(spooled.len(), expected_mails * 2, "both copies are spooled");
    let duplicates = spooled
        .iter()
        .filter(|r| {
            r.note
                .as_deref()
                .is_some_and(|n| n.starts_with("duplicate of spool id"))
        })
        .count();
    assert_eq!(
        duplicates, expected_mails,
        "each second copy is a duplicate"
    );
    assert_one_truth(&glpi, &a, INCIDENTS);
    for t in glpi.tickets() {
        assert_eq!(
            t.followups.len(),
            1,
            "ticket {} has only its recovery: {:?}",
            t.title,
            t.followups.iter().map(|f| &f.subject).collect::<Vec<_>>()
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
