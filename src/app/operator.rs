//! The operator's commands over the queue: `status`, `retry` and `report`.

use super::{Exit, UsageError};
use crate::domain::{BatchId, JobId, JobState, TicketState};
use crate::human::{bytes, count};
use crate::store::{Store, status as stats, tickets};
use anyhow::Context as _;
use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Attempts a retried job gets (by `retry`, and by the dashboard's retry buttons).
pub const RETRY_ATTEMPTS: i32 = 8;

pub(super) async fn batch_id(
    db: &Store,
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
    let db = super::open_store(database_url).await?;
    let wanted = batch_id(&db, batch).await?;
    let mut connection = db.acquire().await?;
    let mut conn = connection.conn();
    let mut all = Vec::new();
    for b in tickets::batches(conn.reborrow()).await? {
        if wanted.is_none_or(|w| w == b.id) {
            all.push(stats::batch_status(&mut conn, b.id, &b.name, b.created_at).await?);
        }
    }
    drop(connection);
    let budgets = crate::store::budgets::status(&db).await?;
    if json {
        // An array of batches, as before; the store's rate budgets (shared by every batch
        // and process) ride along in each.
        #[derive(serde::Serialize)]
        struct WithBudgets<'a> {
            #[serde(flatten)]
            batch: &'a stats::BatchStatus,
            rate_budgets: &'a [crate::store::budgets::BudgetStatus],
        }
        let all: Vec<WithBudgets> = all
            .iter()
            .map(|batch| WithBudgets {
                batch,
                rate_budgets: &budgets,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(Exit::Success);
    }
    if !budgets.is_empty() {
        println!("rate budgets (shared by every process on this store):");
        for b in &budgets {
            println!("  {}", super::budgets::describe_status(b));
        }
    }
    if all.is_empty() {
        println!("no batches yet: load one with `visibuild-import enqueue MANIFEST`");
    }
    let pauses = visibuild_queue::pauses(&db).await?;
    if pauses.iter().any(|(group, _)| group.is_none()) {
        println!("PAUSED: no worker claims new work (`visibuild-import resume` goes on)");
    }
    for s in &all {
        println!(
            "batch {} (loaded {}){}",
            s.batch,
            s.created_at,
            if s.paused { " PAUSED" } else { "" }
        );
        println!("  tickets: {}", counts(&s.tickets));
        println!(
            "  files:   {} ({} of {} uploaded)",
            counts(&s.files),
            bytes(s.bytes_uploaded as u64),
            bytes(s.bytes_total as u64)
        );
        let j = &s.jobs;
        println!(
            "  jobs:    {} waiting, {} running, {} retrying, {} blocked on uploads, {} failed, {} done{}",
            j.waiting,
            j.running,
            j.retrying,
            j.blocked,
            j.failed,
            j.completed,
            if j.cancelled > 0 {
                format!(", {} cancelled", j.cancelled)
            } else {
                String::new()
            }
        );
        println!(
            "  last minute: {}, {}{}",
            count(s.files_last_minute as u64, "file"),
            count(s.tickets_last_minute as u64, "ticket"),
            s.eta_seconds
                .map(|e| format!("; ETA {}", crate::human::duration_secs(e as u64)))
                .unwrap_or_default()
        );
        if s.changed_since_load > 0 {
            println!(
                "  changed since loading: {} kept as first loaded (`report` shows changed_fields)",
                count(s.changed_since_load as u64, "ref")
            );
            for example in &s.changed_examples {
                println!("    {example}");
            }
        }
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
    /// Only this project's tickets (a refused project's gate re-opens).
    pub project: Option<uuid::Uuid>,
}

pub async fn retry(database_url: &str, settings: RetrySettings) -> Result<Exit, anyhow::Error> {
    let db = super::open_store(database_url).await?;
    let scope = stats::RetryScope {
        batch: batch_id(&db, settings.batch.as_deref()).await?,
        reference: settings.reference,
        jobs: settings.job.map(|job| vec![job]),
        error_contains: settings.error_contains,
        force: settings.force,
        project: settings.project,
    };
    let in_batch = settings
        .batch
        .as_deref()
        .map(|b| format!(" in batch {b:?}"))
        .unwrap_or_default();
    let mut tx = db.begin().await?;
    // A ref or a job that names nothing is a typo to point out, not "0 retried".
    let ref_states = match &scope.reference {
        None => None,
        Some(r) => match stats::ticket_states_by_ref(&mut tx, scope.batch, r).await? {
            states if states.is_empty() => {
                return Err(UsageError(format!("no ticket with ref {r:?}{in_batch}")).into());
            }
            states => Some(states),
        },
    };
    let job_state = match settings.job {
        None => None,
        Some(job) => Some(
            stats::job_state(&mut tx, scope.batch, job)
                .await?
                .ok_or_else(|| UsageError(format!("no job {job}{in_batch}")))?,
        ),
    };
    let done = stats::retry(&mut tx.conn(), &scope, RETRY_ATTEMPTS).await?;
    tx.commit().await?;
    match nothing_to_retry(
        done,
        &scope,
        settings.job.zip(job_state),
        ref_states.as_deref(),
    ) {
        Some(why) => println!("nothing to retry: {why}"),
        None => println!(
            "{} of {} back in the queue; run `visibuild-import run` to process them",
            count(done.jobs, "failed job"),
            count(done.tickets, "ticket")
        ),
    }
    if !settings.force {
        let review: i64 = stats::tickets_by_state(&db, scope.batch)
            .await?
            .into_iter()
            .filter(|(s, _)| *s == TicketState::NeedsReview)
            .map(|(_, n)| n)
            .sum();
        if review == 1 {
            println!(
                "1 ticket needs review (its create may have landed); check Visibuild, then `retry --force` to send it again"
            );
        } else if review > 1 {
            println!(
                "{review} tickets need review (their create may have landed); check Visibuild, then `retry --force` to send them again"
            );
        }
    }
    Ok(Exit::Success)
}

/// Why a retry of one job or one ref put nothing back, when the reason is that it had not
/// failed. `None` when work was put back, or when the review line says why.
fn nothing_to_retry(
    done: stats::Retried,
    scope: &stats::RetryScope,
    job_state: Option<(JobId, JobState)>,
    ref_states: Option<&[TicketState]>,
) -> Option<String> {
    if done.jobs > 0 {
        return None;
    }
    if let Some((job, state)) = job_state
        && !matches!(state, JobState::Failed | JobState::Cancelled)
    {
        return Some(format!("job {job} has not failed (it is {state})"));
    }
    let (Some(r), Some(states)) = (&scope.reference, ref_states) else {
        return None;
    };
    let failed = |s: &TicketState| {
        matches!(
            s,
            TicketState::Failed | TicketState::NeedsReview | TicketState::Cancelled
        )
    };
    if states.iter().any(failed) {
        return None;
    }
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    let (pronoun, verb) = if names.len() == 1 {
        ("it", "is")
    } else {
        ("they", "are")
    };
    Some(format!(
        "ticket {r:?} has no failed work ({pronoun} {verb} {})",
        names.join(", ")
    ))
}

/// Where `report` writes.
#[derive(Debug, Clone)]
pub enum ReportOut {
    Stdout,
    /// A file, replaced in one rename once complete; an existing one only if `overwrite`.
    File {
        path: PathBuf,
        overwrite: bool,
    },
}

/// A row per ticket, or a row per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportRows {
    Tickets,
    Files,
}

/// What `report` covers and where it goes.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub batch: Option<String>,
    pub out: ReportOut,
    /// Only failed tickets and those needing review.
    pub failed_only: bool,
    pub rows: ReportRows,
}

/// The rows of a report, as read from the store.
enum Rows {
    Tickets(Vec<stats::TicketResult>),
    Files(Vec<stats::FileResult>),
}

impl Rows {
    fn write(&self, sink: impl Write) -> Result<(), csv::Error> {
        match self {
            Rows::Tickets(rows) => write_report(sink, rows),
            Rows::Files(rows) => write_file_report(sink, rows),
        }
    }

    /// `12 tickets`, `1 file`.
    fn counted(&self) -> String {
        match self {
            Rows::Tickets(rows) => count(rows.len() as u64, "ticket"),
            Rows::Files(rows) => count(rows.len() as u64, "file"),
        }
    }
}

pub async fn report(database_url: &str, settings: ReportSettings) -> Result<Exit, anyhow::Error> {
    // Refuse before anything else, and write beside the target so that the final rename
    // stays on one file system: a failed report leaves no half-written file.
    let file = match &settings.out {
        ReportOut::Stdout => None,
        ReportOut::File { path, overwrite } => {
            if !overwrite && std::fs::symlink_metadata(path).is_ok() {
                return Err(already_exists(path).into());
            }
            Some((temporary_beside(path)?, path, *overwrite))
        }
    };
    let db = super::open_store(database_url).await?;
    let filter = stats::ResultFilter {
        batch: batch_id(&db, settings.batch.as_deref()).await?,
        failed_only: settings.failed_only,
    };
    let rows = match settings.rows {
        ReportRows::Tickets => Rows::Tickets(stats::ticket_results(&db, filter).await?),
        ReportRows::Files => Rows::Files(stats::file_results(&db, filter).await?),
    };
    let Some((mut temporary, path, overwrite)) = file else {
        rows.write(std::io::stdout().lock())?;
        return Ok(Exit::Success);
    };
    rows.write(temporary.as_file_mut())
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(temporary.as_file().sync_all()?))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let persisted = if overwrite {
        temporary.persist(path)
    } else {
        temporary.persist_noclobber(path)
    };
    match persisted {
        Ok(_) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(already_exists(path).into());
        }
        Err(e) => {
            return Err(UsageError(format!("cannot write {}: {}", path.display(), e.error)).into());
        }
    }
    super::logging::say(
        super::logging::Level::Info,
        &format!("{} written to {}", rows.counted(), path.display()),
        serde_json::json!({ "path": path.display().to_string() }),
    );
    Ok(Exit::Success)
}

fn already_exists(path: &Path) -> UsageError {
    UsageError(format!(
        "{} already exists; pass --force to overwrite it",
        path.display()
    ))
}

/// An empty temporary file in `path`'s folder, readable as a plain new file would be.
pub(super) fn temporary_beside(path: &Path) -> Result<tempfile::NamedTempFile, UsageError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let cannot_write =
        |e: &dyn std::fmt::Display| UsageError(format!("cannot write {}: {e}", path.display()));
    // tempfile's own error names its random file; a missing folder is said plainly.
    std::fs::metadata(dir).map_err(|e| cannot_write(&e))?;
    tempfile::Builder::new()
        .prefix(".visibuild-import-")
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(|e| cannot_write(&e))
}

fn write_report(sink: impl Write, rows: &[stats::TicketResult]) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(sink);
    write_safe_record(
        &mut w,
        [
            "batch",
            "ref",
            "line",
            "project_id",
            "state",
            "ticket_id",
            "attachment_keys",
            "attempts",
            "error",
            "file_changes",
            "changed_fields",
            "skipped_files",
        ],
    )?;
    for r in rows {
        write_safe_record(
            &mut w,
            [
                r.batch.as_str(),
                r.reference.as_str(),
                &r.line.to_string(),
                &r.project_id.to_string(),
                r.state.as_str(),
                r.visibuild_id.as_deref().unwrap_or(""),
                r.attachment_keys.as_deref().unwrap_or(""),
                &r.attempts.map(|a| a.to_string()).unwrap_or_default(),
                r.last_error.as_deref().unwrap_or(""),
                r.file_changes.as_deref().unwrap_or(""),
                r.changed_fields.as_deref().unwrap_or(""),
                r.skipped_files.as_deref().unwrap_or(""),
            ],
        )?;
    }
    w.flush()?;
    Ok(())
}

fn write_file_report(sink: impl Write, rows: &[stats::FileResult]) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(sink);
    write_safe_record(
        &mut w,
        [
            "batch",
            "ref",
            "line",
            "path",
            "size",
            "md5",
            "key",
            "state",
            "error",
            "file_changes",
        ],
    )?;
    for r in rows {
        write_safe_record(
            &mut w,
            [
                r.batch.as_str(),
                r.reference.as_str(),
                &r.line.to_string(),
                r.path.as_str(),
                &r.size.to_string(),
                r.md5.as_deref().unwrap_or(""),
                r.key.as_deref().unwrap_or(""),
                r.state.as_str(),
                r.error.as_deref().unwrap_or(""),
                r.file_changes.as_deref().unwrap_or(""),
            ],
        )?;
    }
    w.flush()?;
    Ok(())
}

/// Every cell of every report, header included, goes through [`spreadsheet_safe`] here.
fn write_safe_record<const N: usize>(
    w: &mut csv::Writer<impl Write>,
    cells: [&str; N],
) -> Result<(), csv::Error> {
    w.write_record(cells.map(spreadsheet_safe).iter().map(|c| c.as_bytes()))
}

/// A cell a spreadsheet shows as text instead of running it as a formula. OWASP's
/// CSV-injection rule: a cell starting with `=`, `+`, `-`, `@`, tab or CR gets a leading
/// single quote. Every cell goes through here, ours (UUIDs, states) as well as the
/// manifest's, so that no column is ever forgotten.
fn spreadsheet_safe(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_a_spreadsheet_would_run_get_a_leading_quote_and_others_stay_as_they_are() {
        for (cell, safe) in [
            (
                r#"=HYPERLINK("http://x","y")"#,
                r#"'=HYPERLINK("http://x","y")"#,
            ),
            ("+SUM(1)", "'+SUM(1)"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("=", "'="),
            ("DEF-0001", "DEF-0001"),
            ("a=b", "a=b"),
            (" =1", " =1"),
            ("'=1", "'=1"),
            ("", ""),
        ] {
            assert_eq!(spreadsheet_safe(cell), safe, "{cell:?}");
        }
    }

    #[test]
    fn the_report_quotes_what_csv_needs_after_escaping() {
        let row = stats::TicketResult {
            batch: "=batch()".into(),
            reference: r#"=HYPERLINK("http://x","y")"#.into(),
            line: 7,
            project_id: uuid::Uuid::nil(),
            state: TicketState::Failed,
            visibuild_id: None,
            attachment_keys: None,
            attempts: Some(2),
            last_error: Some("-1 files, \"bad\"".into()),
            file_changes: None,
            changed_fields: Some("=title (m.csv:7)".into()),
            skipped_files: None,
        };
        let mut out = Vec::new();
        write_report(&mut out, &[row]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().nth(1).unwrap(),
            r##"'=batch(),"'=HYPERLINK(""http://x"",""y"")",7,00000000-0000-0000-0000-000000000000,failed,,,2,"'-1 files, ""bad""",,'=title (m.csv:7),"##
        );
    }

    #[test]
    fn the_file_report_escapes_every_cell_too() {
        let row = stats::FileResult {
            batch: "b".into(),
            reference: "@ref".into(),
            line: 3,
            path: "=cmd|' /C calc'!A0.jpg".into(),
            size: 12,
            md5: Some("+md5==".into()),
            key: Some("-key".into()),
            state: crate::domain::AttachmentState::Failed,
            error: Some("\tno".into()),
            file_changes: Some("=changed".into()),
        };
        let mut out = Vec::new();
        write_file_report(&mut out, &[row]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "batch,ref,line,path,size,md5,key,state,error,file_changes"
        );
        assert_eq!(
            lines.next().unwrap(),
            "b,'@ref,3,'=cmd|' /C calc'!A0.jpg,12,'+md5==,'-key,failed,'\tno,'=changed"
        );
    }
}
