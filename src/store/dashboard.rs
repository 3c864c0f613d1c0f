//! What the operations dashboard and `/metrics` read: batches with progress, failed jobs and
//! tickets needing review, throughput per minute, and the per-minute request counters.

use super::StoreError;
use crate::domain::{BatchId, JobId, JobKind, ProjectId, TicketId, TicketState};
use sqlx::PgExecutor;
use time::OffsetDateTime;

/// One batch and how far it got.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchOverview {
    pub id: BatchId,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub tickets: i64,
    pub created: i64,
    pub failed: i64,
    pub needs_review: i64,
    pub files: i64,
    pub files_uploaded: i64,
    pub files_failed: i64,
    pub bytes: i64,
    pub bytes_uploaded: i64,
    /// Jobs held by a worker now.
    pub running: i64,
    /// Jobs waiting to run or to run again (not those blocked on their ticket's uploads).
    pub queued: i64,
}

/// Every batch, newest first, with its counts.
pub async fn batch_overviews<'e, E: PgExecutor<'e>>(
    ex: E,
) -> Result<Vec<BatchOverview>, StoreError> {
    Ok(sqlx::query_as(
        "WITH t AS (
             SELECT batch_id, count(*) AS tickets,
                    count(*) FILTER (WHERE state = 'created') AS created,
                    count(*) FILTER (WHERE state = 'failed') AS failed,
                    count(*) FILTER (WHERE state = 'needs_review') AS needs_review
               FROM tickets GROUP BY batch_id),
         f AS (
             SELECT t.batch_id, count(*) AS files,
                    count(*) FILTER (WHERE a.state = 'uploaded') AS files_uploaded,
                    count(*) FILTER (WHERE a.state = 'failed') AS files_failed,
                    COALESCE(sum(a.size), 0)::bigint AS bytes,
                    COALESCE(sum(a.size) FILTER (WHERE a.state = 'uploaded'), 0)::bigint
                        AS bytes_uploaded
               FROM attachments a JOIN tickets t ON t.id = a.ticket_id GROUP BY t.batch_id),
         j AS (
             SELECT batch_id, count(*) FILTER (WHERE state = 'running') AS running,
                    count(*) FILTER (WHERE state = 'available') AS queued
               FROM jobs WHERE state IN ('running', 'available') GROUP BY batch_id)
         SELECT b.id, b.name, b.created_at,
                COALESCE(t.tickets, 0) AS tickets, COALESCE(t.created, 0) AS created,
                COALESCE(t.failed, 0) AS failed, COALESCE(t.needs_review, 0) AS needs_review,
                COALESCE(f.files, 0) AS files, COALESCE(f.files_uploaded, 0) AS files_uploaded,
                COALESCE(f.files_failed, 0) AS files_failed, COALESCE(f.bytes, 0) AS bytes,
                COALESCE(f.bytes_uploaded, 0) AS bytes_uploaded,
                COALESCE(j.running, 0) AS running, COALESCE(j.queued, 0) AS queued
           FROM batches b
           LEFT JOIN t ON t.batch_id = b.id
           LEFT JOIN f ON f.batch_id = b.id
           LEFT JOIN j ON j.batch_id = b.id
          ORDER BY b.created_at DESC, b.name",
    )
    .fetch_all(ex)
    .await?)
}

/// A batch's name and when it was loaded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchName {
    pub id: BatchId,
    pub name: String,
    pub created_at: OffsetDateTime,
}

pub async fn batch<'e, E: PgExecutor<'e>>(
    ex: E,
    id: BatchId,
) -> Result<Option<BatchName>, StoreError> {
    Ok(
        sqlx::query_as("SELECT id, name, created_at FROM batches WHERE id = $1")
            .bind(id)
            .fetch_optional(ex)
            .await?,
    )
}

/// A failed job of a ticket that is not waiting for review, with what it failed on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FailedJob {
    pub job_id: JobId,
    pub kind: JobKind,
    pub attempt: i32,
    pub job_error: Option<String>,
    pub ticket_id: TicketId,
    #[sqlx(rename = "ref")]
    pub reference: String,
    pub title: String,
    pub ticket_state: TicketState,
    pub ticket_error: Option<String>,
    /// The file of an upload job: as in the manifest, and as read from disk.
    pub path: Option<String>,
    pub resolved_path: Option<String>,
}

/// The failed jobs of `batch` (of one ticket, when given), in manifest order, at most
/// `limit`. Tickets needing review are left out: they are re-sent only on an operator's word.
pub async fn failed_jobs<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: BatchId,
    ticket: Option<TicketId>,
    limit: i64,
) -> Result<Vec<FailedJob>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT j.id AS job_id, j.kind, j.attempt, j.last_error AS job_error,
                t.id AS ticket_id, t.ref, t.title, t.state AS ticket_state,
                t.last_error AS ticket_error, a.path, a.resolved_path
           FROM jobs j JOIN tickets t ON t.id = j.ticket_id
           LEFT JOIN attachments a ON a.id = j.attachment_id
          WHERE j.state = 'failed' AND j.batch_id = $1 AND t.state <> 'needs_review'
            AND ($2::uuid IS NULL OR t.id = $2)
          ORDER BY t.line, j.id
          LIMIT $3",
    )
    .bind(batch)
    .bind(ticket)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// A ticket whose create may have landed: an operator checks Visibuild before re-sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReviewTicket {
    pub ticket_id: TicketId,
    pub batch_id: BatchId,
    #[sqlx(rename = "ref")]
    pub reference: String,
    pub title: String,
    pub project_id: ProjectId,
    pub line: i64,
    pub create_sent_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    /// The failed create job that a re-send puts back.
    pub job_id: Option<JobId>,
}

const REVIEW_COLUMNS: &str = "t.id AS ticket_id, t.batch_id, t.ref, t.title, t.project_id, t.line,
        t.create_sent_at, t.last_error,
        (SELECT j.id FROM jobs j WHERE j.ticket_id = t.id AND j.kind = 'create_ticket'
            AND j.state = 'failed' ORDER BY j.id DESC LIMIT 1) AS job_id";

/// The tickets of `batch` needing review, in manifest order, at most `limit`.
pub async fn review_tickets<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: BatchId,
    limit: i64,
) -> Result<Vec<ReviewTicket>, StoreError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {REVIEW_COLUMNS} FROM tickets t
          WHERE t.batch_id = $1 AND t.state = 'needs_review' ORDER BY t.line LIMIT $2"
    )))
    .bind(batch)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// One ticket, if it needs review.
pub async fn review_ticket<'e, E: PgExecutor<'e>>(
    ex: E,
    ticket: TicketId,
) -> Result<Option<ReviewTicket>, StoreError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {REVIEW_COLUMNS} FROM tickets t WHERE t.id = $1 AND t.state = 'needs_review'"
    )))
    .bind(ticket)
    .fetch_optional(ex)
    .await?)
}

/// Work done in one minute.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MinuteThroughput {
    pub minute: OffsetDateTime,
    pub files: i64,
    pub bytes: i64,
    pub tickets: i64,
    /// Requests to Visibuild and S3 by every process, and how many of them got a 429.
    pub requests: i64,
    pub rate_limited: i64,
}

/// Files uploaded, bytes, tickets created (of `batch`, or all) and requests per minute, for
/// the `minutes` minutes up to now — or up to the last upload or create, when that was
/// earlier: a finished batch still shows how it ran. Every minute is there, zero or not.
pub async fn throughput<'e, E: PgExecutor<'e>>(
    ex: E,
    batch: Option<BatchId>,
    minutes: i32,
) -> Result<Vec<MinuteThroughput>, StoreError> {
    Ok(sqlx::query_as(
        "WITH last AS (
             SELECT date_trunc('minute', LEAST(now(), COALESCE(GREATEST(
                    (SELECT max(a.uploaded_at) FROM attachments a
                       JOIN tickets t ON t.id = a.ticket_id
                      WHERE a.uploaded_at IS NOT NULL
                        AND ($1::uuid IS NULL OR t.batch_id = $1)),
                    (SELECT max(finished_at) FROM tickets
                      WHERE finished_at IS NOT NULL AND state = 'created'
                        AND ($1::uuid IS NULL OR batch_id = $1))), now()))) AS at),
         m AS (
             SELECT generate_series((SELECT at FROM last) - ($2 - 1) * interval '1 minute',
                                    (SELECT at FROM last), interval '1 minute') AS minute),
         f AS (
             SELECT date_trunc('minute', a.uploaded_at) AS minute, count(*) AS files,
                    sum(a.size)::bigint AS bytes
               FROM attachments a JOIN tickets t ON t.id = a.ticket_id
              WHERE a.uploaded_at >= (SELECT min(minute) FROM m)
                AND ($1::uuid IS NULL OR t.batch_id = $1)
              GROUP BY 1),
         c AS (
             SELECT date_trunc('minute', finished_at) AS minute, count(*) AS tickets
               FROM tickets
              WHERE finished_at >= (SELECT min(minute) FROM m) AND state = 'created'
                AND ($1::uuid IS NULL OR batch_id = $1)
              GROUP BY 1),
         r AS (
             SELECT minute, sum(requests)::bigint AS requests,
                    COALESCE(sum(requests) FILTER (WHERE status = 429), 0)::bigint
                        AS rate_limited
               FROM minute_counters WHERE minute >= (SELECT min(minute) FROM m)
              GROUP BY 1)
         SELECT m.minute, COALESCE(f.files, 0) AS files, COALESCE(f.bytes, 0) AS bytes,
                COALESCE(c.tickets, 0) AS tickets, COALESCE(r.requests, 0) AS requests,
                COALESCE(r.rate_limited, 0) AS rate_limited
           FROM m LEFT JOIN f USING (minute) LEFT JOIN c USING (minute)
           LEFT JOIN r USING (minute)
          ORDER BY m.minute",
    )
    .bind(batch)
    .bind(minutes.max(1))
    .fetch_all(ex)
    .await?)
}

/// Whether work is going on: a job is held by a worker, or something finished in the last
/// half minute. The dashboard refreshes itself while it is.
pub async fn work_in_progress<'e, E: PgExecutor<'e>>(ex: E) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'running')
             OR EXISTS (SELECT 1 FROM attachments
                         WHERE uploaded_at > now() - interval '30 seconds')
             OR EXISTS (SELECT 1 FROM tickets
                         WHERE finished_at > now() - interval '30 seconds')",
    )
    .fetch_one(ex)
    .await?)
}

/// Requests of one endpoint that got one answer, counted by a process since its last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCount {
    pub endpoint: &'static str,
    /// HTTP status; 0 when no answer came.
    pub status: i16,
    pub requests: i64,
    pub bytes: i64,
}

/// Add a process's counts to the current minute's rows.
pub async fn add_minute_counts<'e, E: PgExecutor<'e>>(
    ex: E,
    counts: &[RequestCount],
) -> Result<(), StoreError> {
    if counts.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO minute_counters (minute, endpoint, status, requests, bytes)
         SELECT date_trunc('minute', now()), c.endpoint, c.status, c.requests, c.bytes
           FROM UNNEST($1::text[], $2::smallint[], $3::bigint[], $4::bigint[])
             AS c (endpoint, status, requests, bytes)
         ON CONFLICT (minute, endpoint, status) DO UPDATE
            SET requests = minute_counters.requests + EXCLUDED.requests,
                bytes = minute_counters.bytes + EXCLUDED.bytes",
    )
    .bind(counts.iter().map(|c| c.endpoint).collect::<Vec<_>>())
    .bind(counts.iter().map(|c| c.status).collect::<Vec<_>>())
    .bind(counts.iter().map(|c| c.requests).collect::<Vec<_>>())
    .bind(counts.iter().map(|c| c.bytes).collect::<Vec<_>>())
    .execute(ex)
    .await?;
    Ok(())
}

/// Requests ever counted, by endpoint and status, with the bytes uploaded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestTotal {
    pub endpoint: String,
    pub status: i16,
    pub requests: i64,
    pub bytes: i64,
}

pub async fn request_totals<'e, E: PgExecutor<'e>>(ex: E) -> Result<Vec<RequestTotal>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT endpoint, status, sum(requests)::bigint AS requests, sum(bytes)::bigint AS bytes
           FROM minute_counters GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(ex)
    .await?)
}

/// When the last ticket was created, if one was.
pub async fn last_ticket_created_at<'e, E: PgExecutor<'e>>(
    ex: E,
) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT max(finished_at) FROM tickets WHERE state = 'created'")
            .fetch_one(ex)
            .await?,
    )
}

/// One round trip: the store answers.
pub async fn ping<'e, E: PgExecutor<'e>>(ex: E) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(ex).await?;
    Ok(())
}
