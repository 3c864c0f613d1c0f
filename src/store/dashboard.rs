//! What the operations dashboard and `/metrics` read: batches with progress, failed jobs and
//! tickets needing review, throughput per minute, and the per-minute request counters.
//!
//! Every statement is one text for both stores (see [`visibuild_queue::sql`]).

use std::collections::HashMap;

use super::{Conn, Ex, StoreError, Timestamp};
use crate::domain::{BatchId, JobId, JobKind, ProjectId, TicketId, TicketState};
use visibuild_queue::{on, sql};

/// A minute, in microseconds (how SQLite keeps instants).
const MINUTE_MICROS: i64 = 60_000_000;

/// One batch and how far it got.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchOverview {
    pub id: BatchId,
    pub name: String,
    pub created_at: Timestamp,
    pub tickets: i64,
    pub created: i64,
    pub failed: i64,
    pub needs_review: i64,
    /// Cancelled by an operator (`retry` brings them back).
    pub cancelled: i64,
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
pub async fn batch_overviews<'c>(ex: impl Into<Ex<'c>>) -> Result<Vec<BatchOverview>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "WITH t AS (
                 SELECT batch_id, count(*) AS tickets,
                        count(*) FILTER (WHERE state = 'created') AS created,
                        count(*) FILTER (WHERE state = 'failed') AS failed,
                        count(*) FILTER (WHERE state = 'needs_review') AS needs_review,
                        count(*) FILTER (WHERE state = 'cancelled') AS cancelled
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
                 SELECT group_id AS batch_id,
                        count(*) FILTER (WHERE state = 'running') AS running,
                        count(*) FILTER (WHERE state = 'available') AS queued
                   FROM jobs WHERE state IN ('running', 'available') GROUP BY group_id)
             SELECT b.id, b.name, b.created_at,
                    COALESCE(t.tickets, 0) AS tickets, COALESCE(t.created, 0) AS created,
                    COALESCE(t.failed, 0) AS failed,
                    COALESCE(t.needs_review, 0) AS needs_review,
                    COALESCE(t.cancelled, 0) AS cancelled,
                    COALESCE(f.files, 0) AS files,
                    COALESCE(f.files_uploaded, 0) AS files_uploaded,
                    COALESCE(f.files_failed, 0) AS files_failed, COALESCE(f.bytes, 0) AS bytes,
                    COALESCE(f.bytes_uploaded, 0) AS bytes_uploaded,
                    COALESCE(j.running, 0) AS running, COALESCE(j.queued, 0) AS queued
               FROM batches b
               LEFT JOIN t ON t.batch_id = b.id
               LEFT JOIN f ON f.batch_id = b.id
               LEFT JOIN j ON j.batch_id = b.id
              ORDER BY b.created_at DESC, b.name"
        ),
        |c, q| sqlx::query_as(q).fetch_all(c).await
    )?)
}

/// A batch's name and when it was loaded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchName {
    pub id: BatchId,
    pub name: String,
    pub created_at: Timestamp,
}

pub async fn batch<'c>(
    ex: impl Into<Ex<'c>>,
    id: BatchId,
) -> Result<Option<BatchName>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!("SELECT id, name, created_at FROM batches WHERE id = $1"),
        |c, q| sqlx::query_as(q).bind(id).fetch_optional(c).await
    )?)
}

/// A failed job of a ticket that is not waiting for review, with what it failed on.
#[derive(Debug, Clone)]
pub struct FailedJob {
    pub job_id: JobId,
    pub kind: JobKind,
    pub attempt: i32,
    pub job_error: Option<String>,
    pub ticket_id: TicketId,
    pub reference: String,
    pub title: String,
    pub ticket_state: TicketState,
    pub ticket_error: Option<String>,
    /// The file of an upload job: as in the manifest, and as read from disk.
    pub path: Option<String>,
    pub resolved_path: Option<String>,
}

/// [`FailedJob`] as read: the queue keeps a job's kind as text.
#[derive(Debug, sqlx::FromRow)]
struct FailedJobRow {
    job_id: JobId,
    kind: String,
    attempt: i32,
    job_error: Option<String>,
    ticket_id: TicketId,
    #[sqlx(rename = "ref")]
    reference: String,
    title: String,
    ticket_state: TicketState,
    ticket_error: Option<String>,
    path: Option<String>,
    resolved_path: Option<String>,
}

impl FailedJobRow {
    /// `None` for a kind that is not the importer's (the statement reads only its own).
    fn parse(self) -> Option<FailedJob> {
        Some(FailedJob {
            job_id: self.job_id,
            kind: JobKind::parse(&self.kind)?,
            attempt: self.attempt,
            job_error: self.job_error,
            ticket_id: self.ticket_id,
            reference: self.reference,
            title: self.title,
            ticket_state: self.ticket_state,
            ticket_error: self.ticket_error,
            path: self.path,
            resolved_path: self.resolved_path,
        })
    }
}

/// The failed jobs of `batch` (of one ticket, when given), in manifest order, at most
/// `limit`. Tickets needing review are left out: they are re-sent only on an operator's word.
pub async fn failed_jobs<'c>(
    ex: impl Into<Ex<'c>>,
    batch: BatchId,
    ticket: Option<TicketId>,
    limit: i64,
) -> Result<Vec<FailedJob>, StoreError> {
    // The ticket of a job: an upload's attachment's, or a create's target.
    let rows: Vec<FailedJobRow> = on!(
        ex.into(),
        sql!(
            "SELECT j.id AS job_id, j.kind, j.attempt, j.last_error AS job_error,
                    t.id AS ticket_id, t.ref, t.title, t.state AS ticket_state,
                    t.last_error AS ticket_error, a.path, a.resolved_path
               FROM jobs j
               LEFT JOIN attachments a ON j.kind = 'upload' AND a.id = j.target_id
               JOIN tickets t
                 ON t.id = CASE WHEN j.kind = 'upload' THEN a.ticket_id ELSE j.target_id END
              WHERE j.state = 'failed' AND j.group_id = $1
                AND j.kind IN ('upload', 'create_ticket') AND t.state <> 'needs_review'
                AND ($2::uuid IS NULL OR t.id = $2)
              ORDER BY t.line, j.id
              LIMIT $3"
        ),
        |c, q| sqlx::query_as(q)
            .bind(batch)
            .bind(ticket)
            .bind(limit)
            .fetch_all(c)
            .await
    )?;
    Ok(rows.into_iter().filter_map(FailedJobRow::parse).collect())
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
    pub create_sent_at: Option<Timestamp>,
    pub last_error: Option<String>,
    /// The failed create job that a re-send puts back.
    pub job_id: Option<JobId>,
}

const REVIEW_COLUMNS: &str = "t.id AS ticket_id, t.batch_id, t.ref, t.title, t.project_id, t.line,
        t.create_sent_at, t.last_error,
        (SELECT j.id FROM jobs j WHERE j.target_id = t.id AND j.kind = 'create_ticket'
            AND j.state = 'failed' ORDER BY j.id DESC LIMIT 1) AS job_id";

/// The tickets of `batch` needing review, in manifest order, at most `limit`.
pub async fn review_tickets<'c>(
    ex: impl Into<Ex<'c>>,
    batch: BatchId,
    limit: i64,
) -> Result<Vec<ReviewTicket>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(&format!(
            "SELECT {REVIEW_COLUMNS} FROM tickets t
              WHERE t.batch_id = $1 AND t.state = 'needs_review' ORDER BY t.line LIMIT $2"
        )),
        |c, q| sqlx::query_as(q).bind(batch).bind(limit).fetch_all(c).await
    )?)
}

/// One ticket, if it needs review.
pub async fn review_ticket<'c>(
    ex: impl Into<Ex<'c>>,
    ticket: TicketId,
) -> Result<Option<ReviewTicket>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(&format!(
            "SELECT {REVIEW_COLUMNS} FROM tickets t WHERE t.id = $1 AND t.state = 'needs_review'"
        )),
        |c, q| sqlx::query_as(q).bind(ticket).fetch_optional(c).await
    )?)
}

/// Work done in one minute.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MinuteThroughput {
    pub minute: Timestamp,
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
pub async fn throughput(
    conn: &mut Conn<'_>,
    batch: Option<BatchId>,
    minutes: i32,
) -> Result<Vec<MinuteThroughput>, StoreError> {
    // The store's clock, and its last upload or create (GREATEST of the two, either NULL).
    let (now, latest): (Timestamp, Option<Timestamp>) = on!(
        conn.reborrow(),
        sql!(
            "SELECT {now} AS store_now, {greatest}(COALESCE(u, f), COALESCE(f, u)) AS latest
               FROM (SELECT (SELECT max(a.uploaded_at) FROM attachments a
                               JOIN tickets t ON t.id = a.ticket_id
                              WHERE a.uploaded_at IS NOT NULL
                                AND ($1::uuid IS NULL OR t.batch_id = $1)) AS u,
                            (SELECT max(finished_at) FROM tickets
                              WHERE finished_at IS NOT NULL AND state = 'created'
                                AND ($1::uuid IS NULL OR batch_id = $1)) AS f) AS activity"
        ),
        |c, q| sqlx::query_as(q).bind(batch).fetch_one(c).await
    )?;
    let Some(window) = Window::ending_at(latest.map_or(now, |at| at.min(now)), minutes) else {
        return Ok(Vec::new());
    };
    // Rows of three kinds, one per minute each, summed into one row per minute.
    let rows: Vec<MinuteThroughput> = on!(
        conn.reborrow(),
        sql!(
            "SELECT minute, sum(files)::bigint AS files, sum(bytes)::bigint AS bytes,
                    sum(tickets)::bigint AS tickets, sum(requests)::bigint AS requests,
                    sum(rate_limited)::bigint AS rate_limited
               FROM (SELECT {minute a.uploaded_at} AS minute, count(*) AS files,
                            sum(a.size) AS bytes, 0 AS tickets, 0 AS requests,
                            0 AS rate_limited
                       FROM attachments a JOIN tickets t ON t.id = a.ticket_id
                      WHERE a.uploaded_at >= $2 AND a.uploaded_at < $3
                        AND ($1::uuid IS NULL OR t.batch_id = $1)
                      GROUP BY 1
                     UNION ALL
                     SELECT {minute finished_at}, 0, 0, count(*), 0, 0
                       FROM tickets
                      WHERE finished_at >= $2 AND finished_at < $3 AND state = 'created'
                        AND ($1::uuid IS NULL OR batch_id = $1)
                      GROUP BY 1
                     UNION ALL
                     SELECT minute, 0, 0, 0, sum(requests),
                            COALESCE(sum(requests) FILTER (WHERE status = 429), 0)
                       FROM minute_counters WHERE minute >= $2 AND minute < $3
                      GROUP BY 1) AS counted
              GROUP BY minute ORDER BY minute"
        ),
        |c, q| sqlx::query_as(q)
            .bind(batch)
            .bind(window.first)
            .bind(window.end)
            .fetch_all(c)
            .await
    )?;
    Ok(window.fill(rows))
}

/// The minutes a throughput chart covers: from `first` (a minute's start) up to `end`
/// (exclusive), `count` of them.
#[derive(Debug, Clone, Copy)]
struct Window {
    first: Timestamp,
    end: Timestamp,
    count: i64,
}

impl Window {
    /// The `minutes` minutes whose last is the minute of `last`.
    fn ending_at(last: Timestamp, minutes: i32) -> Option<Window> {
        let count = i64::from(minutes.max(1));
        let last_minute = last.unix_micros().div_euclid(MINUTE_MICROS) * MINUTE_MICROS;
        Some(Window {
            first: Timestamp::from_unix_micros(last_minute - (count - 1) * MINUTE_MICROS).ok()?,
            end: Timestamp::from_unix_micros(last_minute + MINUTE_MICROS).ok()?,
            count,
        })
    }

    /// One row per minute of the window, in order: the counted one, or zeros.
    fn fill(&self, rows: Vec<MinuteThroughput>) -> Vec<MinuteThroughput> {
        let mut counted: HashMap<i64, MinuteThroughput> = rows
            .into_iter()
            .map(|r| (r.minute.unix_micros(), r))
            .collect();
        let first = self.first.unix_micros();
        (0..self.count)
            .filter_map(|i| {
                let at = first + i * MINUTE_MICROS;
                counted.remove(&at).or_else(|| {
                    Some(MinuteThroughput {
                        minute: Timestamp::from_unix_micros(at).ok()?,
                        files: 0,
                        bytes: 0,
                        tickets: 0,
                        requests: 0,
                        rate_limited: 0,
                    })
                })
            })
            .collect()
    }
}

/// Whether work is going on: a job is held by a worker, or something finished in the last
/// half minute. The dashboard refreshes itself while it is.
pub async fn work_in_progress<'c>(ex: impl Into<Ex<'c>>) -> Result<bool, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'running')
                 OR EXISTS (SELECT 1 FROM attachments WHERE uploaded_at > {after -30000000})
                 OR EXISTS (SELECT 1 FROM tickets WHERE finished_at > {after -30000000})"
        ),
        |c, q| sqlx::query_scalar(q).fetch_one(c).await
    )?)
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

/// Add a process's counts to the current minute's rows (by the store's clock), one
/// statement per row: run it in a transaction so that a failed flush adds nothing.
pub async fn add_minute_counts(
    conn: &mut Conn<'_>,
    counts: &[RequestCount],
) -> Result<(), StoreError> {
    for count in counts {
        // `WHERE true`: without it SQLite would read `ON CONFLICT` as the `FROM`'s join
        // constraint.
        on!(
            conn.reborrow(),
            sql!(
                "INSERT INTO minute_counters (minute, endpoint, status, requests, bytes)
                 SELECT {minute clock.at}, $1, $2, $3, $4
                   FROM (SELECT {now} AS at) AS clock WHERE true
                 ON CONFLICT (minute, endpoint, status) DO UPDATE
                    SET requests = minute_counters.requests + EXCLUDED.requests,
                        bytes = minute_counters.bytes + EXCLUDED.bytes"
            ),
            |c, q| sqlx::query(q)
                .bind(count.endpoint)
                .bind(count.status)
                .bind(count.requests)
                .bind(count.bytes)
                .execute(c)
                .await
                .map(|_| ())
        )?;
    }
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

pub async fn request_totals<'c>(ex: impl Into<Ex<'c>>) -> Result<Vec<RequestTotal>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT endpoint, status, sum(requests)::bigint AS requests,
                    sum(bytes)::bigint AS bytes
               FROM minute_counters GROUP BY 1, 2 ORDER BY 1, 2"
        ),
        |c, q| sqlx::query_as(q).fetch_all(c).await
    )?)
}

/// When the last ticket was created, if one was.
pub async fn last_ticket_created_at<'c>(
    ex: impl Into<Ex<'c>>,
) -> Result<Option<Timestamp>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!("SELECT max(finished_at) FROM tickets WHERE state = 'created'"),
        |c, q| sqlx::query_scalar(q).fetch_one(c).await
    )?)
}

/// One round trip: the store answers.
pub async fn ping<'c>(ex: impl Into<Ex<'c>>) -> Result<(), StoreError> {
    on!(ex.into(), sql!("SELECT 1"), |c, q| sqlx::query(q)
        .execute(c)
        .await
        .map(|_| ()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> Timestamp {
        Timestamp::from_unix_micros(micros).unwrap()
    }

    #[test]
    fn a_throughput_window_has_every_minute_up_to_the_last_one_zero_or_not() {
        // 12:03:30 → the minutes 12:01, 12:02, 12:03.
        let noon = 1_796_126_400 * 1_000_000;
        let window = Window::ending_at(at(noon + 3 * MINUTE_MICROS + 30_000_000), 3).unwrap();
        assert_eq!(window.first, at(noon + MINUTE_MICROS));
        assert_eq!(window.end, at(noon + 4 * MINUTE_MICROS));
        let counted = MinuteThroughput {
            minute: at(noon + 2 * MINUTE_MICROS),
            files: 4,
            bytes: 400,
            tickets: 1,
            requests: 9,
            rate_limited: 2,
        };
        let rows = window.fill(vec![counted.clone()]);
        assert_eq!(
            rows.iter().map(|r| r.minute).collect::<Vec<_>>(),
            [1, 2, 3].map(|m| at(noon + m * MINUTE_MICROS))
        );
        assert_eq!(rows[1], counted);
        assert_eq!((rows[0].files, rows[2].requests), (0, 0));
    }
}
