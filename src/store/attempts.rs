//! Every attempt of every job: when, which step, how it ended and the server's answer in
//! words; the last [`ATTEMPTS_KEPT`] of each job are kept. `status --ticket` and the
//! dashboard's ticket page list a ticket's.

use super::{Conn, Ex, StoreError, Timestamp};
use crate::domain::{BatchId, JobId, TicketId};
use uuid::Uuid;
use visibuild_queue::{ClaimedJob, on, sql};

/// Attempts kept per job: the oldest go when a job has more.
pub const ATTEMPTS_KEPT: i32 = 20;

/// How an attempt ended, in a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The work is done (a file uploaded, a ticket created).
    Done,
    /// Failed; it runs again later.
    Retrying,
    /// Failed for good (or out of attempts).
    Failed,
    /// Not now (a rate limit, an outage, the project's first ticket): no attempt used.
    Waiting,
    /// A create whose outcome is unknown.
    NeedsReview,
    /// Its files go up again first.
    Reupload,
    /// Given up unsent: the ticket was cancelled.
    Cancelled,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Done => "done",
            AttemptOutcome::Retrying => "retrying",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Waiting => "waiting",
            AttemptOutcome::NeedsReview => "needs_review",
            AttemptOutcome::Reupload => "reupload",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

/// Records one attempt of `job` (and forgets the job's oldest beyond [`ATTEMPTS_KEPT`]).
/// `answer` is the server's answer or the failure, in words.
pub async fn record(
    conn: &mut Conn<'_>,
    job: &ClaimedJob,
    outcome: AttemptOutcome,
    answer: Option<&str>,
) -> Result<(), StoreError> {
    let Some(batch) = job.group_id else {
        return Ok(());
    };
    let answer = answer.map(|a| truncate(a, MAX_ANSWER_CHARS));
    on!(
        conn.reborrow(),
        sql!(
            "INSERT INTO attempts (job_id, batch_id, target_id, attempt, step, outcome, answer)
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ),
        |c, q| sqlx::query(q)
            .bind(job.id)
            .bind(batch)
            .bind(job.target_id)
            .bind(job.attempt)
            .bind(step_of(&job.kind))
            .bind(outcome.as_str())
            .bind(answer)
            .execute(c)
            .await
            .map(drop)
    )?;
    // Each claim is one attempt: until a job has had more than it keeps, nothing to forget.
    if job.attempt > ATTEMPTS_KEPT {
        on!(
            conn.reborrow(),
            sql!(
                "DELETE FROM attempts
                  WHERE job_id = $1
                    AND id <= (SELECT id FROM attempts WHERE job_id = $1
                                ORDER BY id DESC LIMIT 1 OFFSET $2)"
            ),
            |c, q| sqlx::query(q)
                .bind(job.id)
                .bind(i64::from(ATTEMPTS_KEPT))
                .execute(c)
                .await
                .map(drop)
        )?;
    }
    Ok(())
}

/// Longer answers are cut to this many characters.
const MAX_ANSWER_CHARS: usize = 2000;

fn truncate(text: &str, chars: usize) -> &str {
    match text.char_indices().nth(chars) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// The step a job's kind stands for, as the operator reads it.
fn step_of(kind: &str) -> &'static str {
    match kind {
        "upload" => "upload",
        "create_ticket" => "create",
        _ => "other",
    }
}

/// One attempt, as listed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Attempt {
    pub job_id: JobId,
    pub attempt: i32,
    /// When it ended (RFC 3339, UTC).
    pub at: String,
    pub step: String,
    /// The upload's file (its path in the manifest); none for a create.
    pub file: Option<String>,
    pub outcome: String,
    pub answer: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    job_id: JobId,
    attempt: i32,
    at: Timestamp,
    step: String,
    file: Option<String>,
    outcome: String,
    answer: Option<String>,
}

/// Every attempt kept of a ticket's jobs (its create and its files' uploads), oldest first.
pub async fn of_ticket<'c>(
    ex: impl Into<Ex<'c>>,
    ticket: TicketId,
) -> Result<Vec<Attempt>, StoreError> {
    let rows: Vec<AttemptRow> = on!(
        ex.into(),
        sql!(
            "SELECT x.job_id, x.attempt, x.at, x.step, a.path AS file, x.outcome, x.answer
               FROM attempts x
               LEFT JOIN attachments a ON a.id = x.target_id
              WHERE x.target_id = $1
                 OR x.target_id IN (SELECT id FROM attachments WHERE ticket_id = $1)
              ORDER BY x.at, x.id"
        ),
        |c, q| sqlx::query_as(q).bind(ticket).fetch_all(c).await
    )?;
    Ok(rows
        .into_iter()
        .map(|r| Attempt {
            job_id: r.job_id,
            attempt: r.attempt,
            at: r
                .at
                .0
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            step: r.step,
            file: r.file,
            outcome: r.outcome,
            answer: r.answer,
        })
        .collect())
}

/// A ticket found by its ref (in one batch, when given).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct TicketByRef {
    pub id: TicketId,
    pub batch_id: BatchId,
    pub batch: String,
    #[sqlx(rename = "ref")]
    #[serde(rename = "ref")]
    pub reference: String,
    pub project_id: Uuid,
    pub line: i64,
    pub title: String,
    pub state: crate::domain::TicketState,
    pub visibuild_id: Option<String>,
    pub last_error: Option<String>,
}

/// The columns of a [`TicketByRef`] and the tables they come from, for each query that
/// reads one (a `WHERE` follows).
macro_rules! select_ticket_by_ref {
    () => {
        "SELECT t.id, t.batch_id, b.name AS batch, t.ref, t.project_id, t.line::bigint AS line,
                t.title, t.state, t.visibuild_id, t.last_error
           FROM tickets t JOIN batches b ON b.id = t.batch_id
"
    };
}

/// The tickets with this ref (one per project that has it), in one batch or all.
pub async fn tickets_by_ref<'c>(
    ex: impl Into<Ex<'c>>,
    batch: Option<BatchId>,
    reference: &str,
) -> Result<Vec<TicketByRef>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(concat!(
            select_ticket_by_ref!(),
            "WHERE t.ref = $2 AND ($1::uuid IS NULL OR t.batch_id = $1)
              ORDER BY b.created_at, t.project_id"
        )),
        |c, q| sqlx::query_as(q)
            .bind(batch)
            .bind(reference)
            .fetch_all(c)
            .await
    )?)
}

/// A ticket by its id (for the dashboard's ticket page).
pub async fn ticket<'c>(
    ex: impl Into<Ex<'c>>,
    ticket: TicketId,
) -> Result<Option<TicketByRef>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(concat!(select_ticket_by_ref!(), "WHERE t.id = $1")),
        |c, q| sqlx::query_as(q).bind(ticket).fetch_optional(c).await
    )?)
}

/// Which tickets the dashboard's list shows: every filter optional.
#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    pub batch: Option<BatchId>,
    pub state: Option<crate::domain::TicketState>,
    /// The ref contains this.
    pub reference: Option<String>,
    /// The ticket's or one of its files' last error contains this.
    pub reason: Option<String>,
}

/// The tickets `filter` keeps, in batch and manifest order, at most `limit`.
pub async fn list_tickets<'c>(
    ex: impl Into<Ex<'c>>,
    filter: &TicketFilter,
    limit: i64,
) -> Result<Vec<TicketByRef>, StoreError> {
    Ok(on!(
        ex.into(),
        sql!(concat!(
            select_ticket_by_ref!(),
            "WHERE ($1::uuid IS NULL OR t.batch_id = $1)
                AND ($2::text IS NULL OR t.state::text = $2)
                AND ($3::text IS NULL OR {strpos}(t.ref, $3) > 0)
                AND ($4::text IS NULL OR {strpos}(t.last_error, $4) > 0
                     OR EXISTS (SELECT 1 FROM attachments a
                                 WHERE a.ticket_id = t.id AND {strpos}(a.last_error, $4) > 0))
              ORDER BY b.created_at, t.line
              LIMIT $5"
        )),
        |c, q| sqlx::query_as(q)
            .bind(filter.batch)
            .bind(filter.state.map(|s| s.as_str()))
            .bind(filter.reference.as_deref())
            .bind(filter.reason.as_deref())
            .bind(limit)
            .fetch_all(c)
            .await
    )?)
}
