//! The operator's controls of queued work: `pause` / `resume`, `cancel`, `prune`, and
//! `status --ticket` (a ticket with every attempt of its jobs).

use std::time::Duration;

use super::operator::batch_id;
use super::{Exit, UsageError};
use crate::human::count;
use crate::store::{Store, attempts, control};
use visibuild_queue as queue;

/// Request counters older than this go at the start of every run, unasked.
pub const COUNTERS_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

pub async fn pause(database_url: &str, batch: Option<&str>) -> Result<Exit, anyhow::Error> {
    let db = super::open_store(database_url).await?;
    let group = batch_id(&db, batch).await?;
    let newly = queue::pause(&db, group.map(|b| b.0)).await?;
    let what = scope_name(batch);
    let waiting = queue::paused_jobs(&db, group.map(|b| b.0)).await?;
    println!(
        "{what} {}: no worker claims new work for it (work in flight finishes); {} waiting; \
         `visibuild-import resume{}` goes on",
        if newly {
            "paused"
        } else {
            "was already paused"
        },
        count(waiting as u64, "job"),
        batch.map(|b| format!(" --batch {b}")).unwrap_or_default()
    );
    Ok(Exit::Success)
}

pub async fn resume(database_url: &str, batch: Option<&str>) -> Result<Exit, anyhow::Error> {
    let db = super::open_store(database_url).await?;
    let group = batch_id(&db, batch).await?;
    let lifted = queue::resume(&db, group.map(|b| b.0)).await?;
    queue::notify(&db).await?;
    let what = scope_name(batch);
    if lifted {
        println!("{what} resumed: workers claim its work again within seconds");
    } else {
        println!("{what} was not paused");
    }
    // Resuming one batch does not lift the pause of everything.
    if batch.is_some() && queue::pauses(&db).await?.iter().any(|(g, _)| g.is_none()) {
        println!("everything is still paused: `visibuild-import resume` lifts that");
    }
    Ok(Exit::Success)
}

fn scope_name(batch: Option<&str>) -> String {
    batch.map_or_else(|| "the queue".to_string(), |b| format!("batch {b:?}"))
}

/// What `cancel` stops.
#[derive(Debug, Clone, Default)]
pub struct CancelSettings {
    pub batch: Option<String>,
    pub reference: Option<String>,
}

pub async fn cancel(database_url: &str, settings: CancelSettings) -> Result<Exit, anyhow::Error> {
    if settings.batch.is_none() && settings.reference.is_none() {
        return Err(UsageError("cancel needs --batch B or --ref R (or both)".into()).into());
    }
    let db = super::open_store(database_url).await?;
    let scope = control::CancelScope {
        batch: batch_id(&db, settings.batch.as_deref()).await?,
        reference: settings.reference.clone(),
    };
    if let Some(r) = &scope.reference
        && attempts::tickets_by_ref(&db, scope.batch, r)
            .await?
            .is_empty()
    {
        return Err(UsageError(format!("no ticket with ref {r:?}")).into());
    }
    let mut tx = db.begin().await?;
    let done = control::cancel(&mut tx.conn(), &scope).await?;
    tx.commit().await?;
    println!(
        "{} cancelled ({}): nothing more is sent for them; work in flight finishes; \
         `visibuild-import retry{}` brings them back",
        count(done.tickets, "ticket"),
        count(done.jobs, "queued job"),
        match (&settings.batch, &settings.reference) {
            (_, Some(r)) => format!(" --ref {r}"),
            (Some(b), None) => format!(" --batch {b}"),
            (None, None) => String::new(),
        }
    );
    Ok(Exit::Success)
}

pub async fn prune(
    database_url: &str,
    older_than: Duration,
    json: bool,
) -> Result<Exit, anyhow::Error> {
    let db = super::open_store(database_url).await?;
    let before = file_size(database_url);
    let pruned = control::prune(&db, older_than).await?;
    control::reclaim_space(&db).await?;
    let after = file_size(database_url);
    if json {
        println!("{}", serde_json::to_string_pretty(&pruned)?);
        return Ok(Exit::Success);
    }
    if pruned.batches.is_empty() {
        println!(
            "no finished batch older than {}: no jobs removed",
            crate::human::duration_secs(older_than.as_secs())
        );
    } else {
        println!(
            "removed the history of {}: {}, {} (tickets and their Visibuild ids are kept)",
            count(pruned.batches.len() as u64, "finished batch"),
            count(pruned.jobs, "job"),
            count(pruned.attempts, "attempt")
        );
        for name in &pruned.batches {
            println!("  {name}");
        }
    }
    println!("removed {}", count(pruned.counters, "request counter"));
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "store file (with its WAL): {} → {}",
            crate::human::bytes(before),
            crate::human::bytes(after)
        );
    }
    Ok(Exit::Success)
}

/// An embedded store's size on disk: its file and its write-ahead log.
fn file_size(database_url: &str) -> Option<u64> {
    let path = crate::store::sqlite_path(database_url)?;
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    Some(size(&path) + size(std::path::Path::new(&wal)))
}

/// Removes request counters older than [`COUNTERS_KEPT`]; a failure only warns (the run
/// does not need it).
pub(super) async fn prune_old_counters(db: &Store) {
    match control::prune_counters(db, COUNTERS_KEPT).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "request counters older than 30 days removed"),
        Err(e) => tracing::warn!(error = %e, "could not remove old request counters"),
    }
}

/// `status --ticket REF`: the ticket (one per project with that ref) and every attempt kept
/// of its jobs.
pub async fn ticket_status(
    database_url: &str,
    batch: Option<&str>,
    reference: &str,
    json: bool,
) -> Result<Exit, anyhow::Error> {
    let db = super::open_store(database_url).await?;
    let wanted = batch_id(&db, batch).await?;
    let found = attempts::tickets_by_ref(&db, wanted, reference).await?;
    if found.is_empty() {
        return Err(UsageError(format!("no ticket with ref {reference:?}")).into());
    }
    #[derive(serde::Serialize)]
    struct WithAttempts {
        #[serde(flatten)]
        ticket: attempts::TicketByRef,
        attempts: Vec<attempts::Attempt>,
    }
    let mut all = Vec::new();
    for ticket in found {
        let tried = attempts::of_ticket(&db, ticket.id).await?;
        all.push(WithAttempts {
            ticket,
            attempts: tried,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(Exit::Success);
    }
    for t in &all {
        let ticket = &t.ticket;
        println!(
            "ticket {} (batch {}, line {}, project {}): {}{}",
            ticket.reference,
            ticket.batch,
            ticket.line,
            ticket.project_id,
            ticket.state,
            ticket
                .visibuild_id
                .as_deref()
                .map(|id| format!(", Visibuild id {id}"))
                .unwrap_or_default()
        );
        println!("  {}", ticket.title);
        if let Some(e) = &ticket.last_error {
            println!("  last error: {e}");
        }
        if t.attempts.is_empty() {
            println!("  no attempts recorded");
        }
        for a in &t.attempts {
            let step = match &a.file {
                Some(file) => format!("{} {file}", a.step),
                None => a.step.clone(),
            };
            println!(
                "  {}  {step} (job {}, attempt {}): {}{}",
                a.at,
                a.job_id,
                a.attempt,
                a.outcome,
                a.answer
                    .as_deref()
                    .map(|x| format!(" — {x}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(Exit::Success)
}
