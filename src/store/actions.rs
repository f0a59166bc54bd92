//! Actions alertgate owes a GLPI ticket through the REST API (solving it on recovery),
//! kept in the store so a GLPI outage or a restart delays them but never loses them.

use super::StoreError;
use rusqlite::{params, Connection};

/// One pending API action.
#[derive(Debug, Clone)]
pub struct GlpiAction {
    pub id: i64,
    pub tag: String,
    pub ticket_id: u64,
    pub action: String,
    pub content: String,
    pub attempts: u32,
}

pub const SOLVE: &str = "solve";
pub const FOLLOWUP: &str = "followup";
/// A follow-up meant to reopen a ticket people solved (the problem got worse).
pub const REOPEN: &str = "reopen";
/// Create the ticket (`create = "api"`); `content` is the ticket's JSON input.
pub const CREATE: &str = "create";

pub fn add(
    conn: &Connection,
    tag: &str,
    ticket_id: u64,
    action: &str,
    content: &str,
    now: i64,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO glpi_actions (tag, ticket_id, action, content, next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![tag, ticket_id as i64, action, content, now])?;
    Ok(conn.last_insert_rowid())
}

/// The head of each ticket's queue that is due: one per incident, so a solution never
/// overtakes a follow-up still waiting for GLPI.
pub fn due(conn: &Connection, now: i64, limit: usize) -> Result<Vec<GlpiAction>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, tag, ticket_id, action, content, attempts FROM glpi_actions AS a
         WHERE state = 'pending' AND next_attempt_at <= ?1
           AND NOT EXISTS (SELECT 1 FROM glpi_actions AS p
                           WHERE p.tag = a.tag AND p.id < a.id AND p.state = 'pending')
         ORDER BY id LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![now, limit as i64], |r| {
            Ok(GlpiAction {
                id: r.get(0)?,
                tag: r.get(1)?,
                ticket_id: r.get::<_, i64>(2)? as u64,
                action: r.get(3)?,
                content: r.get(4)?,
                attempts: r.get::<_, i64>(5)? as u32,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Record the outcome: `Ok` done, `Err((retry_at, error))` retry later, or failed for good.
pub fn finish(
    conn: &Connection,
    id: i64,
    state: &str,
    next_attempt_at: i64,
    error: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE glpi_actions SET state = ?2, attempts = attempts + 1, next_attempt_at = ?3, last_error = ?4 WHERE id = ?1",
    )?
    .execute(params![id, state, next_attempt_at, error])?;
    Ok(())
}

/// Carry out a pending action as another kind (a refused solution becomes a follow-up).
pub fn convert(conn: &Connection, id: i64, action: &str, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE glpi_actions SET action = ?2, attempts = attempts + 1, next_attempt_at = ?3 WHERE id = ?1",
    )?
    .execute(params![id, action, now])?;
    Ok(())
}

/// Ticket ids learned by creating tickets (`create = "api"`): pending actions of the
/// incident that were queued before the id was known get it.
pub fn set_ticket(conn: &Connection, tag: &str, ticket_id: u64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE glpi_actions SET ticket_id = ?2 WHERE tag = ?1 AND ticket_id = 0 AND state = 'pending' AND action != 'create'",
    )?
    .execute(params![tag, ticket_id as i64])?;
    Ok(())
}

/// When the incident's latest action of kind `action` was queued.
pub fn last_queued_at(
    conn: &Connection,
    tag: &str,
    action: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT MAX(created_at) FROM glpi_actions WHERE tag = ?1 AND action = ?2")?
        .query_row(params![tag, action], |r| r.get::<_, Option<i64>>(0))?)
}

pub fn counts(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT action || ':' || state, COUNT(*) FROM glpi_actions GROUP BY 1 ORDER BY 1",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}
