//! Read-side queries for operators: counts by state, failure reasons, per-ticket results,
//! and the operator's retry, which puts failed tickets' work back in the queue.

use super::StoreError;
use crate::domain::{BatchId, JobId, JobState, TicketState};
use sqlx::PgExecutor;
use time::OffsetDateTime;

/// What is left to do (for progress bars).
#[derive(Debug, Default, Clone, Copy)]
pub struct Remaining {
    pub tickets: u64,
    pub files: u64,
    pub bytes: u64,
}

pub async fn remaining<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
) -> Result<Remaining, StoreError> {
    let (tickets, files, bytes): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tickets t
                  WHERE t.state IN ('pending', 'creating') AND ($1::uuid IS NULL OR t.batch_id = $1)),
                count(a.id), COALESCE(sum(a.size), 0)::bigint
           FROM attachments a JOIN tickets t ON t.id = a.ticket_id
          WHERE a.state = 'pending' AND ($1::uuid IS NULL OR t.batch_id = $1)",
    )
    .bind(batch)
    .fetch_one(ex)
    .await?;
    Ok(Remaining {
        tickets: tickets as u64,
        files: files as u64,
        bytes: bytes as u64,
    })
}

/// Tickets by outcome, and the commonest reasons for failure.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub created: i64,
    pub failed: i64,
    pub needs_review: i64,
    pub pending: i64,
    pub top_errors: Vec<(String, i64)>,
}

pub async fn run_summary<'e, E>(ex: E, batch: Option<BatchId>) -> Result<RunSummary, StoreError>
where
    E: PgExecutor<'e> + Copy,
{
    let mut s = RunSummary::default();
    for (state, count) in tickets_by_state(ex, batch).await? {
        match state {
            TicketState::Created => s.created = count,
            TicketState::Failed => s.failed = count,
            TicketState::NeedsReview => s.needs_review = count,
            TicketState::Pending | TicketState::Creating => s.pending += count,
        }
    }
    s.top_errors = top_errors(ex, batch, 5).await?;
    Ok(s)
}

pub async fn tickets_by_state<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
) -> Result<Vec<(TicketState, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT state, count(*) FROM tickets WHERE ($1::uuid IS NULL OR batch_id = $1)
          GROUP BY state ORDER BY state",
    )
    .bind(batch)
    .fetch_all(ex)
    .await?)
}

/// The commonest `last_error`s of failed or review tickets.
pub async fn top_errors<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
    limit: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT COALESCE(last_error, '(no reason recorded)'), count(*) AS n FROM tickets
          WHERE state IN ('failed', 'needs_review') AND ($1::uuid IS NULL OR batch_id = $1)
          GROUP BY 1 ORDER BY n DESC, 1 LIMIT $2",
    )
    .bind(batch)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// One batch's numbers, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchStatus {
    pub batch: String,
    pub created_at: String,
    pub tickets: std::collections::BTreeMap<String, i64>,
    pub files: std::collections::BTreeMap<String, i64>,
    pub bytes_uploaded: i64,
    pub bytes_total: i64,
    pub jobs: JobCounts,
    /// Files uploaded and tickets created in the last minute, per minute.
    pub files_last_minute: i64,
    pub tickets_last_minute: i64,
    pub eta_seconds: Option<i64>,
    pub top_errors: Vec<ErrorCount>,
    /// Why jobs waiting to run again failed last time (an outage, 5xx, 429s), commonest first.
    pub retry_reasons: Vec<ErrorCount>,
    /// Refs whose manifest fields changed since they were loaded (kept as first loaded).
    pub changed_since_load: i64,
    /// A few of them: `ref: fields (manifest:line)`.
    pub changed_examples: Vec<String>,
}

#[derive(Debug, Default, Clone, serde::Serialize, sqlx::FromRow)]
pub struct JobCounts {
    pub waiting: i64,
    pub blocked: i64,
    pub running: i64,
    pub retrying: i64,
    pub failed: i64,
    pub completed: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorCount {
    pub reason: String,
    pub count: i64,
}

pub async fn batch_status(
    pool: &sqlx::PgPool,
    batch: BatchId,
    name: &str,
    created_at: OffsetDateTime,
) -> Result<BatchStatus, StoreError> {
    let tickets = tickets_by_state(pool, Some(batch))
        .await?
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    let files: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT a.state::text, count(*), COALESCE(sum(a.size), 0)::bigint
           FROM attachments a JOIN tickets t ON t.id = a.ticket_id
          WHERE t.batch_id = $1 GROUP BY 1",
    )
    .bind(batch)
    .fetch_all(pool)
    .await?;
    let bytes_uploaded = files
        .iter()
        .filter(|f| f.0 == "uploaded")
        .map(|f| f.2)
        .sum();
    let bytes_total = files.iter().map(|f| f.2).sum();
    let jobs: JobCounts = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'available' AND run_at <= now()) AS waiting,
                count(*) FILTER (WHERE state = 'blocked') AS blocked,
                count(*) FILTER (WHERE state = 'running') AS running,
                count(*) FILTER (WHERE state = 'available' AND run_at > now()) AS retrying,
                count(*) FILTER (WHERE state = 'failed') AS failed,
                count(*) FILTER (WHERE state = 'completed') AS completed
           FROM jobs WHERE batch_id = $1",
    )
    .bind(batch)
    .fetch_one(pool)
    .await?;
    let (files_last_minute, tickets_last_minute): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM attachments a JOIN tickets t ON t.id = a.ticket_id
                  WHERE t.batch_id = $1 AND a.uploaded_at > now() - interval '1 minute'),
                (SELECT count(*) FROM tickets
                  WHERE batch_id = $1 AND state = 'created'
                    AND finished_at > now() - interval '1 minute')",
    )
    .bind(batch)
    .fetch_one(pool)
    .await?;
    let files_pending: i64 = files.iter().filter(|f| f.0 == "pending").map(|f| f.1).sum();
    let eta_seconds = (files_last_minute > 0 && files_pending > 0)
        .then(|| files_pending * 60 / files_last_minute);
    let top_errors = top_errors(pool, Some(batch), 5)
        .await?
        .into_iter()
        .map(|(reason, count)| ErrorCount { reason, count })
        .collect();
    let changed_examples: Vec<String> = sqlx::query_scalar(
        "SELECT ref || ': ' || changed_since_load FROM tickets
          WHERE batch_id = $1 AND changed_since_load IS NOT NULL ORDER BY line LIMIT 5",
    )
    .bind(batch)
    .fetch_all(pool)
    .await?;
    let changed_since_load: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tickets WHERE batch_id = $1 AND changed_since_load IS NOT NULL",
    )
    .bind(batch)
    .fetch_one(pool)
    .await?;
    let retry_reasons: Vec<(String, i64)> = sqlx::query_as(
        "SELECT last_error, count(*) AS n FROM jobs
          WHERE batch_id = $1 AND state = 'available' AND last_error IS NOT NULL
          GROUP BY 1 ORDER BY n DESC, 1 LIMIT 5",
    )
    .bind(batch)
    .fetch_all(pool)
    .await?;
    Ok(BatchStatus {
        batch: name.to_string(),
        created_at: created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        tickets,
        files: files.into_iter().map(|(s, n, _)| (s, n)).collect(),
        bytes_uploaded,
        bytes_total,
        jobs,
        files_last_minute,
        tickets_last_minute,
        eta_seconds,
        top_errors,
        retry_reasons: retry_reasons
            .into_iter()
            .map(|(reason, count)| ErrorCount { reason, count })
            .collect(),
        changed_since_load,
        changed_examples,
    })
}

/// One row of the results CSV.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TicketResult {
    pub batch: String,
    #[sqlx(rename = "ref")]
    pub reference: String,
    /// The ticket's first line in its manifest (continuation rows are not stored).
    pub line: i64,
    pub project_id: uuid::Uuid,
    pub state: TicketState,
    pub visibuild_id: Option<String>,
    pub attachment_keys: Option<String>,
    pub attempts: Option<i32>,
    pub last_error: Option<String>,
    /// Files that changed between loading and upload: `path: what changed`, `;`-separated.
    pub file_changes: Option<String>,
    /// Manifest fields that differ from what was loaded, on a later load of the same ref.
    pub changed_fields: Option<String>,
}

/// Which tickets a report covers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResultFilter {
    pub batch: Option<BatchId>,
    /// Only failed tickets and those needing review.
    pub failed_only: bool,
}

pub async fn ticket_results<'e, E: PgExecutor<'e>>(
    ex: E,
    filter: ResultFilter,
) -> Result<Vec<TicketResult>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT b.name AS batch, t.ref, t.line, t.project_id, t.state, t.visibuild_id,
                (SELECT string_agg(a.key, ';' ORDER BY a.position) FROM attachments a
                  WHERE a.ticket_id = t.id AND a.state = 'uploaded') AS attachment_keys,
                (SELECT max(j.attempt) FROM jobs j WHERE j.ticket_id = t.id
                    AND j.kind = 'create_ticket') AS attempts,
                t.last_error,
                (SELECT string_agg(a.path || ': ' || a.change_note, '; ' ORDER BY a.position)
                   FROM attachments a
                  WHERE a.ticket_id = t.id AND a.change_note IS NOT NULL) AS file_changes,
                t.changed_since_load AS changed_fields
           FROM tickets t JOIN batches b ON b.id = t.batch_id
          WHERE ($1::uuid IS NULL OR t.batch_id = $1)
            AND (NOT $2 OR t.state IN ('failed', 'needs_review'))
          ORDER BY b.created_at, t.line",
    )
    .bind(filter.batch)
    .bind(filter.failed_only)
    .fetch_all(ex)
    .await?)
}

/// One row of the per-file results CSV.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileResult {
    pub batch: String,
    #[sqlx(rename = "ref")]
    pub reference: String,
    /// The ticket's first line in its manifest: attachments carry no line of their own.
    pub line: i64,
    pub path: String,
    pub size: i64,
    pub md5: Option<String>,
    pub key: Option<String>,
    pub state: crate::domain::AttachmentState,
    pub error: Option<String>,
    pub file_changes: Option<String>,
}

/// A row per file, in manifest order; `failed_only` keeps the files of failed tickets and
/// tickets needing review.
pub async fn file_results<'e, E: PgExecutor<'e>>(
    ex: E,
    filter: ResultFilter,
) -> Result<Vec<FileResult>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT b.name AS batch, t.ref, t.line, a.path, a.size, a.md5, a.key, a.state,
                a.last_error AS error, a.change_note AS file_changes
           FROM attachments a JOIN tickets t ON t.id = a.ticket_id
           JOIN batches b ON b.id = t.batch_id
          WHERE ($1::uuid IS NULL OR t.batch_id = $1)
            AND (NOT $2 OR t.state IN ('failed', 'needs_review'))
          ORDER BY b.created_at, t.line, a.position",
    )
    .bind(filter.batch)
    .bind(filter.failed_only)
    .fetch_all(ex)
    .await?)
}

/// Which failed work an operator puts back.
#[derive(Debug, Clone, Default)]
pub struct RetryScope {
    pub batch: Option<BatchId>,
    pub reference: Option<String>,
    /// Only these jobs.
    pub jobs: Option<Vec<JobId>>,
    pub error_contains: Option<String>,
    /// Also tickets marked for review: their create is sent again.
    pub force: bool,
}

/// The states of the tickets with this ref (one per project that has it), in `batch` or
/// in any. Empty when no ticket has that ref.
pub async fn ticket_states_by_ref<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
    reference: &str,
) -> Result<Vec<TicketState>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT state FROM tickets WHERE ref = $2 AND ($1::uuid IS NULL OR batch_id = $1)
          ORDER BY state",
    )
    .bind(batch)
    .bind(reference)
    .fetch_all(ex)
    .await?)
}

/// A job's state, if the job exists (in `batch`, when one is given).
pub async fn job_state<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
    job: JobId,
) -> Result<Option<JobState>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT state FROM jobs WHERE id = $2 AND ($1::uuid IS NULL OR batch_id = $1)",
    )
    .bind(batch)
    .bind(job)
    .fetch_optional(ex)
    .await?)
}

/// What a retry put back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Retried {
    pub jobs: u64,
    pub tickets: u64,
}

/// Put failed jobs (and their attachments and tickets) back in the queue with a full set of
/// attempts. A retried upload re-opens its ticket's fan-in: the create runs once it lands.
pub async fn retry(
    conn: &mut sqlx::PgConnection,
    scope: &RetryScope,
    max_attempts: i32,
) -> Result<Retried, StoreError> {
    let jobs: Vec<(
        JobId,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
        crate::domain::JobKind,
    )> = sqlx::query_as(
        "SELECT j.id, j.ticket_id, j.attachment_id, j.kind
               FROM jobs j JOIN tickets t ON t.id = j.ticket_id
              WHERE j.state = 'failed'
                AND ($1::uuid IS NULL OR j.batch_id = $1)
                AND ($2::text IS NULL OR t.ref = $2)
                AND ($3::bigint[] IS NULL OR j.id = ANY($3))
                AND ($4::text IS NULL OR strpos(j.last_error, $4) > 0
                     OR strpos(t.last_error, $4) > 0)
                AND (t.state <> 'needs_review' OR $5)
              FOR UPDATE OF j",
    )
    .bind(scope.batch)
    .bind(scope.reference.as_deref())
    .bind(scope.jobs.as_deref())
    .bind(scope.error_contains.as_deref())
    .bind(scope.force)
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<JobId> = jobs.iter().map(|j| j.0).collect();
    let tickets: Vec<uuid::Uuid> = {
        let mut t: Vec<_> = jobs.iter().filter_map(|j| j.1).collect();
        t.sort();
        t.dedup();
        t
    };
    let attachments: Vec<uuid::Uuid> = jobs.iter().filter_map(|j| j.2).collect();
    if ids.is_empty() {
        return Ok(Retried::default());
    }
    sqlx::query("UPDATE attachments SET state = 'pending' WHERE id = ANY($1) AND state = 'failed'")
        .bind(&attachments)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE jobs SET state = 'available', run_at = now(), locked_until = NULL,
                locked_by = NULL, finished_at = NULL, max_attempts = attempt + $2,
                updated_at = now()
          WHERE id = ANY($1) AND kind = 'upload'",
    )
    .bind(&ids)
    .bind(max_attempts)
    .execute(&mut *conn)
    .await?;
    // The tickets' create jobs (retried or waiting) wait for their uploads again: blocked
    // while any attachment is not uploaded, else runnable. The fan-in re-opens.
    sqlx::query(
        "UPDATE jobs SET state = CASE WHEN EXISTS (
                        SELECT 1 FROM attachments a
                         WHERE a.ticket_id = jobs.ticket_id AND a.state <> 'uploaded')
                    THEN 'blocked'::job_state ELSE 'available'::job_state END,
                run_at = now(), locked_until = NULL, locked_by = NULL, finished_at = NULL,
                max_attempts = CASE WHEN id = ANY($3) THEN attempt + $2 ELSE max_attempts END,
                updated_at = now()
          WHERE kind = 'create_ticket' AND ticket_id = ANY($1)
            AND (state = 'blocked' OR id = ANY($3))",
    )
    .bind(&tickets)
    .bind(max_attempts)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    // Forced: the operator checked Visibuild and wants the create sent again.
    sqlx::query(
        "UPDATE tickets SET state = 'pending', updated_at = now(), finished_at = NULL,
                create_unanswered = CASE WHEN state = 'needs_review' THEN false ELSE create_unanswered END
          WHERE id = ANY($1) AND state IN ('failed', 'needs_review')
            AND NOT EXISTS (SELECT 1 FROM attachments a
                             WHERE a.ticket_id = tickets.id AND a.state = 'failed')",
    )
    .bind(&tickets)
    .execute(&mut *conn)
    .await?;
    super::queue::notify(&mut *conn).await?;
    Ok(Retried {
        jobs: ids.len() as u64,
        tickets: tickets.len() as u64,
    })
}
