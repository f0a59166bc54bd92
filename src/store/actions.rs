//! Actions alertgate owes a GLPI ticket through the REST API (creating it, follow-ups,
//! solving it on recovery), kept in the store so a GLPI outage or a restart delays them
//! but never loses them.

use super::db::{Db, Dialect, Row};
use super::lease::Lease;
use super::StoreError;

/// What an action does to its ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// Create the ticket (`create = "api"`); `content` is the ticket's JSON input.
    Create,
    Followup,
    /// A follow-up meant to reopen a ticket people solved (the problem got worse).
    Reopen,
    Solve,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Create => "create",
            ActionKind::Followup => "followup",
            ActionKind::Reopen => "reopen",
            ActionKind::Solve => "solve",
        }
    }

    /// A kind read back from the store; an unknown one is named in the error.
    pub fn from_db(s: &str) -> Result<ActionKind, StoreError> {
        [
            ActionKind::Create,
            ActionKind::Followup,
            ActionKind::Reopen,
            ActionKind::Solve,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| StoreError::BadValue {
            table: "glpi_actions",
            column: "action",
            value: s.to_owned(),
        })
    }
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where an action is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionState {
    /// Waiting to be carried out (again) at `next_attempt_at`.
    Pending,
    Done,
    /// Not carried out, on purpose (a follow-up to a ticket people solved).
    Skipped,
    /// GLPI refused it for good.
    Failed,
}

impl ActionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::Done => "done",
            ActionState::Skipped => "skipped",
            ActionState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ActionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One pending API action.
#[derive(Debug, Clone)]
pub struct GlpiAction {
    pub id: i64,
    pub tag: String,
    pub ticket_id: u64,
    pub action: ActionKind,
    pub content: String,
    pub attempts: u32,
}

impl GlpiAction {
    fn from_row(r: &Row) -> Result<GlpiAction, StoreError> {
        Ok(GlpiAction {
            id: r.int(0)?,
            tag: r.text(1)?,
            ticket_id: r.int(2)? as u64,
            action: ActionKind::from_db(&r.text(3)?)?,
            content: r.text(4)?,
            attempts: r.int(5)? as u32,
        })
    }
}

pub fn add(
    db: &mut Db,
    tag: &str,
    ticket_id: u64,
    action: ActionKind,
    content: &str,
    now: i64,
) -> Result<i64, StoreError> {
    db.query_one(
        "INSERT INTO glpi_actions (tag, ticket_id, action, content, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
        &[
            tag.into(),
            (ticket_id as i64).into(),
            action.as_str().into(),
            content.into(),
            now.into(),
        ],
    )?
    .int(0)
}

/// The head of each ticket's queue that is due: one per incident, so a solution never
/// overtakes a follow-up still waiting for GLPI.
pub fn due(db: &mut Db, now: i64, limit: usize) -> Result<Vec<GlpiAction>, StoreError> {
    due_leased(db, now, limit, &Lease::default())
}

/// As `due`, for gateways sharing the store: on PostgreSQL the actions returned are
/// leased to `lease` (free, expired or already its own), so one gateway carries out
/// each, and a ticket's next action waits for its head wherever that is.
pub fn due_leased(
    db: &mut Db,
    now: i64,
    limit: usize,
    lease: &Lease,
) -> Result<Vec<GlpiAction>, StoreError> {
    if db.dialect() == Dialect::Postgres {
        let mut claimed = db
            .query(
                &super::lease::claim_sql(
                    "WITH heads AS (
                     SELECT a.id AS head_id FROM glpi_actions AS a
                     WHERE a.state = 'pending' AND a.next_attempt_at <= $1
                       AND (a.lease_until IS NULL OR a.lease_until <= $1 OR a.lease_owner = $2)
                       AND NOT EXISTS (SELECT 1 FROM glpi_actions AS p
                                       WHERE p.tag = a.tag AND p.id < a.id AND p.state = 'pending')
                     ORDER BY a.id LIMIT $3
                     FOR UPDATE OF a SKIP LOCKED)
                 UPDATE glpi_actions SET lease_owner = $2, lease_until = $4
                 FROM heads WHERE glpi_actions.id = heads.head_id
                 RETURNING id, tag, ticket_id, action, content, attempts",
                ),
                &[
                    now.into(),
                    lease.owner().into(),
                    (limit as i64).into(),
                    lease.until(now).into(),
                ],
            )?
            .iter()
            .map(GlpiAction::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by_key(|a| a.id);
        return Ok(claimed);
    }
    db.query(
        "SELECT id, tag, ticket_id, action, content, attempts FROM glpi_actions AS a
         WHERE state = 'pending' AND next_attempt_at <= $1
           AND NOT EXISTS (SELECT 1 FROM glpi_actions AS p
                           WHERE p.tag = a.tag AND p.id < a.id AND p.state = 'pending')
         ORDER BY id LIMIT $2",
        &[now.into(), (limit as i64).into()],
    )?
    .iter()
    .map(GlpiAction::from_row)
    .collect()
}

/// Just before carrying out a leased action: renews the lease, or says it is no longer
/// this gateway's (it ran out and another gateway took the action over, or finished it).
pub fn renew_lease(db: &mut Db, id: i64, now: i64, lease: &Lease) -> Result<bool, StoreError> {
    if db.dialect() == Dialect::Sqlite {
        return Ok(true);
    }
    let renewed = db.execute(
        "UPDATE glpi_actions SET lease_until = $1
         WHERE id = $2 AND state = 'pending' AND lease_owner = $3",
        &[lease.until(now).into(), id.into(), lease.owner().into()],
    )?;
    Ok(renewed == 1)
}

/// Record an attempt's outcome: `state` (pending again to retry at `next_attempt_at`).
pub fn finish(
    db: &mut Db,
    id: i64,
    state: ActionState,
    next_attempt_at: i64,
    error: Option<&str>,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE glpi_actions SET state = $1, attempts = attempts + 1, next_attempt_at = $2, last_error = $3, lease_owner = NULL, lease_until = NULL WHERE id = $4",
        &[state.as_str().into(), next_attempt_at.into(), error.into(), id.into()],
    )?;
    Ok(())
}

/// Carry out a pending action as another kind (a refused solution becomes a follow-up).
pub fn convert(db: &mut Db, id: i64, action: ActionKind, now: i64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE glpi_actions SET action = $1, attempts = attempts + 1, next_attempt_at = $2, lease_owner = NULL, lease_until = NULL WHERE id = $3",
        &[action.as_str().into(), now.into(), id.into()],
    )?;
    Ok(())
}

/// Ticket ids learned by creating tickets (`create = "api"`): pending actions of the
/// incident that were queued before the id was known get it.
pub fn set_ticket(db: &mut Db, tag: &str, ticket_id: u64) -> Result<(), StoreError> {
    db.execute(
        "UPDATE glpi_actions SET ticket_id = $1 WHERE tag = $2 AND ticket_id = 0 AND state = 'pending' AND action != 'create'",
        &[(ticket_id as i64).into(), tag.into()],
    )?;
    Ok(())
}

/// When the incident's latest action of kind `action` was queued.
pub fn last_queued_at(
    db: &mut Db,
    tag: &str,
    action: ActionKind,
) -> Result<Option<i64>, StoreError> {
    db.query_one(
        "SELECT MAX(created_at) FROM glpi_actions WHERE tag = $1 AND action = $2",
        &[tag.into(), action.as_str().into()],
    )?
    .opt_int(0)
}

/// Counts per `kind:state`, for `queue list` and metrics.
pub fn counts(db: &mut Db) -> Result<Vec<(String, i64)>, StoreError> {
    db.query(
        "SELECT action || ':' || state, COUNT(*) FROM glpi_actions GROUP BY 1 ORDER BY 1",
        &[],
    )?
    .into_iter()
    .map(|r| Ok((r.text(0)?, r.int(1)?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_states_round_trip_and_an_unknown_kind_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut db =
            crate::store::open(&crate::store::Location::Sqlite(dir.path().join("db"))).unwrap();
        let first = add(&mut db, "ALERT-1", 7, ActionKind::Followup, "news", 10).unwrap();
        add(&mut db, "ALERT-1", 7, ActionKind::Solve, "fixed", 10).unwrap();
        let due_now = due(&mut db, 10, 10).unwrap();
        assert_eq!(due_now.len(), 1, "the solution waits behind the follow-up");
        assert_eq!(due_now[0].action, ActionKind::Followup);
        finish(&mut db, first, ActionState::Done, 10, None).unwrap();
        assert_eq!(due(&mut db, 10, 10).unwrap()[0].action, ActionKind::Solve);
        assert_eq!(
            last_queued_at(&mut db, "ALERT-1", ActionKind::Solve).unwrap(),
            Some(10)
        );
        db.execute("UPDATE glpi_actions SET action = 'dance'", &[])
            .unwrap();
        let err = due(&mut db, 10, 10).unwrap_err().to_string();
        assert!(
            err.contains("glpi_actions.action") && err.contains("`dance`"),
            "{err}"
        );
    }
}
