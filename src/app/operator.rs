//! The operator's commands over the queue: `status`, `retry` and `report`.

use super::{Exit, UsageError};
use crate::domain::{BatchId, JobId};
use crate::store::{self, status as stats, tickets};
use std::io::Write;
use std::path::Path;

/// Attempts a retried job gets.
const RETRY_ATTEMPTS: i32 = 8;

pub(super) async fn batch_id(
    db: &sqlx::PgPool,
    name: Option<&str>,
) -> Result<Option<BatchId>, anyhow::Error> {
    match name {
        None => Ok(None),
        Some(name) => Ok(Some(
            tickets::batch_by_name(db, name)
                .await?
                .ok_or_else(|| UsageError(format!("no batch named {name:?}")))?
                .id,
        )),
    }
}

pub async fn status(
    database_url: &str,
    batch: Option<&str>,
    json: bool,
) -> Result<Exit, anyhow::Error> {
    let db = store::connect(database_url).await?;
    let wanted = batch_id(&db, batch).await?;
    let mut all = Vec::new();
    for b in tickets::batches(&db).await? {
        if wanted.is_none_or(|w| w == b.id) {
            all.push(stats::batch_status(&db, b.id, &b.name, b.created_at).await?);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(Exit::Success);
    }
    if all.is_empty() {
        println!("no batches yet: load one with `visibuild-import enqueue MANIFEST`");
    }
    for s in &all {
        println!("batch {} (loaded {})", s.batch, s.created_at);
        println!("  tickets: {}", counts(&s.tickets));
        println!(
            "  files:   {} ({} of {} uploaded)",
            counts(&s.files),
            crate::pipeline::progress::human_bytes(s.bytes_uploaded as u64),
            crate::pipeline::progress::human_bytes(s.bytes_total as u64)
        );
        let j = &s.jobs;
        println!(
            "  jobs:    {} waiting, {} running, {} retrying, {} blocked on uploads, {} failed, {} done",
            j.waiting, j.running, j.retrying, j.blocked, j.failed, j.completed
        );
        println!(
            "  last minute: {} files, {} tickets{}",
            s.files_last_minute,
            s.tickets_last_minute,
            s.eta_seconds
                .map(|e| format!("; ETA {e}s"))
                .unwrap_or_default()
        );
        for e in &s.top_errors {
            println!("  {} × {}", e.count, e.reason);
        }
        for e in &s.retry_reasons {
            println!("  retrying: {} × {}", e.count, e.reason);
        }
    }
    Ok(Exit::Success)
}

fn counts(map: &std::collections::BTreeMap<String, i64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What to retry.
#[derive(Debug, Clone, Default)]
pub struct RetrySettings {
    pub batch: Option<String>,
    pub reference: Option<String>,
    pub job: Option<JobId>,
    pub error_contains: Option<String>,
    pub force: bool,
}

pub async fn retry(database_url: &str, settings: RetrySettings) -> Result<Exit, anyhow::Error> {
    let db = store::connect(database_url).await?;
    let scope = stats::RetryScope {
        batch: batch_id(&db, settings.batch.as_deref()).await?,
        reference: settings.reference,
        job: settings.job,
        error_contains: settings.error_contains,
        force: settings.force,
    };
    let mut tx = db.begin().await?;
    let done = stats::retry(&mut tx, &scope, RETRY_ATTEMPTS).await?;
    tx.commit().await?;
    println!(
        "{} failed jobs of {} tickets back in the queue; run `visibuild-import run` to process them",
        done.jobs, done.tickets
    );
    if !settings.force {
        let review: i64 = stats::tickets_by_state(&db, scope.batch)
            .await?
            .into_iter()
            .filter(|(s, _)| *s == crate::domain::TicketState::NeedsReview)
            .map(|(_, n)| n)
            .sum();
        if review > 0 {
            println!(
                "{review} tickets need review (their create may have landed); check Visibuild, then `retry --force` to send them again"
            );
        }
    }
    Ok(Exit::Success)
}

pub async fn report(
    database_url: &str,
    batch: Option<&str>,
    out: &Path,
) -> Result<Exit, anyhow::Error> {
    let db = store::connect(database_url).await?;
    let batch = batch_id(&db, batch).await?;
    let rows = stats::ticket_results(&db, batch).await?;
    let sink: Box<dyn Write> = if out == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(out)
                .map_err(|e| UsageError(format!("cannot write {}: {e}", out.display())))?,
        )
    };
    let mut w = csv::Writer::from_writer(sink);
    w.write_record([
        "batch",
        "ref",
        "project_id",
        "state",
        "ticket_id",
        "attachment_keys",
        "attempts",
        "error",
        "file_changes",
    ])?;
    for r in &rows {
        w.write_record([
            r.batch.as_str(),
            r.reference.as_str(),
            &r.project_id.to_string(),
            r.state.as_str(),
            r.visibuild_id.as_deref().unwrap_or(""),
            r.attachment_keys.as_deref().unwrap_or(""),
            &r.attempts.map(|a| a.to_string()).unwrap_or_default(),
            r.last_error.as_deref().unwrap_or(""),
            r.file_changes.as_deref().unwrap_or(""),
        ])?;
    }
    w.flush()?;
    if out != Path::new("-") {
        eprintln!("{} tickets written to {}", rows.len(), out.display());
    }
    Ok(Exit::Success)
}
