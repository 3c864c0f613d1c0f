//! The project gate: a project the store never created a ticket in gets one ticket created
//! before any other of its files is uploaded; a refused project fails its tickets at once.

use super::Shared;
use crate::domain::{ProjectId, TicketId};
use crate::store::gates::{self, Gate};
use crate::store::{Conn, StoreError, tickets};
use crate::visibuild::ApiError;
use std::collections::HashSet;
use std::sync::Mutex;
use visibuild_queue::ClaimedJob;

/// Projects this process saw open: open is for good, so they are not read again.
#[derive(Debug, Default)]
pub struct OpenProjects(Mutex<HashSet<ProjectId>>);

impl OpenProjects {
    fn contains(&self, project: ProjectId) -> bool {
        super::lock(&self.0).contains(&project)
    }

    fn insert(&self, project: ProjectId) {
        super::lock(&self.0).insert(project);
    }
}

/// What the gate says to a job of a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go on: the project is open, or this is its first ticket.
    Go,
    /// Wait for the project's first ticket.
    Wait,
    /// The project was refused: fail with these words.
    Refused(String),
}

/// The note a waiting job carries.
pub const WAITING: &str = "waiting for the first ticket of its project to be created";

/// The reason every ticket of a refused project fails with: one group in `status`, `report`
/// and the dashboard.
pub fn refused_reason(error: &ApiError) -> String {
    format!("project refused: {error}")
}

/// May a job of `ticket` (in `project`) send anything now?
pub async fn admit(
    shared: &Shared,
    project: ProjectId,
    ticket: TicketId,
) -> Result<Admission, StoreError> {
    if shared.open_projects.contains(project) {
        return Ok(Admission::Go);
    }
    for _ in 0..2 {
        match gates::read(&shared.db, project).await? {
            Some(Gate::Open) => {
                shared.open_projects.insert(project);
                return Ok(Admission::Go);
            }
            Some(Gate::Refused { reason }) => return Ok(Admission::Refused(reason)),
            Some(Gate::Probing { probe }) if probe == ticket => return Ok(Admission::Go),
            Some(Gate::Probing { .. }) => return Ok(Admission::Wait),
            None => {
                let mut tx = shared.db.begin().await?;
                gates::start(&mut tx.conn(), project).await?;
                tx.commit().await?;
            }
        }
    }
    // Nothing of the project is left to create but this: let it go.
    Ok(Admission::Go)
}

/// A ticket of `project` was created: open its gate (in the caller's transaction). Call
/// [`opened`] after the commit.
pub async fn open(
    shared: &Shared,
    conn: &mut Conn<'_>,
    project: ProjectId,
) -> Result<(), StoreError> {
    if !shared.open_projects.contains(project) {
        gates::open(conn, project).await?;
    }
    Ok(())
}

/// The gate of `project` is open for good, as committed.
pub fn opened(shared: &Shared, project: ProjectId) {
    shared.open_projects.insert(project);
}

/// Settle a job whose project was refused (its transition already applied): refuse the
/// project (once: its other tickets fail, its waiting jobs wake to fail), then fail this
/// job's attachment and ticket with the same words, so that they read as one group.
pub async fn refused(
    conn: &mut Conn<'_>,
    job: &ClaimedJob,
    reason: &str,
    detail: Option<&crate::visibuild::error::ServerError>,
) -> Result<(), StoreError> {
    use super::Subject;
    let ticket = match (job.attachment(), job.ticket()) {
        (Some(attachment), _) => {
            Some(tickets::fail_attachment_only(conn, attachment, reason).await?)
        }
        (None, ticket) => ticket,
    };
    let Some(ticket) = ticket else {
        return Ok(());
    };
    let detail = detail.and_then(|d| serde_json::to_string(d).ok());
    gates::refuse(conn, ticket, reason, detail.as_deref()).await?;
    tickets::set_ticket_state(
        conn,
        ticket,
        crate::domain::TicketState::Failed,
        Some(reason),
    )
    .await?;
    gates::copy_detail(conn, ticket, detail.as_deref()).await
}
