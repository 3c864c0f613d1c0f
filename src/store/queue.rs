//! The job queue: enqueue, claim under a lease, and finish jobs, every write fenced by the
//! (job id, attempt) it claimed. Each statement is a function generic over `PgExecutor`.
//!
//! Lifecycle: `blocked` → (fan-in, elsewhere) → `available` → [`claim`] → `running` →
//! [`complete`] / [`fail`] / [`reschedule`] / [`release`]. A running job whose lease
//! (`locked_until`) has passed is claimable again, with `attempt + 1`: the old holder's
//! writes then fail with [`StoreError::Fenced`]. `attempt` never decreases; a transition that
//! must not use up an attempt raises `max_attempts` instead.

use std::time::Duration;

use rand::Rng;
use sqlx::postgres::PgListener;
use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::{AttachmentId, BatchId, JobId, JobKind, JobState, TicketId};

/// The LISTEN/NOTIFY channel [`enqueue`] notifies; payload empty.
pub const NOTIFY_CHANNEL: &str = "visibuild_jobs";

/// Attempts a job gets by default, and again when an operator retries it.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 8;

/// Longer error texts are cut to this many characters before they are stored.
const MAX_ERROR_CHARS: usize = 4000;

/// Delays are capped here so `now() + delay` can never overflow a timestamp.
const MAX_DELAY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A job to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub kind: JobKind,
    /// `Available` or `Blocked`; anything else is refused.
    pub state: JobState,
    pub batch_id: Option<BatchId>,
    pub ticket_id: Option<TicketId>,
    pub attachment_id: Option<AttachmentId>,
    pub max_attempts: i32,
    /// When it may first run; `None` is now.
    pub run_at: Option<OffsetDateTime>,
}

impl NewJob {
    /// An available job with no references and [`DEFAULT_MAX_ATTEMPTS`].
    pub fn available(kind: JobKind) -> Self {
        Self {
            kind,
            state: JobState::Available,
            batch_id: None,
            ticket_id: None,
            attachment_id: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            run_at: None,
        }
    }

    /// A job that waits for a fan-in before it can be claimed.
    pub fn blocked(kind: JobKind) -> Self {
        Self {
            state: JobState::Blocked,
            ..Self::available(kind)
        }
    }
}

/// A job this worker holds until its lease runs out.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: JobId,
    pub kind: JobKind,
    /// This claim's attempt number (1 for the first run): the fencing token.
    pub attempt: i32,
    pub max_attempts: i32,
    pub batch_id: Option<BatchId>,
    pub ticket_id: Option<TicketId>,
    pub attachment_id: Option<AttachmentId>,
}

impl ClaimedJob {
    /// The fence every later write of this claim must name.
    pub fn job_ref(&self) -> JobRef {
        JobRef {
            id: self.id,
            attempt: self.attempt,
        }
    }

    /// True when the claim went past the budget: the previous holder lost its lease on the
    /// last attempt (a crashed or killed worker). Fail such a job rather than run it, so a
    /// job that kills its worker cannot loop forever.
    pub fn is_over_budget(&self) -> bool {
        self.attempt > self.max_attempts
    }
}

/// A job and the attempt that claimed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobRef {
    pub id: JobId,
    pub attempt: i32,
}

/// Whether a failure deserves another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Transient: try again after a backoff if attempts are left.
    Retry,
    /// Will fail the same way again: fail now.
    Permanent,
}

/// What [`fail`] did with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back to available, not before `at`.
    Retrying { at: OffsetDateTime },
    /// Failed for good (until an operator retries it).
    Failed,
}

/// Exponential backoff with full jitter: attempt `n` waits a uniform random time in
/// `[0, min(cap, base · 2^(n-1))]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(10 * 60),
        }
    }
}

impl Backoff {
    /// The longest delay after failed attempt `attempt` (1-based; lower counts as 1).
    pub fn ceiling(&self, attempt: i32) -> Duration {
        let doublings = attempt.saturating_sub(1).clamp(0, 63) as u32;
        let factor = 1u64 << doublings;
        let micros = u64::try_from(self.base.as_micros())
            .unwrap_or(u64::MAX)
            .saturating_mul(factor);
        Duration::from_micros(micros).min(self.cap)
    }

    /// A random delay in `[0, ceiling(attempt)]`, in whole microseconds.
    pub fn delay(&self, attempt: i32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`Backoff::delay`] with the caller's random source.
    pub fn delay_with(&self, attempt: i32, rng: &mut impl Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(0..=ceiling))
    }
}

/// Which failed jobs an operator puts back. Empty fields match everything; set fields
/// must all match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryFilter {
    pub batch: Option<BatchId>,
    pub job: Option<JobId>,
    pub ticket: Option<TicketId>,
    /// Case-insensitive substring of the job's last error.
    pub error_contains: Option<String>,
}

/// Everything the queue knows about one job.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobRecord {
    pub id: JobId,
    pub kind: JobKind,
    pub state: JobState,
    pub batch_id: Option<BatchId>,
    pub ticket_id: Option<TicketId>,
    pub attachment_id: Option<AttachmentId>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: OffsetDateTime,
    pub locked_until: Option<OffsetDateTime>,
    pub locked_by: Option<String>,
    pub last_error: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
}

/// Inserts `jobs` in one statement and notifies [`NOTIFY_CHANNEL`] (delivered at commit).
/// Returns their ids in the order of `jobs`.
pub async fn enqueue<'e, E: PgExecutor<'e>>(
    ex: E,
    jobs: &[NewJob],
) -> Result<Vec<JobId>, StoreError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    for job in jobs {
        if !matches!(job.state, JobState::Available | JobState::Blocked) {
            return Err(StoreError::InvalidJob(
                "a new job must be available or blocked",
            ));
        }
        if job.max_attempts < 1 {
            return Err(StoreError::InvalidJob("max_attempts must be at least 1"));
        }
    }
    let ids = sqlx::query_scalar::<_, JobId>(
        "WITH inserted AS (
             INSERT INTO jobs (kind, state, batch_id, ticket_id, attachment_id, max_attempts, run_at)
             SELECT kind, state, batch_id, ticket_id, attachment_id, max_attempts,
                    COALESCE(run_at, now())
             FROM UNNEST($1::job_kind[], $2::job_state[], $3::uuid[], $4::uuid[], $5::uuid[],
                         $6::int4[], $7::timestamptz[])
                  WITH ORDINALITY
                  AS u (kind, state, batch_id, ticket_id, attachment_id, max_attempts, run_at, ord)
             ORDER BY ord
             RETURNING id
         )
         SELECT inserted.id
         FROM inserted CROSS JOIN (SELECT pg_notify($8, '')) AS notified
         ORDER BY inserted.id",
    )
    .bind(jobs.iter().map(|j| j.kind).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.state).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.batch_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.ticket_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.attachment_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.run_at).collect::<Vec<_>>())
    .bind(NOTIFY_CHANNEL)
    .fetch_all(ex)
    .await?;
    Ok(ids)
}

/// Claims up to `limit` runnable jobs of `kinds` for `worker`, leased for `lease`, in one
/// statement. Runnable: available with `run_at` passed, or running with an expired lease
/// (those first). Each claim raises `attempt` by one. An empty answer does not prove the
/// queue empty: see [`next_run_at`].
pub async fn claim<'e, E: PgExecutor<'e>>(
    ex: E,
    kinds: &[JobKind],
    limit: i64,
    worker: &str,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, StoreError> {
    claim_in(ex, None, kinds, limit, worker, lease).await
}

/// [`claim`], restricted to the jobs of one batch when `batch` is set.
pub async fn claim_in<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
    kinds: &[JobKind],
    limit: i64,
    worker: &str,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, StoreError> {
    if limit < 1 || kinds.is_empty() {
        return Ok(Vec::new());
    }
    // Two locking scans, each able to use its own partial index in order; CTEs are read
    // lazily, so `due` locks only as many rows as `expired` leaves room for.
    let jobs = sqlx::query_as::<_, ClaimedJob>(
        "WITH expired AS (
             SELECT id FROM jobs
             WHERE state = 'running' AND locked_until < now()
               AND kind = ANY($1) AND ($5::uuid IS NULL OR batch_id = $5)
             ORDER BY locked_until, id
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ), due AS (
             SELECT id FROM jobs
             WHERE state = 'available' AND run_at <= now()
               AND kind = ANY($1) AND ($5::uuid IS NULL OR batch_id = $5)
             ORDER BY run_at, id
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ), picked AS (
             SELECT id FROM expired UNION ALL SELECT id FROM due
             LIMIT $2
         )
         UPDATE jobs AS j
         SET state = 'running',
             attempt = j.attempt + 1,
             locked_until = now() + $4::float8 * interval '1 microsecond',
             locked_by = $3,
             updated_at = now()
         FROM picked
         WHERE j.id = picked.id
         RETURNING j.id, j.kind, j.attempt, j.max_attempts, j.batch_id, j.ticket_id,
                   j.attachment_id",
    )
    .bind(kinds)
    .bind(limit)
    .bind(worker)
    .bind(micros(lease))
    .bind(batch)
    .fetch_all(ex)
    .await?;
    Ok(jobs)
}

/// Who holds running jobs now (leases not yet expired).
pub async fn holders<'e, E: PgExecutor<'e>>(ex: E) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT locked_by FROM jobs
          WHERE state = 'running' AND locked_until >= now() AND locked_by IS NOT NULL",
    )
    .fetch_all(ex)
    .await?)
}

/// End the leases of every job `holder` holds (it is known to be dead), so the next claim
/// takes them at once. Fencing is untouched: the claim bumps the attempt as for any expired
/// lease, so a holder that was not dead after all cannot write over the new attempt.
pub async fn expire_leases_of<'e, E: PgExecutor<'e>>(
    ex: E,
    holder: &str,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE jobs SET locked_until = now() - interval '1 microsecond', updated_at = now()
          WHERE state = 'running' AND locked_by = $1",
    )
    .bind(holder)
    .execute(ex)
    .await?
    .rows_affected())
}

/// Extends the lease of those `jobs` that are still running under the attempt named.
/// Returns how many were extended; fewer than `jobs.len()` means some were lost.
pub async fn heartbeat<'e, E: PgExecutor<'e>>(
    ex: E,
    jobs: &[JobRef],
    lease: Duration,
) -> Result<u64, StoreError> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let (ids, attempts) = split(jobs);
    let done = sqlx::query(
        "UPDATE jobs AS j
         SET locked_until = now() + $3::float8 * interval '1 microsecond', updated_at = now()
         FROM UNNEST($1::int8[], $2::int4[]) AS r (id, attempt)
         WHERE j.id = r.id AND j.attempt = r.attempt AND j.state = 'running'",
    )
    .bind(ids)
    .bind(attempts)
    .bind(micros(lease))
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// Marks a job completed.
pub async fn complete<'e, E: PgExecutor<'e>>(ex: E, job: JobRef) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE jobs
         SET state = 'completed', finished_at = now(), updated_at = now(),
             locked_until = NULL, locked_by = NULL
         WHERE id = $1 AND attempt = $2 AND state = 'running'",
    )
    .bind(job.id)
    .bind(job.attempt)
    .execute(ex)
    .await?;
    fenced(done.rows_affected(), job)
}

/// Marks many jobs completed in one statement. Returns the ones that were fenced out
/// (not completed because their claim no longer holds).
pub async fn complete_many<'e, E: PgExecutor<'e>>(
    ex: E,
    jobs: &[JobRef],
) -> Result<Vec<JobRef>, StoreError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, attempts) = split(jobs);
    let rows = sqlx::query_as::<_, (JobId, i32)>(
        "WITH refs AS (
             SELECT * FROM UNNEST($1::int8[], $2::int4[]) AS r (id, attempt)
         ), done AS (
             UPDATE jobs AS j
             SET state = 'completed', finished_at = now(), updated_at = now(),
                 locked_until = NULL, locked_by = NULL
             FROM refs
             WHERE j.id = refs.id AND j.attempt = refs.attempt AND j.state = 'running'
             RETURNING j.id
         )
         SELECT refs.id, refs.attempt FROM refs
         WHERE NOT EXISTS (SELECT 1 FROM done WHERE done.id = refs.id)",
    )
    .bind(ids)
    .bind(attempts)
    .fetch_all(ex)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, attempt)| JobRef { id, attempt })
        .collect())
}

/// Records a failed attempt. `Retry` with attempts left puts the job back, available after
/// `backoff.delay(attempt)`; otherwise the job fails. `error` is kept as `last_error`.
pub async fn fail<'e, E: PgExecutor<'e>>(
    ex: E,
    job: JobRef,
    error: &str,
    retry: RetryDecision,
    backoff: &Backoff,
) -> Result<FailOutcome, StoreError> {
    record_failure(ex, job, error, retry, backoff.delay(job.attempt)).await
}

/// Records a failed attempt whose retry the server timed (`Retry-After` on a 503, S3's
/// `SlowDown`): like [`fail`] with `Retry`, but available after `delay` instead of a backoff.
pub async fn fail_after<'e, E: PgExecutor<'e>>(
    ex: E,
    job: JobRef,
    error: &str,
    delay: Duration,
) -> Result<FailOutcome, StoreError> {
    record_failure(ex, job, error, RetryDecision::Retry, delay).await
}

async fn record_failure<'e, E: PgExecutor<'e>>(
    ex: E,
    job: JobRef,
    error: &str,
    retry: RetryDecision,
    delay: Duration,
) -> Result<FailOutcome, StoreError> {
    let row = sqlx::query_as::<_, (JobState, OffsetDateTime)>(
        "UPDATE jobs
         SET state = CASE WHEN $3 AND attempt < max_attempts
                          THEN 'available'::job_state ELSE 'failed'::job_state END,
             run_at = CASE WHEN $3 AND attempt < max_attempts
                           THEN now() + $4::float8 * interval '1 microsecond' ELSE run_at END,
             finished_at = CASE WHEN $3 AND attempt < max_attempts THEN NULL ELSE now() END,
             last_error = $5, updated_at = now(), locked_until = NULL, locked_by = NULL
         WHERE id = $1 AND attempt = $2 AND state = 'running'
         RETURNING state, run_at",
    )
    .bind(job.id)
    .bind(job.attempt)
    .bind(retry == RetryDecision::Retry)
    .bind(micros(delay))
    .bind(truncate(error))
    .fetch_optional(ex)
    .await?;
    match row {
        None => Err(fenced_error(job)),
        Some((JobState::Available, at)) => Ok(FailOutcome::Retrying { at }),
        Some(_) => Ok(FailOutcome::Failed),
    }
}

/// Puts a running job back, available after `delay`, without using up an attempt (for
/// "not now" answers: a rate limit's `Retry-After`, a fan-in not ready). `note`, if given,
/// replaces `last_error`. Returns when the job will be runnable.
pub async fn reschedule<'e, E: PgExecutor<'e>>(
    ex: E,
    job: JobRef,
    delay: Duration,
    note: Option<&str>,
) -> Result<OffsetDateTime, StoreError> {
    let run_at = sqlx::query_scalar::<_, OffsetDateTime>(
        "UPDATE jobs
         SET state = 'available',
             run_at = now() + $3::float8 * interval '1 microsecond',
             max_attempts = max_attempts + 1,
             last_error = COALESCE($4, last_error),
             updated_at = now(), locked_until = NULL, locked_by = NULL
         WHERE id = $1 AND attempt = $2 AND state = 'running'
         RETURNING run_at",
    )
    .bind(job.id)
    .bind(job.attempt)
    .bind(micros(delay))
    .bind(note.map(truncate))
    .fetch_optional(ex)
    .await?;
    run_at.ok_or_else(|| fenced_error(job))
}

/// Gives running jobs back, available now, without using up an attempt (graceful
/// shutdown). Jobs no longer held under the attempt named are left alone. Returns how many
/// were released.
pub async fn release<'e, E: PgExecutor<'e>>(ex: E, jobs: &[JobRef]) -> Result<u64, StoreError> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let (ids, attempts) = split(jobs);
    let done = sqlx::query(
        "UPDATE jobs AS j
         SET state = 'available', run_at = now(), max_attempts = j.max_attempts + 1,
             updated_at = now(), locked_until = NULL, locked_by = NULL
         FROM UNNEST($1::int8[], $2::int4[]) AS r (id, attempt)
         WHERE j.id = r.id AND j.attempt = r.attempt AND j.state = 'running'",
    )
    .bind(ids)
    .bind(attempts)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// Operator retry: failed jobs matching `filter` become available now with a full set of
/// attempts again ([`DEFAULT_MAX_ATTEMPTS`] more). `last_error` stays until the next
/// outcome. Returns how many jobs were put back.
pub async fn retry_failed<'e, E: PgExecutor<'e>>(
    ex: E,
    filter: &RetryFilter,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE jobs
         SET state = 'available', run_at = now(), max_attempts = attempt + $5,
             finished_at = NULL, updated_at = now()
         WHERE state = 'failed'
           AND ($1::uuid IS NULL OR batch_id = $1)
           AND ($2::int8 IS NULL OR id = $2)
           AND ($3::uuid IS NULL OR ticket_id = $3)
           AND ($4::text IS NULL OR strpos(lower(last_error), lower($4)) > 0)",
    )
    .bind(filter.batch)
    .bind(filter.job)
    .bind(filter.ticket)
    .bind(filter.error_contains.as_deref())
    .bind(DEFAULT_MAX_ATTEMPTS)
    .execute(ex)
    .await?;
    Ok(done.rows_affected())
}

/// One job, if it exists.
pub async fn job<'e, E: PgExecutor<'e>>(ex: E, id: JobId) -> Result<Option<JobRecord>, StoreError> {
    let record = sqlx::query_as::<_, JobRecord>(
        "SELECT id, kind, state, batch_id, ticket_id, attachment_id, attempt, max_attempts,
                run_at, locked_until, locked_by, last_error, created_at, updated_at, finished_at
         FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(ex)
    .await?;
    Ok(record)
}

/// How many jobs of each kind are in each state (only the pairs that occur), for all
/// batches or one.
pub async fn counts_by_state<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
) -> Result<Vec<(JobKind, JobState, i64)>, StoreError> {
    let rows = sqlx::query_as::<_, (JobKind, JobState, i64)>(
        "SELECT kind, state, count(*) FROM jobs
         WHERE $1::uuid IS NULL OR batch_id = $1
         GROUP BY kind, state
         ORDER BY kind, state",
    )
    .bind(batch)
    .fetch_all(ex)
    .await?;
    Ok(rows)
}

/// When the next job becomes claimable: the earliest `run_at` of available jobs or
/// `locked_until` of running ones (possibly in the past: claimable now). `None` when
/// nothing is available or running — only blocked or finished jobs are left.
pub async fn next_run_at<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
) -> Result<Option<OffsetDateTime>, StoreError> {
    let at = sqlx::query_scalar::<_, Option<OffsetDateTime>>(
        "SELECT min(at) FROM (
             (SELECT run_at AS at FROM jobs
              WHERE state = 'available' AND ($1::uuid IS NULL OR batch_id = $1)
              ORDER BY run_at LIMIT 1)
             UNION ALL
             (SELECT locked_until FROM jobs
              WHERE state = 'running' AND ($1::uuid IS NULL OR batch_id = $1)
              ORDER BY locked_until LIMIT 1)
         ) AS next",
    )
    .bind(batch)
    .fetch_one(ex)
    .await?;
    Ok(at)
}

/// Whether any job (of all batches or one) is still available, running or blocked.
pub async fn has_unfinished<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
) -> Result<bool, StoreError> {
    let any = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (
             SELECT 1 FROM jobs
             WHERE state IN ('available', 'running', 'blocked')
               AND ($1::uuid IS NULL OR batch_id = $1)
         )",
    )
    .bind(batch)
    .fetch_one(ex)
    .await?;
    Ok(any)
}

/// A listener subscribed to [`NOTIFY_CHANNEL`], on its own connection from `pool`.
pub async fn listen(pool: &PgPool) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

fn split(jobs: &[JobRef]) -> (Vec<i64>, Vec<i32>) {
    jobs.iter().map(|j| (j.id.0, j.attempt)).unzip()
}

/// `Ok` when a fenced write touched exactly the one row its claim names.
pub(super) fn fenced(rows_affected: u64, job: JobRef) -> Result<(), StoreError> {
    if rows_affected == 1 {
        Ok(())
    } else {
        Err(fenced_error(job))
    }
}

fn fenced_error(job: JobRef) -> StoreError {
    StoreError::Fenced {
        job: job.id,
        attempt: job.attempt,
    }
}

/// A duration as microseconds for `$n * interval '1 microsecond'`.
fn micros(d: Duration) -> f64 {
    d.min(MAX_DELAY).as_micros() as f64
}

fn truncate(error: &str) -> &str {
    match error.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => &error[..at],
        None => error,
    }
}

/// Wakes idle workers listening on [`NOTIFY_CHANNEL`] (e.g. after a fan-in unblocked a job).
pub async fn notify<'e, E: PgExecutor<'e>>(ex: E) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(NOTIFY_CHANNEL)
        .execute(ex)
        .await?;
    Ok(())
}

/// Whether any job (of all batches or one) can still run: available (now or later) or
/// running. Blocked jobs wait on a fan-in that only a running job can open, so they do not
/// count: a ticket whose upload failed must not keep a pool alive.
pub async fn has_runnable<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
) -> Result<bool, StoreError> {
    let any = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (
             SELECT 1 FROM jobs
             WHERE state IN ('available', 'running')
               AND ($1::uuid IS NULL OR batch_id = $1)
         )",
    )
    .bind(batch)
    .fetch_one(ex)
    .await?;
    Ok(any)
}

/// Whether any job waits to be claimed, now or later (not counting running ones).
pub async fn has_available<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (
             SELECT 1 FROM jobs
             WHERE state = 'available' AND ($1::uuid IS NULL OR batch_id = $1)
         )",
    )
    .bind(batch)
    .fetch_one(ex)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn backoff_ceiling_doubles_from_base_and_stops_at_cap() {
        let b = Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(5),
        };
        let ceilings: Vec<_> = (1..=6).map(|n| b.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 5000, 5000].map(Duration::from_millis)
        );
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(i32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn backoff_delays_are_jittered_within_zero_and_the_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(3),
        };
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=10 {
            let delays: Vec<_> = (0..200).map(|_| b.delay_with(attempt, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= b.ceiling(attempt)));
            assert!(delays.iter().all(|d| d.subsec_nanos() % 1000 == 0));
            // Full jitter spreads over the whole range, not just near the ceiling.
            let half = b.ceiling(attempt) / 2;
            assert!(delays.iter().any(|d| *d < half) && delays.iter().any(|d| *d > half));
        }
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        assert_eq!(truncate(&long).chars().count(), MAX_ERROR_CHARS);
        assert_eq!(truncate("short"), "short");
    }
}
