//! Counts over a whole store, for `replay`'s report: what GLPI would have received
//! (mails, threads they start, API actions) and when.

use super::db::Db;
use super::StoreError;

/// What a store holds once a mailbox went through the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub incidents: u64,
    pub outbound_mails: u64,
    /// Threads started in GLPI: the first mail of each incident, digest or forward.
    pub threads: u64,
    pub api_actions: u64,
    /// When each outbound mail was queued (the pipeline's clock).
    pub mail_times: Vec<i64>,
    /// When each thread's first mail was queued.
    pub thread_times: Vec<i64>,
}

pub fn tally(db: &mut Db) -> Result<Tally, StoreError> {
    let mut count =
        |sql: &str| -> Result<u64, StoreError> { Ok(db.query_one(sql, &[])?.int(0)? as u64) };
    let incidents = count("SELECT COUNT(*) FROM incidents")?;
    let outbound_mails = count("SELECT COUNT(*) FROM outbound")?;
    let threads = count("SELECT COUNT(DISTINCT order_key) FROM outbound")?;
    let api_actions = count("SELECT COUNT(*) FROM glpi_actions")?;
    let mut times = |sql: &str| -> Result<Vec<i64>, StoreError> {
        db.query(sql, &[])?.iter().map(|r| r.int(0)).collect()
    };
    Ok(Tally {
        incidents,
        outbound_mails,
        threads,
        api_actions,
        mail_times: times("SELECT queued_at FROM outbound ORDER BY id")?,
        thread_times: times(
            "SELECT MIN(queued_at) FROM outbound GROUP BY order_key ORDER BY MIN(queued_at)",
        )?,
    })
}
