//! The operator's controls over work already queued: cancel (tickets and their jobs, so that
//! nothing more is sent for them) and prune (the history of finished batches). Pauses are
//! the queue's own ([`visibuild_queue::pause`]).

use std::time::Duration;

use super::{Conn, Ex, StoreError};
use crate::domain::{BatchId, JobId, TicketId};
use uuid::Uuid;
use visibuild_queue::{self as queue, List, Outcome, Transition, on, sql};

/// What a cancel scope names: a batch, one ticket ref (in a batch, when given), or both.
#[derive(Debug, Clone, Default)]
pub struct CancelScope {
    pub batch: Option<BatchId>,
    pub reference: Option<String>,
}

/// What a cancel stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled {
    pub tickets: u64,
    pub jobs: u64,
}

/// Cancels the tickets of `scope` not yet sent (pending) and their queued jobs (available
/// or blocked). Work a worker holds now finishes (a create in flight counts as created); a
/// worker that claims a cancelled ticket's job later drops it unsent. Run it in a
/// transaction.
pub async fn cancel(conn: &mut Conn<'_>, scope: &CancelScope) -> Result<Cancelled, StoreError> {
    let tickets: Vec<TicketId> = on!(
        conn.reborrow(),
        sql!(
            "UPDATE tickets SET state = 'cancelled', updated_at = {now}, finished_at = {now}
              WHERE state = 'pending'
                AND ($1::uuid IS NULL OR batch_id = $1)
                AND ($2::text IS NULL OR ref = $2)
             RETURNING id"
        ),
        |c, q| sqlx::query_scalar(q)
            .bind(scope.batch)
            .bind(scope.reference.as_deref())
            .fetch_all(c)
            .await
    )?;
    if tickets.is_empty() {
        return Ok(Cancelled::default());
    }
    let ids: Vec<Uuid> = tickets.iter().map(|t| t.0).collect();
    let jobs: Vec<JobId> = on!(
        conn.reborrow(),
        sql!(
            "SELECT j.id FROM jobs j
              WHERE j.state IN ('available', 'blocked')
                AND (j.target_id {in_ids $1}
                     OR j.target_id IN (SELECT a.id FROM attachments a
                                         WHERE a.ticket_id {in_ids $1}))
              ORDER BY j.id"
        ),
        |c, q| sqlx::query_scalar(q).bind(List(&ids)).fetch_all(c).await
    )?;
    let transitions: Vec<Transition> = jobs.iter().map(|j| Transition::cancel(*j)).collect();
    let outcomes = queue::apply(conn.reborrow(), &transitions).await?;
    Ok(Cancelled {
        tickets: tickets.len() as u64,
        jobs: outcomes.iter().filter(|o| **o == Outcome::Done).count() as u64,
    })
}

/// Whether the ticket a job is for (a create's ticket, an upload's attachment's) was
/// cancelled: its claim is then given up unsent.
pub async fn target_cancelled<'c>(ex: impl Into<Ex<'c>>, target: Uuid) -> Result<bool, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT EXISTS (SELECT 1 FROM tickets t
                             WHERE t.state = 'cancelled'
                               AND (t.id = $1
                                    OR t.id = (SELECT a.ticket_id FROM attachments a
                                                WHERE a.id = $1)))"
        ),
        |c, q| sqlx::query_scalar(q).bind(target).fetch_one(c).await
    )?)
}

/// What a prune removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// The batches whose history went (by name).
    pub batches: Vec<String>,
    pub jobs: u64,
    pub attempts: u64,
    /// Minute counters (requests per endpoint and answer) older than the cut-off.
    pub counters: u64,
}

/// Deletes the history of every batch whose jobs all finished (completed or failed) more
/// than `older_than` ago — its jobs and their attempts — and the request counters older than
/// that. The tickets, their files and their batch stay, so the same manifest loaded again
/// finds every ticket known and creates none twice.
pub async fn prune(db: &super::Store, older_than: Duration) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    for batch in super::tickets::batches(db).await? {
        let mut tx = db.begin().await?;
        let jobs = queue::purge_finished_group(&mut tx, batch.id.0, older_than).await?;
        let attempts = if jobs > 0 {
            delete_attempts_of(&mut tx, batch.id).await?
        } else {
            0
        };
        tx.commit().await?;
        if jobs > 0 {
            pruned.batches.push(batch.name);
            pruned.jobs += jobs;
            pruned.attempts += attempts;
        }
    }
    pruned.counters = prune_counters(db, older_than).await?;
    Ok(pruned)
}

async fn delete_attempts_of<'c>(ex: impl Into<Ex<'c>>, batch: BatchId) -> Result<u64, StoreError> {
    Ok(on!(
        ex.into(),
        sql!("DELETE FROM attempts WHERE batch_id = $1"),
        |c, q| sqlx::query(q)
            .bind(batch)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?)
}

/// Deletes the minute counters older than `older_than`. How many.
pub async fn prune_counters<'c>(
    ex: impl Into<Ex<'c>>,
    older_than: Duration,
) -> Result<u64, StoreError> {
    let before = -(i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX));
    Ok(on!(
        ex.into(),
        sql!("DELETE FROM minute_counters WHERE minute < {after $1}"),
        |c, q| sqlx::query(q)
            .bind(before)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?)
}

/// Gives the embedded store's freed pages back to the file system: `VACUUM` (written
/// through the WAL), then a checkpoint that copies it into the file and empties the WAL.
/// Postgres's autovacuum does this on its own.
pub async fn reclaim_space(db: &super::Store) -> Result<(), StoreError> {
    if let super::Store::Sqlite(pool) = db {
        let mut conn = pool.acquire().await?;
        sqlx::query("VACUUM").execute(&mut *conn).await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
