//! The project gates' rows: which ticket of a project goes first, whether the project is
//! open or refused, and the writes that wake or fail the project's waiting jobs with it.

use super::{Conn, Ex, StoreError};
use crate::domain::{JobId, ProjectId, TicketId};
use visibuild_queue::{self as queue, JobRef, Transition, on, sql};

/// A project's gate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// `probe` is being created; the project's other work waits for its answer.
    Probing { probe: TicketId },
    /// A ticket of the project was created: everything goes, for good.
    Open,
    /// The server refused the project; `reason` is its words.
    Refused { reason: String },
}

#[derive(sqlx::FromRow)]
struct Row {
    state: String,
    probe_ticket: Option<TicketId>,
    reason: Option<String>,
}

impl Row {
    fn gate(self) -> Option<Gate> {
        match (self.state.as_str(), self.probe_ticket) {
            ("open", _) => Some(Gate::Open),
            ("refused", _) => Some(Gate::Refused {
                reason: self.reason.unwrap_or_default(),
            }),
            ("probing", Some(probe)) => Some(Gate::Probing { probe }),
            _ => None,
        }
    }
}

/// The project's gate; `None` when no work of the project has asked yet.
pub async fn read<'c>(
    ex: impl Into<Ex<'c>>,
    project: ProjectId,
) -> Result<Option<Gate>, StoreError> {
    let row: Option<Row> = on!(
        ex.into(),
        sql!("SELECT state, probe_ticket, reason FROM project_gates WHERE project_id = $1"),
        |c, q| sqlx::query_as(q).bind(project).fetch_optional(c).await
    )?;
    Ok(row.and_then(Row::gate))
}

/// Set the project's gate up if it has none: open when the store already created one of its
/// tickets, else probing with its first ticket (a file-less one, else the fewest bytes).
/// Whoever comes first wins; later callers read what it wrote. Run it in a transaction.
pub async fn start(conn: &mut Conn<'_>, project: ProjectId) -> Result<(), StoreError> {
    let created: bool = on!(
        conn.reborrow(),
        sql!("SELECT EXISTS (SELECT 1 FROM tickets WHERE project_id = $1 AND state = 'created')"),
        |c, q| sqlx::query_scalar(q).bind(project).fetch_one(c).await
    )?;
    let probe = if created {
        None
    } else {
        first_ticket(conn, project).await?
    };
    if !created && probe.is_none() {
        return Ok(()); // nothing of the project is left to create
    }
    on!(
        conn.reborrow(),
        sql!(
            "INSERT INTO project_gates (project_id, state, probe_ticket, updated_at)
             VALUES ($1, $2, $3, {now})
             ON CONFLICT (project_id) DO NOTHING"
        ),
        |c, q| sqlx::query(q)
            .bind(project)
            .bind(if created { "open" } else { "probing" })
            .bind(probe)
            .execute(c)
            .await
            .map(drop)
    )?;
    Ok(())
}

/// The ticket of the project to create first: one without files if there is one, else the
/// one with the fewest bytes; among tickets still to be created.
async fn first_ticket(
    conn: &mut Conn<'_>,
    project: ProjectId,
) -> Result<Option<TicketId>, StoreError> {
    Ok(on!(
        conn.reborrow(),
        sql!(
            "SELECT t.id FROM tickets t
              WHERE t.project_id = $1 AND t.state IN ('pending', 'creating')
              ORDER BY CASE WHEN EXISTS (SELECT 1 FROM attachments a WHERE a.ticket_id = t.id)
                            THEN 1 ELSE 0 END,
                       (SELECT COALESCE(SUM(a.size), 0) FROM attachments a
                         WHERE a.ticket_id = t.id),
                       t.id
              LIMIT 1"
        ),
        |c, q| sqlx::query_scalar(q).bind(project).fetch_optional(c).await
    )?)
}

/// A job of a ticket that must wait for its project's first answer: blocked (no attempt
/// used), unless the gate moved meanwhile — then it goes back to the queue at once, to read
/// the gate again. The gate's row is written first, so this and [`open`]/[`refuse`] happen
/// one after the other: a job is never blocked after the wake-up it waited for.
pub async fn park(
    conn: &mut Conn<'_>,
    job: JobRef,
    ticket: TicketId,
    note: &str,
) -> Result<(), StoreError> {
    let waiting: Option<ProjectId> = on!(
        conn.reborrow(),
        sql!(
            "UPDATE project_gates SET updated_at = {now}
              WHERE project_id = (SELECT project_id FROM tickets WHERE id = $1)
                AND state = 'probing' AND probe_ticket <> $1
             RETURNING project_id"
        ),
        |c, q| sqlx::query_scalar(q).bind(ticket).fetch_optional(c).await
    )?;
    let transition = match waiting {
        Some(_) => Transition::block(job, note),
        None => Transition::snooze(job, std::time::Duration::ZERO, Some(note)),
    };
    queue::apply_one(conn.reborrow(), transition).await?;
    Ok(())
}

/// A ticket of the project was created: the gate opens for good and the project's waiting
/// jobs run (uploads; creates whose files are all uploaded). Run it in the transaction that
/// records the ticket created.
pub async fn open(conn: &mut Conn<'_>, project: ProjectId) -> Result<(), StoreError> {
    let changed: Option<ProjectId> = on!(
        conn.reborrow(),
        sql!(
            "INSERT INTO project_gates (project_id, state, updated_at) VALUES ($1, 'open', {now})
             ON CONFLICT (project_id) DO UPDATE
                SET state = 'open', reason = NULL, updated_at = {now}
              WHERE project_gates.state <> 'open'
             RETURNING project_id"
        ),
        |c, q| sqlx::query_scalar(q).bind(project).fetch_optional(c).await
    )?;
    if changed.is_some() {
        wake(conn, project, None, false).await?;
    }
    Ok(())
}

/// The server refused the project: the gate closes with its words, every ticket of the
/// project still waiting to be sent fails with them, and the project's waiting jobs are
/// made runnable so that each fails at once when claimed (nothing of theirs is sent). A gate
/// already open stays open (one refused create then fails only its ticket).
pub async fn refuse(
    conn: &mut Conn<'_>,
    ticket: TicketId,
    reason: &str,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    let project: Option<ProjectId> = on!(
        conn.reborrow(),
        sql!(
            "INSERT INTO project_gates (project_id, state, reason, detail, updated_at)
             SELECT project_id, 'refused', $2, $3, {now} FROM tickets WHERE id = $1
             ON CONFLICT (project_id) DO UPDATE
                SET state = 'refused', reason = $2, detail = $3, updated_at = {now}
              WHERE project_gates.state = 'probing'
             RETURNING project_id"
        ),
        |c, q| sqlx::query_scalar(q)
            .bind(ticket)
            .bind(reason)
            .bind(detail)
            .fetch_optional(c)
            .await
    )?;
    let Some(project) = project else {
        return Ok(());
    };
    on!(
        conn.reborrow(),
        sql!(
            "UPDATE tickets SET state = 'failed', last_error = $2, error_detail = $3,
                    updated_at = {now}, finished_at = {now}
              WHERE project_id = $1 AND state = 'pending'"
        ),
        |c, q| sqlx::query(q)
            .bind(project)
            .bind(reason)
            .bind(detail)
            .execute(c)
            .await
            .map(drop)
    )?;
    wake(conn, project, None, true).await
}

/// A ticket failed for its project's refusal carries the server's error: this one's, or the
/// one the gate was refused with.
pub async fn copy_detail(
    conn: &mut Conn<'_>,
    ticket: TicketId,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    on!(
        conn.reborrow(),
        sql!(
            "UPDATE tickets
                SET error_detail = COALESCE($2, (SELECT g.detail FROM project_gates g
                                                  WHERE g.project_id = tickets.project_id))
              WHERE id = $1"
        ),
        |c, q| sqlx::query(q)
            .bind(ticket)
            .bind(detail)
            .execute(c)
            .await
            .map(drop)
    )?;
    Ok(())
}

/// The ticket ended without being created (failed, or needs review). If it was its project's
/// probe, the next ticket of the project takes its place and its jobs run; with none left,
/// the gate is forgotten (the next job of the project sets it up again).
pub async fn probe_ended(conn: &mut Conn<'_>, ticket: TicketId) -> Result<(), StoreError> {
    let project: Option<ProjectId> = on!(
        conn.reborrow(),
        sql!(
            "SELECT project_id FROM project_gates
              WHERE probe_ticket = $1 AND state = 'probing' {for_update}"
        ),
        |c, q| sqlx::query_scalar(q).bind(ticket).fetch_optional(c).await
    )?;
    let Some(project) = project else {
        return Ok(());
    };
    match first_ticket(conn, project).await? {
        Some(next) => {
            on!(
                conn.reborrow(),
                sql!(
                    "UPDATE project_gates SET probe_ticket = $2, updated_at = {now}
                      WHERE project_id = $1"
                ),
                |c, q| sqlx::query(q)
                    .bind(project)
                    .bind(next)
                    .execute(c)
                    .await
                    .map(drop)
            )?;
            wake(conn, project, Some(next), false).await
        }
        None => {
            on!(
                conn.reborrow(),
                sql!("DELETE FROM project_gates WHERE project_id = $1 AND state = 'probing'"),
                |c, q| sqlx::query(q).bind(project).execute(c).await.map(drop)
            )?;
            Ok(())
        }
    }
}

/// An operator retries the project's tickets: a refused gate is forgotten, so the next job
/// of the project creates one ticket first again.
pub async fn reopen_refused(conn: &mut Conn<'_>, tickets: &[uuid::Uuid]) -> Result<(), StoreError> {
    on!(
        conn.reborrow(),
        sql!(
            "DELETE FROM project_gates
              WHERE state = 'refused'
                AND project_id IN (SELECT project_id FROM tickets WHERE id {in_ids $1})"
        ),
        |c, q| sqlx::query(q)
            .bind(queue::List(tickets))
            .execute(c)
            .await
            .map(drop)
    )?;
    Ok(())
}

/// Make the project's (or one ticket's) jobs that wait for the gate runnable: its blocked
/// uploads, and its blocked creates whose files are all uploaded (`all_creates`: every
/// blocked create, for a refusal that fails them).
async fn wake(
    conn: &mut Conn<'_>,
    project: ProjectId,
    only: Option<TicketId>,
    all_creates: bool,
) -> Result<(), StoreError> {
    let jobs: Vec<JobId> = on!(
        conn.reborrow(),
        sql!(
            "SELECT j.id FROM jobs j
               JOIN attachments a ON a.id = j.target_id
               JOIN tickets t ON t.id = a.ticket_id
              WHERE j.kind = 'upload' AND j.state = 'blocked' AND t.project_id = $1
                AND ($2::uuid IS NULL OR t.id = $2)
             UNION ALL
             SELECT j.id FROM jobs j
               JOIN tickets t ON t.id = j.target_id
              WHERE j.kind = 'create_ticket' AND j.state = 'blocked' AND t.project_id = $1
                AND ($2::uuid IS NULL OR t.id = $2)
                AND ($3 OR NOT EXISTS (SELECT 1 FROM attachments a
                                        WHERE a.ticket_id = t.id AND a.state <> 'uploaded'
                                          AND a.skipped IS NULL))"
        ),
        |c, q| sqlx::query_scalar(q)
            .bind(project)
            .bind(only)
            .bind(all_creates)
            .fetch_all(c)
            .await
    )?;
    if !jobs.is_empty() {
        let unblock: Vec<Transition> = jobs.into_iter().map(Transition::unblock).collect();
        queue::apply(conn.reborrow(), &unblock).await?;
        queue::notify(conn.reborrow()).await?;
    }
    Ok(())
}
