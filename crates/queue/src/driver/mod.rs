//! The one place a store's dialect shows: the statements whose shape differs between
//! Postgres (arrays, `SKIP LOCKED`, `NOTIFY`) and SQLite (JSON lists, one writer at a time).
//! Everything else the queue runs is one text for both (see [`crate::sql`]).

pub(crate) mod postgres;
pub(crate) mod sqlite;

pub use postgres::Postgres;
pub use sqlite::Sqlite;

use std::time::Duration;

use uuid::Uuid;

use crate::{ClaimedJob, Error, JobId, JobRef, JobState, NewJob, Timestamp, Transition};

/// A store's implementation of the queue's dialect-bound statements.
#[allow(async_fn_in_trait)]
pub trait Driver {
    type Connection;

    /// Inserts `jobs` in one statement; their ids in the order of `jobs`.
    async fn enqueue(c: &mut Self::Connection, jobs: &[NewJob]) -> Result<Vec<JobId>, Error>;

    /// Claims up to `limit` runnable jobs of `kinds` (in `group`, when given) for `worker`,
    /// leased for `lease`: running jobs whose lease has passed first, then available ones
    /// whose time has come, oldest first. Each claim raises `attempt` by one.
    async fn claim(
        c: &mut Self::Connection,
        group: Option<Uuid>,
        kinds: &[&str],
        limit: i64,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, Error>;

    /// Extends the leases of those `jobs` still running under the attempt named.
    async fn heartbeat(
        c: &mut Self::Connection,
        jobs: &[JobRef],
        lease: Duration,
    ) -> Result<u64, Error>;

    /// Applies `transitions` (each job at most once); the jobs changed, with their new
    /// state and `run_at`.
    async fn apply(
        c: &mut Self::Connection,
        transitions: &[Transition],
    ) -> Result<Vec<(JobId, JobState, Timestamp)>, Error>;

    /// Wakes idle workers (in Postgres, of every process; at commit).
    async fn notify(c: &mut Self::Connection) -> Result<(), Error>;
}

/// [`Driver::apply`]'s statement after its input rows `t`: each transition's effect, and the
/// fence — a claim's transitions need the claim to hold, the others a job nobody holds.
macro_rules! apply_sql {
    ($from:literal) => {
        concat!(
            "UPDATE jobs AS j
         SET state = (CASE
                 WHEN t.op = 'complete' THEN 'completed'
                 WHEN t.op IN ('cancel', 'abandon') THEN 'cancelled'
                 WHEN t.op = 'retry' AND j.attempt < j.max_attempts THEN 'available'
                 WHEN t.op IN ('retry', 'fail') THEN 'failed'
                 WHEN t.op = 'block' OR (t.op = 'revive' AND t.blocked) THEN 'blocked'
                 ELSE 'available' END)::job_state,
             run_at = CASE
                 WHEN t.op IN ('complete', 'fail', 'block', 'cancel', 'abandon')
                      OR (t.op = 'retry' AND j.attempt >= j.max_attempts) THEN j.run_at
                 ELSE {after t.delay} END,
             max_attempts = CASE
                 WHEN t.op IN ('snooze', 'release', 'abandon') THEN j.max_attempts + 1
                 WHEN t.op = 'block' THEN {greatest}(j.max_attempts, j.attempt + 1)
                 WHEN t.op = 'revive' THEN j.attempt + t.attempts
                 ELSE j.max_attempts END,
             finished_at = CASE
                 WHEN t.op IN ('complete', 'fail', 'cancel', 'abandon')
                      OR (t.op = 'retry' AND j.attempt >= j.max_attempts) THEN {now}
                 ELSE NULL END,
             last_error = CASE
                 WHEN t.op IN ('retry', 'fail') THEN t.note
                 WHEN t.op IN ('snooze', 'block') THEN COALESCE(t.note, j.last_error)
                 ELSE j.last_error END,
             locked_until = NULL, locked_by = NULL, updated_at = {now} ",
            $from,
            " WHERE j.id = t.t_id
           AND ((t.op IN ('complete', 'retry', 'fail', 'snooze', 'release', 'block', 'abandon')
                 AND j.attempt = t.t_attempt AND j.state = 'running')
                OR (t.op = 'unblock' AND j.state = 'blocked')
                OR (t.op = 'cancel' AND j.state IN ('available', 'blocked'))
                OR (t.op = 'revive'
                    AND j.state IN ('failed', 'completed', 'blocked', 'cancelled')))
         RETURNING id, state, run_at"
        )
    };
}
use apply_sql;

/// Claims skip the jobs of paused groups (a pause with no group pauses them all).
macro_rules! not_paused {
    () => {
        "NOT EXISTS (SELECT 1 FROM queue_pauses p
                      WHERE p.group_id IS NULL OR p.group_id = jobs.group_id)"
    };
}
pub(crate) use not_paused;

/// [`Driver::claim`]'s update of the picked jobs.
macro_rules! claim_set {
    () => {
        "SET state = 'running', attempt = attempt + 1, locked_until = {after $4},
             locked_by = $3, updated_at = {now}"
    };
}
use claim_set;
