//! The queue's operations. Each takes where to run ([`Ex`]: a pool, a transaction, a
//! connection), so a caller can enqueue or settle jobs in the same transaction as its own
//! writes. The statements whose shape differs per store go through [`crate::driver`].

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::driver::{self, Driver};
use crate::{
    ClaimedJob, Error, Ex, JobId, JobRecord, JobRef, JobState, NewJob, Outcome, Store, Timestamp,
    Transition, on, sql,
};

/// Runs one [`Driver`] method on the store `$ex` is, with `$c` a connection (taken from the
/// pool when `$ex` is one) and `$d` the driver type.
macro_rules! drive {
    ($ex:expr, |$d:ident, $c:ident| $body:expr) => {
        match Ex::from($ex) {
            Ex::PostgresPool(pool) => {
                let mut conn = pool.acquire().await?;
                let $c = &mut *conn;
                type $d = driver::Postgres;
                $body
            }
            Ex::Postgres($c) => {
                type $d = driver::Postgres;
                $body
            }
            Ex::SqlitePool(pool) => {
                let mut conn = pool.acquire().await?;
                let $c = &mut *conn;
                type $d = driver::Sqlite;
                $body
            }
            Ex::Sqlite($c) => {
                type $d = driver::Sqlite;
                $body
            }
        }
    };
}

/// Inserts `jobs` and wakes idle workers (in Postgres at commit). Their ids, in order.
pub async fn enqueue<'c>(ex: impl Into<Ex<'c>>, jobs: &[NewJob]) -> Result<Vec<JobId>, Error> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    for job in jobs {
        if !matches!(job.state, JobState::Available | JobState::Blocked) {
            return Err(Error::InvalidJob("a new job must be available or blocked"));
        }
        if job.max_attempts < 1 {
            return Err(Error::InvalidJob("max_attempts must be at least 1"));
        }
    }
    drive!(ex.into(), |D, c| D::enqueue(c, jobs).await)
}

/// Claims up to `limit` runnable jobs of `kinds` (of `group` only, when given) for
/// `worker`, leased for `lease`, in one statement. Runnable: running with an expired lease
/// (those first), or available with `run_at` passed. Each claim raises `attempt` by one. An
/// empty answer does not prove the queue empty: see [`next_run_at`].
pub async fn claim<'c>(
    ex: impl Into<Ex<'c>>,
    group: Option<Uuid>,
    kinds: &[&str],
    limit: i64,
    worker: &str,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, Error> {
    if limit < 1 || kinds.is_empty() {
        return Ok(Vec::new());
    }
    drive!(ex.into(), |D, c| D::claim(
        c, group, kinds, limit, worker, lease
    )
    .await)
}

/// Extends the lease of those `jobs` still running under the attempt named. Returns how
/// many were extended; fewer than `jobs.len()` means some were lost.
pub async fn heartbeat<'c>(
    ex: impl Into<Ex<'c>>,
    jobs: &[JobRef],
    lease: Duration,
) -> Result<u64, Error> {
    if jobs.is_empty() {
        return Ok(0);
    }
    drive!(ex.into(), |D, c| D::heartbeat(c, jobs, lease).await)
}

/// Applies `transitions` — one each per job — in one go (one statement in Postgres), each
/// fenced: a claim's only while the claim holds the job, an unblock only of a blocked job, a
/// revive only of a failed, completed or blocked job. What happened to each, in order.
pub async fn apply<'c>(
    ex: impl Into<Ex<'c>>,
    transitions: &[Transition],
) -> Result<Vec<Outcome>, Error> {
    if transitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = std::collections::HashSet::with_capacity(transitions.len());
    if !transitions.iter().all(|t| seen.insert(t.job_id())) {
        return Err(Error::InvalidJob("a job may change only once per apply"));
    }
    let changed: HashMap<JobId, (JobState, Timestamp)> =
        drive!(ex.into(), |D, c| D::apply(c, transitions).await)?
            .into_iter()
            .map(|(id, state, run_at)| (id, (state, run_at)))
            .collect();
    Ok(transitions
        .iter()
        .map(|t| match (changed.get(&t.job_id()), t) {
            (None, _) => Outcome::Fenced,
            (Some((JobState::Available, at)), Transition::Retry { .. }) => {
                Outcome::Retrying { at: *at }
            }
            (Some(_), Transition::Retry { .. } | Transition::Fail { .. }) => Outcome::Failed,
            (Some(_), _) => Outcome::Done,
        })
        .collect())
}

/// [`apply`] of one transition that must take effect: [`Error::Fenced`] when it does not
/// (the caller's transaction should then roll back).
pub async fn apply_one<'c>(
    ex: impl Into<Ex<'c>>,
    transition: Transition,
) -> Result<Outcome, Error> {
    let outcome = apply(ex, std::slice::from_ref(&transition)).await?[0];
    match (outcome, transition.claim()) {
        (Outcome::Fenced, Some(job)) => Err(Error::Fenced {
            job: job.id,
            attempt: job.attempt,
        }),
        (Outcome::Fenced, None) => Err(Error::InvalidJob(
            "the job is not in a state this transition applies to",
        )),
        (outcome, _) => Ok(outcome),
    }
}

/// Checks, inside the caller's transaction, that `job`'s claim still holds with its lease
/// unexpired, and keeps it so until commit: a claim that would take the job over waits (in
/// Postgres, skips the row) until then. [`Error::Fenced`] when it no longer holds.
pub async fn hold<'c>(ex: impl Into<Ex<'c>>, job: JobRef) -> Result<(), Error> {
    let held: Option<i64> = on!(
        ex.into(),
        sql!(
            "SELECT id FROM jobs
              WHERE id = $1 AND attempt = $2 AND state = 'running' AND locked_until > {now}
              {for_update}"
        ),
        |c, q| sqlx::query_scalar(q)
            .bind(job.id)
            .bind(job.attempt)
            .fetch_optional(c)
            .await
    )?;
    match held {
        Some(_) => Ok(()),
        None => Err(Error::Fenced {
            job: job.id,
            attempt: job.attempt,
        }),
    }
}

/// Wakes idle workers: in Postgres every listening process (at commit), in SQLite this
/// process's.
pub async fn notify<'c>(ex: impl Into<Ex<'c>>) -> Result<(), Error> {
    drive!(ex.into(), |D, c| D::notify(c).await)
}

/// Who holds running jobs now (leases not yet expired).
pub async fn holders<'c>(ex: impl Into<Ex<'c>>) -> Result<Vec<String>, Error> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT DISTINCT locked_by FROM jobs
              WHERE state = 'running' AND locked_until >= {now} AND locked_by IS NOT NULL"
        ),
        |c, q| sqlx::query_scalar(q).fetch_all(c).await
    )?)
}

/// Ends the leases of every job `holder` holds (it is known to be dead), so the next claim
/// takes them at once. Fencing is untouched: the claim bumps the attempt as for any expired
/// lease, so a holder that was not dead after all cannot write over the new attempt.
pub async fn expire_leases_of<'c>(ex: impl Into<Ex<'c>>, holder: &str) -> Result<u64, Error> {
    Ok(on!(
        ex.into(),
        sql!(
            "UPDATE jobs SET locked_until = {after -1000}, updated_at = {now}
              WHERE state = 'running' AND locked_by = $1"
        ),
        |c, q| sqlx::query(q)
            .bind(holder)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?)
}

/// One job, if it exists.
pub async fn job<'c>(ex: impl Into<Ex<'c>>, id: JobId) -> Result<Option<JobRecord>, Error> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT id, kind, state, group_id, target_id, attempt, max_attempts, run_at,
                    locked_until, locked_by, last_error, created_at, updated_at, finished_at
               FROM jobs WHERE id = $1"
        ),
        |c, q| sqlx::query_as(q).bind(id).fetch_optional(c).await
    )?)
}

/// How many jobs of each kind are in each state (only the pairs that occur), of all groups
/// or one.
pub async fn counts_by_state<'c>(
    ex: impl Into<Ex<'c>>,
    group: Option<Uuid>,
) -> Result<Vec<(String, JobState, i64)>, Error> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT kind, state, count(*) FROM jobs
              WHERE $1::uuid IS NULL OR group_id = $1
              GROUP BY kind, state ORDER BY kind, state"
        ),
        |c, q| sqlx::query_as(q).bind(group).fetch_all(c).await
    )?)
}

/// When the next job becomes claimable: the earliest `run_at` of available jobs or
/// `locked_until` of running ones (possibly in the past: claimable now), paused groups left
/// out. `None` when nothing is available or running — only blocked, finished or paused jobs
/// are left.
pub async fn next_run_at<'c>(
    ex: impl Into<Ex<'c>>,
    group: Option<Uuid>,
) -> Result<Option<Timestamp>, Error> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT min(at) FROM (
                 SELECT min(run_at) AS at FROM jobs
                  WHERE state = 'available' AND ($1::uuid IS NULL OR group_id = $1)
                    AND NOT EXISTS (SELECT 1 FROM queue_pauses p
                                     WHERE p.group_id IS NULL OR p.group_id = jobs.group_id)
                 UNION ALL
                 SELECT min(locked_until) AS at FROM jobs
                  WHERE state = 'running' AND ($1::uuid IS NULL OR group_id = $1)
                    AND NOT EXISTS (SELECT 1 FROM queue_pauses p
                                     WHERE p.group_id IS NULL OR p.group_id = jobs.group_id)
             ) AS next"
        ),
        |c, q| sqlx::query_scalar(q).bind(group).fetch_one(c).await
    )?)
}

/// Whether any job (of all groups or one) can still run: available (now or later) or
/// running. Blocked jobs wait on something only a running job can bring, so they do not
/// count; nor do paused groups' jobs, except those a live claim holds (they finish).
pub async fn has_runnable<'c>(ex: impl Into<Ex<'c>>, group: Option<Uuid>) -> Result<bool, Error> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state IN ('available', 'running')
                              AND ($1::uuid IS NULL OR group_id = $1)
                              AND ((state = 'running' AND locked_until >= {now})
                                   OR NOT EXISTS (SELECT 1 FROM queue_pauses p
                                                   WHERE p.group_id IS NULL
                                                      OR p.group_id = jobs.group_id)))"
        ),
        |c, q| sqlx::query_scalar(q).bind(group).fetch_one(c).await
    )?)
}

/// Whether any job waits to be claimed, now or later (not counting running ones).
pub async fn has_available<'c>(ex: impl Into<Ex<'c>>, group: Option<Uuid>) -> Result<bool, Error> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'available'
                              AND ($1::uuid IS NULL OR group_id = $1))"
        ),
        |c, q| sqlx::query_scalar(q).bind(group).fetch_one(c).await
    )?)
}

/// Whether any job (of all groups or one) is still available, running or blocked.
pub async fn has_unfinished<'c>(ex: impl Into<Ex<'c>>, group: Option<Uuid>) -> Result<bool, Error> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state IN ('available', 'running', 'blocked')
                              AND ($1::uuid IS NULL OR group_id = $1))"
        ),
        |c, q| sqlx::query_scalar(q).bind(group).fetch_one(c).await
    )?)
}

/// Pauses `group`'s jobs, or every group's (`None`): claims skip them until [`resume`]; jobs
/// already claimed finish. False when it was paused already.
pub async fn pause<'c>(ex: impl Into<Ex<'c>>, group: Option<Uuid>) -> Result<bool, Error> {
    let scope = group.map_or_else(|| "all".to_string(), |g| g.to_string());
    Ok(on!(
        ex.into(),
        sql!(
            "INSERT INTO queue_pauses (scope, group_id) VALUES ($1, $2)
             ON CONFLICT (scope) DO NOTHING"
        ),
        |c, q| sqlx::query(q)
            .bind(scope)
            .bind(group)
            .execute(c)
            .await
            .map(|done| done.rows_affected() > 0)
    )?)
}

/// Lifts the pause of `group`, or every pause (`None`: the pause of all groups and each
/// group's). False when nothing was paused. Idle workers find the work at their next poll;
/// [`notify`] wakes them at once.
pub async fn resume<'c>(ex: impl Into<Ex<'c>>, group: Option<Uuid>) -> Result<bool, Error> {
    Ok(on!(
        ex.into(),
        sql!("DELETE FROM queue_pauses WHERE $1::uuid IS NULL OR group_id = $1"),
        |c, q| sqlx::query(q)
            .bind(group)
            .execute(c)
            .await
            .map(|done| done.rows_affected() > 0)
    )?)
}

/// The pauses in force: `None` is the pause of every group.
pub async fn pauses<'c>(ex: impl Into<Ex<'c>>) -> Result<Vec<(Option<Uuid>, Timestamp)>, Error> {
    Ok(on!(
        ex.into(),
        sql!("SELECT group_id, paused_at FROM queue_pauses ORDER BY paused_at, scope"),
        |c, q| sqlx::query_as(q).fetch_all(c).await
    )?)
}

/// How many available jobs (of all groups or one) wait only because their group is paused.
pub async fn paused_jobs<'c>(ex: impl Into<Ex<'c>>, group: Option<Uuid>) -> Result<i64, Error> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT count(*) FROM jobs WHERE state = 'available'
                AND ($1::uuid IS NULL OR group_id = $1)
                AND EXISTS (SELECT 1 FROM queue_pauses p
                             WHERE p.group_id IS NULL OR p.group_id = jobs.group_id)"
        ),
        |c, q| sqlx::query_scalar(q).bind(group).fetch_one(c).await
    )?)
}

/// Deletes every job of `group` if all of them finished (completed or failed) more than
/// `older_than` ago; otherwise nothing (a cancelled job waits for an operator's decision).
/// How many were deleted.
pub async fn purge_finished_group<'c>(
    ex: impl Into<Ex<'c>>,
    group: Uuid,
    older_than: Duration,
) -> Result<u64, Error> {
    let before = -(i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX));
    Ok(on!(
        ex.into(),
        sql!(
            "DELETE FROM jobs WHERE group_id = $1
               AND NOT EXISTS (SELECT 1 FROM jobs AS j
                                WHERE j.group_id = $1
                                  AND (j.state IN ('available', 'running', 'blocked',
                                                   'cancelled')
                                       OR j.finished_at IS NULL
                                       OR j.finished_at >= {after $2}))"
        ),
        |c, q| sqlx::query(q)
            .bind(group)
            .bind(before)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?)
}

/// Wake-ups for idle workers: Postgres `LISTEN` (every process's enqueues and unblocks), or
/// in SQLite this process's own; other processes on the host are found by polling.
pub enum Listener {
    Postgres(Box<PgListener>),
    Local,
}

impl Listener {
    /// Waits for the next wake-up. A broken Postgres listener never wakes again (the
    /// caller's poll still finds work).
    pub async fn notified(&mut self) {
        match self {
            Listener::Postgres(l) => {
                if l.recv().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            Listener::Local => driver::sqlite::LOCAL_WAKEUPS.notified().await,
        }
    }
}

/// A listener for wake-ups, on its own connection in Postgres.
pub async fn listen(store: &Store) -> Result<Listener, Error> {
    match store {
        Store::Postgres(pool) => {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(driver::postgres::NOTIFY_CHANNEL).await?;
            Ok(Listener::Postgres(Box::new(listener)))
        }
        Store::Sqlite(_) => Ok(Listener::Local),
    }
}
