//! Issue 13, memory bounded by work: the correlation engine keeps a small cache of open
//! incidents and reads the others from the store when an alert needs them. End to end
//! over SMTP: with room for one incident, alerts for evicted incidents still thread onto
//! them, fold into their host and recover them; and a change another gateway committed
//! (seen by the store's commit generation) is never hidden by a stale cached copy.

mod support;

use alertgate::correlate::{EndReason, Ending};
use alertgate::store::incidents;
use support::alerts::{centreon_host, centreon_service};
use support::gateway::TestGateway;

const SECTIONS: &str = "[feedback]\nmin_mail_interval_secs = 0\n[correlation]\nincident_cache = 1\nmax_new_incidents_per_minute = 1000\n";

/// (order key, subject) of every outbound mail, in queue order.
fn mails(gw: &TestGateway) -> Vec<(String, String)> {
    gw.outbound()
        .into_iter()
        .map(|(_, key, subject)| (key, subject))
        .collect()
}

/// The thread tag of the one mail whose subject contains `what`.
fn tag_of(mails: &[(String, String)], what: &str) -> String {
    let found: Vec<_> = mails.iter().filter(|(_, s)| s.contains(what)).collect();
    assert_eq!(found.len(), 1, "one mail with {what:?}: {mails:#?}");
    found[0].0.clone()
}

#[tokio::test]
async fn alerts_for_evicted_incidents_thread_fold_and_recover_as_if_cached() {
    let gw = TestGateway::start_with("", SECTIONS).await;
    gw.send(&centreon_host("PROBLEM", "db-01", "DOWN", "PING CRITICAL"))
        .await;
    for host in ["web-01", "web-02", "web-03"] {
        gw.send(&centreon_service(
            "PROBLEM", host, "disk", "WARNING", "disk 81%",
        ))
        .await;
    }
    gw.wait_processed().await;
    // db-01 and web-01 were evicted long ago (room for one): both are read back.
    gw.send(&centreon_service(
        "PROBLEM", "web-01", "disk", "CRITICAL", "disk 97%",
    ))
    .await;
    gw.send(&centreon_service(
        "PROBLEM", "db-01", "mysql", "CRITICAL", "refused",
    ))
    .await;
    gw.send(&centreon_service(
        "PROBLEM", "web-02", "disk", "WARNING", "disk 82%",
    ))
    .await;
    gw.send(&centreon_service(
        "RECOVERY", "web-03", "disk", "OK", "disk 40%",
    ))
    .await;
    gw.send(&centreon_host("RECOVERY", "db-01", "UP", "PING OK"))
        .await;
    gw.wait_processed().await;

    let all = mails(&gw);
    let web1 = tag_of(&all, "WARNING web-01 / disk");
    let web3 = tag_of(&all, "WARNING web-03 / disk");
    let db = tag_of(&all, "DOWN db-01");
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys.len(),
        4 + 3,
        "4 opens, web-01's update, web-03's and db-01's recoveries: {all:#?}"
    );
    assert_eq!(
        keys.iter().filter(|k| **k == web1).count(),
        2,
        "web-01's update threads onto it"
    );
    assert_eq!(
        keys.iter().filter(|k| **k == web3).count(),
        2,
        "web-03 recovers its incident"
    );
    assert_eq!(
        keys.iter().filter(|k| **k == db).count(),
        2,
        "db-01's recovery"
    );
    // mysql folded into the evicted host incident: no incident of its own, listed in the recovery.
    assert!(!all.iter().any(|(_, s)| s.contains("mysql")), "{all:#?}");
    let mut store = gw.db();
    assert_eq!(
        incidents::open_count(&mut store).unwrap(),
        2,
        "web-01 and web-02 stay open"
    );
    assert_eq!(
        incidents::load(&mut store, true).unwrap().len(),
        4,
        "no incident twice"
    );
    let host = incidents::by_tag(&mut store, &db)
        .unwrap()
        .expect("db-01's incident");
    assert_eq!(
        host.folded
            .iter()
            .map(|f| f.service.as_str())
            .collect::<Vec<_>>(),
        ["mysql"]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_change_committed_by_another_gateway_is_read_not_the_cached_copy() {
    // Room for every incident: without the generation check the cached copy would win.
    let gw = TestGateway::start_with("", "[feedback]\nmin_mail_interval_secs = 0\n").await;
    gw.send(&centreon_service(
        "PROBLEM", "app-01", "http", "CRITICAL", "timeout",
    ))
    .await;
    gw.wait_processed().await;
    let first = tag_of(&mails(&gw), "CRITICAL app-01 / http");
    // The other gateway recovered it and committed, as its pipeline does (with the
    // generation bumped); this gateway's pipeline is idle, so the write lock is free.
    {
        let mut store = gw.db();
        let mut tx = store.transaction().unwrap();
        let mut incident = incidents::by_tag(&mut tx, &first)
            .unwrap()
            .expect("incident");
        incident.ended = Some(Ending {
            at: incident.last_seen,
            reason: EndReason::Recovered,
        });
        incidents::save(&mut tx, &incident, incident.last_seen).unwrap();
        incidents::bump_generation(&mut tx).unwrap();
        tx.commit().unwrap();
    }
    gw.send(&centreon_service(
        "PROBLEM",
        "app-01",
        "http",
        "CRITICAL",
        "timeout again",
    ))
    .await;
    gw.wait_processed().await;
    let all = mails(&gw);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_ne!(
        all[1].0, first,
        "a new incident, not a repeat of the one recovered elsewhere"
    );
    assert!(all[1].1.contains("CRITICAL app-01 / http"), "{all:#?}");
    // The ids the other gateway used are not given out again.
    let ids: Vec<u64> = incidents::load(&mut gw.db(), true)
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, [1, 2]);
    gw.shutdown().await;
}
