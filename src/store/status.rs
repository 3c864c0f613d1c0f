//! Read-side queries for operators: counts by state, failure reasons, per-ticket results,
//! and the operator's retry, which puts failed tickets' work back in the queue.
//!
//! Every statement is one text for both stores (see [`visibuild_queue::sql`]). The retry
//! chooses jobs with SELECTs and changes them only through [`visibuild_queue::apply`].

use super::{Conn, Ex, StoreError, Timestamp};
use crate::domain::{BatchId, JobId, JobKind, JobState, TicketId, TicketState};
use uuid::Uuid;
use visibuild_queue::{List, Outcome, Transition, on, sql};

/// What is left to do (for progress bars).
#[derive(Debug, Default, Clone, Copy)]
pub struct Remaining {
    pub tickets: u64,
    pub files: u64,
    pub bytes: u64,
}

pub async fn remaining<'c>(
    ex: impl Into<Ex<'c>>,
    batch: Option<BatchId>,
) -> Result<Remaining, StoreError> {
    let (tickets, files, bytes): (i64, i64, i64) = on!(
        ex.into(),
        sql!(
            "SELECT (SELECT count(*) FROM tickets t
                      WHERE t.state IN ('pending', 'creating')
                        AND ($1::uuid IS NULL OR t.batch_id = $1)),
                    count(a.id), COALESCE(sum(a.size), 0)::bigint
               FROM attachments a JOIN tickets t ON t.id = a.ticket_id
              WHERE a.state = 'pending' AND ($1::uuid IS NULL OR t.batch_id = $1)"
        ),
        |c, q| sqlx::query_as(q).bind(batch).fetch_one(c).await
    )?;
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
    pub cancelled: i64,
    pub top_errors: Vec<(String, i64)>,
}

pub async fn run_summary(
    conn: &mut Conn<'_>,
    batch: Option<BatchId>,
) -> Result<RunSummary, StoreError> {
    let mut s = RunSummary::default();
    for (state, count) in tickets_by_state(conn.reborrow(), batch).await? {
        match state {
            TicketState::Created => s.created = count,
            TicketState::Failed => s.failed = count,
            TicketState::NeedsReview => s.needs_review = count,
            TicketState::Pending | TicketState::Creating => s.pending += count,
            TicketState::Cancelled => s.cancelled = count,
        }
    }
    s.top_errors = top_errors(conn.reborrow(), batch, 5).await?;
    Ok(s)
}

/// How many tickets are in each state (only the states that occur), in the order of
/// [`TicketState::ALL`].
pub async fn tickets_by_state<'c>(
    ex: impl Into<Ex<'c>>,
    batch: Option<BatchId>,
) -> Result<Vec<(TicketState, i64)>, StoreError> {
    let mut counts: Vec<(TicketState, i64)> = on!(
        ex.into(),
        sql!(
            "SELECT state, count(*) FROM tickets WHERE ($1::uuid IS NULL OR batch_id = $1)
              GROUP BY state"
        ),
        |c, q| sqlx::query_as(q).bind(batch).fetch_all(c).await
    )?;
    counts.sort_by_key(|(state, _)| lifecycle_order(*state));
    Ok(counts)
}

/// A ticket state's place in [`TicketState::ALL`] (Postgres's enum order; SQLite keeps
/// states as text, which sorts otherwise).
fn lifecycle_order(state: TicketState) -> usize {
    TicketState::ALL
        .iter()
        .position(|s| *s == state)
        .unwrap_or(usize::MAX)
}

/// The commonest `last_error`s of failed or review tickets.
pub async fn top_errors<'c>(
    ex: impl Into<Ex<'c>>,
    batch: Option<BatchId>,
    limit: i64,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT COALESCE(last_error, '(no reason recorded)') AS reason, count(*) AS n
               FROM tickets
              WHERE state IN ('failed', 'needs_review') AND ($1::uuid IS NULL OR batch_id = $1)
              GROUP BY 1 ORDER BY n DESC, 1 LIMIT $2"
        ),
        |c, q| sqlx::query_as(q).bind(batch).bind(limit).fetch_all(c).await
    )?)
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
    /// Claims skip this batch's jobs (`pause`): its own pause or the pause of everything.
    pub paused: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize, sqlx::FromRow)]
pub struct JobCounts {
    pub waiting: i64,
    pub blocked: i64,
    pub running: i64,
    pub retrying: i64,
    pub failed: i64,
    pub completed: i64,
    pub cancelled: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ErrorCount {
    pub reason: String,
    pub count: i64,
    /// The server's own error behind `reason`, structured (`code`, `message`, `field`,
    /// `key`), when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_error: Option<serde_json::Value>,
}

/// The server's own errors (JSON) of failed or review tickets, by their `last_error`.
async fn error_details(
    conn: &mut Conn<'_>,
    batch: Option<BatchId>,
) -> Result<std::collections::HashMap<String, serde_json::Value>, StoreError> {
    let rows: Vec<(String, String)> = on!(
        conn.reborrow(),
        sql!(
            "SELECT last_error, MIN(error_detail) FROM tickets
              WHERE state IN ('failed', 'needs_review') AND ($1::uuid IS NULL OR batch_id = $1)
                AND last_error IS NOT NULL AND error_detail IS NOT NULL
              GROUP BY last_error"
        ),
        |c, q| sqlx::query_as(q).bind(batch).fetch_all(c).await
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|(reason, json)| Some((reason, serde_json::from_str(&json).ok()?)))
        .collect())
}

pub async fn batch_status(
    conn: &mut Conn<'_>,
    batch: BatchId,
    name: &str,
    created_at: Timestamp,
) -> Result<BatchStatus, StoreError> {
    let tickets = tickets_by_state(conn.reborrow(), Some(batch))
        .await?
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    let files: Vec<(String, i64, i64)> = on!(
        conn.reborrow(),
        sql!(
            "SELECT a.state::text, count(*), COALESCE(sum(a.size), 0)::bigint
               FROM attachments a JOIN tickets t ON t.id = a.ticket_id
              WHERE t.batch_id = $1 GROUP BY 1"
        ),
        |c, q| sqlx::query_as(q).bind(batch).fetch_all(c).await
    )?;
    let bytes_uploaded = files
        .iter()
        .filter(|f| f.0 == "uploaded")
        .map(|f| f.2)
        .sum();
    let bytes_total = files.iter().map(|f| f.2).sum();
    let jobs: JobCounts = on!(
        conn.reborrow(),
        sql!(
            "SELECT count(*) FILTER (WHERE state = 'available' AND run_at <= {now}) AS waiting,
                    count(*) FILTER (WHERE state = 'blocked') AS blocked,
                    count(*) FILTER (WHERE state = 'running') AS running,
                    count(*) FILTER (WHERE state = 'available' AND run_at > {now}) AS retrying,
                    count(*) FILTER (WHERE state = 'failed') AS failed,
                    count(*) FILTER (WHERE state = 'completed') AS completed,
                    count(*) FILTER (WHERE state = 'cancelled') AS cancelled
               FROM jobs WHERE group_id = $1"
        ),
        |c, q| sqlx::query_as(q).bind(batch).fetch_one(c).await
    )?;
    let (files_last_minute, tickets_last_minute): (i64, i64) = on!(
        conn.reborrow(),
        sql!(
            "SELECT (SELECT count(*) FROM attachments a JOIN tickets t ON t.id = a.ticket_id
                      WHERE t.batch_id = $1 AND a.uploaded_at > {after -60000000}),
                    (SELECT count(*) FROM tickets
                      WHERE batch_id = $1 AND state = 'created'
                        AND finished_at > {after -60000000})"
        ),
        |c, q| sqlx::query_as(q).bind(batch).fetch_one(c).await
    )?;
    let files_pending: i64 = files.iter().filter(|f| f.0 == "pending").map(|f| f.1).sum();
    let eta_seconds = (files_last_minute > 0 && files_pending > 0)
        .then(|| files_pending * 60 / files_last_minute);
    let mut details = error_details(conn, Some(batch)).await?;
    let top_errors = top_errors(conn.reborrow(), Some(batch), 5)
        .await?
        .into_iter()
        .map(|(reason, count)| ErrorCount {
            server_error: details.remove(&reason),
            reason,
            count,
        })
        .collect();
    let changed_examples: Vec<String> = on!(
        conn.reborrow(),
        sql!(
            "SELECT ref || ': ' || changed_since_load FROM tickets
              WHERE batch_id = $1 AND changed_since_load IS NOT NULL ORDER BY line LIMIT 5"
        ),
        |c, q| sqlx::query_scalar(q).bind(batch).fetch_all(c).await
    )?;
    let changed_since_load: i64 = on!(
        conn.reborrow(),
        sql!(
            "SELECT count(*) FROM tickets
              WHERE batch_id = $1 AND changed_since_load IS NOT NULL"
        ),
        |c, q| sqlx::query_scalar(q).bind(batch).fetch_one(c).await
    )?;
    let retry_reasons: Vec<(String, i64)> = on!(
        conn.reborrow(),
        sql!(
            "SELECT last_error, count(*) AS n FROM jobs
              WHERE group_id = $1 AND state = 'available' AND last_error IS NOT NULL
              GROUP BY 1 ORDER BY n DESC, 1 LIMIT 5"
        ),
        |c, q| sqlx::query_as(q).bind(batch).fetch_all(c).await
    )?;
    Ok(BatchStatus {
        batch: name.to_string(),
        created_at: created_at
            .0
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
            .map(|(reason, count)| ErrorCount {
                reason,
                count,
                server_error: None,
            })
            .collect(),
        changed_since_load,
        changed_examples,
        paused: visibuild_queue::pauses(conn.reborrow())
            .await?
            .iter()
            .any(|(group, _)| group.is_none_or(|g| g == batch.0)),
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
    /// Files left out of the ticket (`--skip-quarantined`): `path: why`, `;`-separated.
    pub skipped_files: Option<String>,
}

/// Which tickets a report covers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResultFilter {
    pub batch: Option<BatchId>,
    /// Only failed tickets and those needing review.
    pub failed_only: bool,
}

pub async fn ticket_results<'c>(
    ex: impl Into<Ex<'c>>,
    filter: ResultFilter,
) -> Result<Vec<TicketResult>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT b.name AS batch, t.ref, t.line, t.project_id, t.state, t.visibuild_id,
                    (SELECT string_agg(a.key, ';' ORDER BY a.position) FROM attachments a
                      WHERE a.ticket_id = t.id AND a.state = 'uploaded'
                        AND a.skipped IS NULL) AS attachment_keys,
                    (SELECT max(j.attempt) FROM jobs j
                      WHERE j.target_id = t.id AND j.kind = 'create_ticket') AS attempts,
                    t.last_error,
                    (SELECT string_agg(a.path || ': ' || a.change_note, '; ' ORDER BY a.position)
                       FROM attachments a
                      WHERE a.ticket_id = t.id AND a.change_note IS NOT NULL) AS file_changes,
                    t.changed_since_load AS changed_fields,
                    (SELECT string_agg(a.path || ': ' || a.skipped, '; ' ORDER BY a.position)
                       FROM attachments a
                      WHERE a.ticket_id = t.id AND a.skipped IS NOT NULL) AS skipped_files
               FROM tickets t JOIN batches b ON b.id = t.batch_id
              WHERE ($1::uuid IS NULL OR t.batch_id = $1)
                AND (NOT $2 OR t.state IN ('failed', 'needs_review'))
              ORDER BY b.created_at, t.line"
        ),
        |c, q| sqlx::query_as(q)
            .bind(filter.batch)
            .bind(filter.failed_only)
            .fetch_all(c)
            .await
    )?)
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
pub async fn file_results<'c>(
    ex: impl Into<Ex<'c>>,
    filter: ResultFilter,
) -> Result<Vec<FileResult>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(
            "SELECT b.name AS batch, t.ref, t.line, a.path, a.size, a.md5, a.key, a.state,
                    a.last_error AS error, a.change_note AS file_changes
               FROM attachments a JOIN tickets t ON t.id = a.ticket_id
               JOIN batches b ON b.id = t.batch_id
              WHERE ($1::uuid IS NULL OR t.batch_id = $1)
                AND (NOT $2 OR t.state IN ('failed', 'needs_review'))
              ORDER BY b.created_at, t.line, a.position"
        ),
        |c, q| sqlx::query_as(q)
            .bind(filter.batch)
            .bind(filter.failed_only)
            .fetch_all(c)
            .await
    )?)
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
    /// Only this project's tickets (its refused gate re-opens).
    pub project: Option<Uuid>,
}

/// The states of the tickets with this ref (one per project that has it), in `batch` or
/// in any, in the order of [`TicketState::ALL`]. Empty when no ticket has that ref.
pub async fn ticket_states_by_ref<'c>(
    ex: impl Into<Ex<'c>>,
    batch: Option<BatchId>,
    reference: &str,
) -> Result<Vec<TicketState>, StoreError> {
    let mut states: Vec<TicketState> = on!(
        ex.into(),
        sql!("SELECT state FROM tickets WHERE ref = $2 AND ($1::uuid IS NULL OR batch_id = $1)"),
        |c, q| sqlx::query_scalar(q)
            .bind(batch)
            .bind(reference)
            .fetch_all(c)
            .await
    )?;
    states.sort_by_key(|s| lifecycle_order(*s));
    Ok(states)
}

/// A job's state, if the job exists (in `batch`, when one is given).
pub async fn job_state<'c>(
    ex: impl Into<Ex<'c>>,
    batch: Option<BatchId>,
    job: JobId,
) -> Result<Option<JobState>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!("SELECT state FROM jobs WHERE id = $2 AND ($1::uuid IS NULL OR group_id = $1)"),
        |c, q| sqlx::query_scalar(q)
            .bind(batch)
            .bind(job)
            .fetch_optional(c)
            .await
    )?)
}

/// What a retry put back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Retried {
    pub jobs: u64,
    pub tickets: u64,
}

/// A failed job in a retry's scope.
#[derive(Debug, sqlx::FromRow)]
struct FailedInScope {
    id: JobId,
    kind: String,
    /// An upload's attachment (a create's target is its ticket).
    target_id: Option<Uuid>,
    ticket_id: TicketId,
}

/// A create job of a ticket a retry touches, and whether the ticket still has files that
/// are not uploaded (its create must wait for them).
#[derive(Debug, sqlx::FromRow)]
struct CreateOfTicket {
    id: JobId,
    state: JobState,
    waiting: bool,
}

/// Put failed and cancelled jobs (and their attachments and tickets) back in the queue with `attempts`
/// more attempts each. A retried upload re-opens its ticket's fan-in: the ticket's create
/// waits (blocked) until every file is uploaded. Run it in a transaction.
pub async fn retry(
    conn: &mut Conn<'_>,
    scope: &RetryScope,
    attempts: i32,
) -> Result<Retried, StoreError> {
    let only: Option<Vec<i64>> = scope
        .jobs
        .as_ref()
        .map(|jobs| jobs.iter().map(|j| j.0).collect());
    // The ticket of a job: an upload's attachment's, or a create's target.
    let failed: Vec<FailedInScope> = on!(
        conn.reborrow(),
        sql!(
            "SELECT j.id, j.kind, j.target_id, t.id AS ticket_id
               FROM jobs j
               LEFT JOIN attachments a ON j.kind = 'upload' AND a.id = j.target_id
               JOIN tickets t
                 ON t.id = CASE WHEN j.kind = 'upload' THEN a.ticket_id ELSE j.target_id END
              WHERE j.state IN ('failed', 'cancelled') AND j.kind IN ('upload', 'create_ticket')
                AND ($1::uuid IS NULL OR j.group_id = $1)
                AND ($2::text IS NULL OR t.ref = $2)
                AND ($3::bigint[] IS NULL OR j.id {in_list $3})
                AND ($4::text IS NULL OR {strpos}(j.last_error, $4) > 0
                     OR {strpos}(t.last_error, $4) > 0)
                AND (t.state <> 'needs_review' OR $5)
                AND ($6::uuid IS NULL OR t.project_id = $6)
              ORDER BY j.id"
        ),
        |c, q| sqlx::query_as(q)
            .bind(scope.batch)
            .bind(scope.reference.as_deref())
            .bind(only.as_deref().map(List))
            .bind(scope.error_contains.as_deref())
            .bind(scope.force)
            .bind(scope.project)
            .fetch_all(c)
            .await
    )?;
    if failed.is_empty() {
        return Ok(Retried::default());
    }
    let is_upload = |f: &&FailedInScope| JobKind::parse(&f.kind) == Some(JobKind::Upload);
    let ids: Vec<i64> = failed.iter().map(|f| f.id.0).collect();
    let attachments: Vec<Uuid> = failed
        .iter()
        .filter(is_upload)
        .filter_map(|f| f.target_id)
        .collect();
    let tickets: Vec<Uuid> = {
        let mut t: Vec<Uuid> = failed.iter().map(|f| f.ticket_id.0).collect();
        t.sort();
        t.dedup();
        t
    };
    on!(
        conn.reborrow(),
        sql!("UPDATE attachments SET state = 'pending' WHERE id {in_ids $1} AND state = 'failed'"),
        |c, q| sqlx::query(q)
            .bind(List(&attachments))
            .execute(c)
            .await
            .map(|_| ())
    )?;
    // The tickets' create jobs, retried or blocked, wait for their uploads again: blocked
    // while any file is not uploaded, else runnable. The fan-in re-opens.
    let creates: Vec<CreateOfTicket> = on!(
        conn.reborrow(),
        sql!(
            "SELECT j.id, j.state,
                    EXISTS (SELECT 1 FROM attachments a
                             WHERE a.ticket_id = j.target_id AND a.state <> 'uploaded') AS waiting
               FROM jobs j
              WHERE j.kind = 'create_ticket' AND j.target_id {in_ids $1}
                AND (j.state = 'blocked' OR j.id {in_list $2})
              ORDER BY j.id"
        ),
        |c, q| sqlx::query_as(q)
            .bind(List(&tickets))
            .bind(List(&ids))
            .fetch_all(c)
            .await
    )?;
    let mut transitions: Vec<Transition> = failed
        .iter()
        .filter(is_upload)
        .map(|f| Transition::revive(f.id, attempts, false))
        .collect();
    for create in &creates {
        if ids.contains(&create.id.0) {
            transitions.push(Transition::revive(create.id, attempts, create.waiting));
        } else if create.state == JobState::Blocked && !create.waiting {
            transitions.push(Transition::unblock(create.id));
        }
    }
    let outcomes = visibuild_queue::apply(conn.reborrow(), &transitions).await?;
    let revived = transitions
        .iter()
        .zip(&outcomes)
        .filter(|(t, o)| matches!(t, Transition::Revive { .. }) && **o != Outcome::Fenced)
        .count();
    // Forced: the operator checked Visibuild and wants the create sent again.
    on!(
        conn.reborrow(),
        sql!(
            "UPDATE tickets SET state = 'pending', updated_at = {now}, finished_at = NULL,
                    create_unanswered = CASE WHEN state = 'needs_review' THEN false
                                             ELSE create_unanswered END
              WHERE id {in_ids $1} AND state IN ('failed', 'needs_review', 'cancelled')
                AND NOT EXISTS (SELECT 1 FROM attachments a
                                 WHERE a.ticket_id = tickets.id AND a.state = 'failed')"
        ),
        |c, q| sqlx::query(q)
            .bind(List(&tickets))
            .execute(c)
            .await
            .map(|_| ())
    )?;
    // A refused project the operator retries gets its gate again: one ticket first.
    super::gates::reopen_refused(conn, &tickets).await?;
    visibuild_queue::notify(conn.reborrow()).await?;
    Ok(Retried {
        jobs: revived as u64,
        tickets: tickets.len() as u64,
    })
}
