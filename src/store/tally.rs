//! Counts over a whole store, for `replay`'s report: what GLPI would have received
//! (mails, threads they start, API actions) and when.

use super::StoreError;
use rusqlite::Connection;

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

pub fn tally(conn: &Connection) -> Result<Tally, StoreError> {
    let count = |sql: &str| -> Result<u64, StoreError> {
        Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
    };
    let times = |sql: &str| -> Result<Vec<i64>, StoreError> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    };
    Ok(Tally {
        incidents: count("SELECT COUNT(*) FROM incidents")?,
        outbound_mails: count("SELECT COUNT(*) FROM outbound")?,
        threads: count("SELECT COUNT(DISTINCT order_key) FROM outbound")?,
        api_actions: count("SELECT COUNT(*) FROM glpi_actions")?,
        mail_times: times("SELECT queued_at FROM outbound ORDER BY id")?,
        thread_times: times("SELECT MIN(queued_at) FROM outbound GROUP BY order_key")?,
    })
}
