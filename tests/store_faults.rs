//! Store items of issue 10 (finding 8): a damaged database is refused at start with a
//! clear error, `queue list` shows every readable row around a damaged one, and old
//! processed and sent rows are pruned in the background while incidents stay.

mod support;

use alertgate::config::LoadedConfig;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;
use support::alerts::centreon_service;
use support::gateway::{config_text, raw_sqlite, TestGateway};
use support::relay::RecordingRelay;
use tokio::sync::watch;

fn loaded(dir: &std::path::Path) -> LoadedConfig {
    let text = config_text(dir, "", "");
    let path = dir.join("alertgate.toml");
    std::fs::write(&path, &text).expect("write config");
    LoadedConfig::from_str(&path, &text).expect("valid config")
}

#[tokio::test]
async fn damaged_store_refuses_to_start_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = loaded(dir.path());
    let db = cfg.config.store.path.clone();
    {
        drop(
            alertgate::store::open(&alertgate::store::Location::Sqlite(db.clone())).expect("open"),
        );
        let conn = raw_sqlite(&db);
        for i in 0..200 {
            conn.execute(
                "INSERT INTO spool (received_at, peer, helo, mail_from, rcpt_to, tls, size, raw, state)
                 VALUES (?1, 'p', 'h', 'f', '[]', 0, 600, randomblob(600), 'processed')",
                [i],
            )
            .expect("insert");
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
    }
    // Overwrite a b-tree page in the middle of the file with garbage.
    let len = std::fs::metadata(&db).expect("db file").len();
    let page = 4096;
    let target = (len / page / 2) * page;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .expect("open db file");
    file.seek(SeekFrom::Start(target)).expect("seek");
    file.write_all(&[0xA5; 64]).expect("damage");
    drop(file);

    let (_stop, stop_rx) = watch::channel(false);
    let err = match alertgate::app::start(cfg, stop_rx).await {
        Ok(_) => panic!("a damaged store must not start"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("damaged"), "{err}");
    assert!(err.contains("quick_check"), "{err}");
    assert!(err.contains(&db.display().to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_list_shows_the_rest_around_a_damaged_row() {
    let mut gw = TestGateway::start("").await;
    for host in ["h1", "h2", "h3"] {
        gw.send(&centreon_service(
            "PROBLEM", host, "PING", "CRITICAL", "down",
        ))
        .await;
    }
    gw.wait_processed().await;
    gw.shutdown_keep().await;
    let conn = gw.raw_sqlite();
    conn.execute(
        "UPDATE spool SET received_at = 'garbage' WHERE id = (SELECT MIN(id) + 1 FROM spool)",
        [],
    )
    .expect("damage spool row");
    conn.execute(
        "UPDATE outbound SET attempts = 'x' WHERE id = (SELECT MIN(id) + 1 FROM outbound)",
        [],
    )
    .expect("damage outbound row");
    drop(conn);
    let (ok, out) = gw.queue_cli(&["list"]);
    assert!(ok, "{out}");
    assert_eq!(out.matches("DAMAGED").count(), 2, "{out}");
    for host in ["h1", "h3"] {
        assert!(out.contains(host), "{host} still listed: {out}");
    }
    assert!(out.matches("centreon@example.test").count() >= 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_processed_and_sent_rows_are_pruned_incidents_stay() {
    let relay = RecordingRelay::start().await;
    let gw = TestGateway::with_relay(
        relay.port(),
        "",
        "[store]\nkeep_processed_days = 0\nkeep_sent_days = 0\nprune_interval_secs = 1\n",
    )
    .await;
    gw.send(&centreon_service(
        "PROBLEM", "web-1", "HTTP", "CRITICAL", "down",
    ))
    .await;
    relay.wait_for(1, Duration::from_secs(10)).await;
    let mut left = (1, 1);
    for _ in 0..100 {
        left = (gw.spooled(), gw.outbound_rows().len());
        if left == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, (0, 0), "spool and sent mail pruned");
    assert_eq!(gw.incidents().len(), 1, "incidents' history stays");
    gw.shutdown().await;
}
