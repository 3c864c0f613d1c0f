//! The end of a run in numbers: printed for a person (stdout), said as one JSON line under
//! `--log-format json`, and written with `--summary-json PATH` for a scheduler.

use super::logging::{self, Level, LogFormat};
use super::{Exit, error_code, one_line};
use crate::human::{bytes, count};
use crate::pipeline::Progress;
use crate::store::status::RunSummary;
use crate::visibuild::Counters;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

/// The final summary of `import` or `run`, one JSON object for a scheduler. Ticket counts
/// are the batch's (or every batch's, for `run` without `--batch`) as the run ends; files,
/// bytes, requests, 429s and retries are this run's.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub batch: Option<String>,
    pub exit_code: u8,
    pub outcome: &'static str,
    pub tickets_created: i64,
    pub tickets_failed: i64,
    pub tickets_needs_review: i64,
    pub tickets_not_finished: i64,
    /// Cancelled by an operator (`retry` brings them back).
    pub tickets_cancelled: i64,
    pub tickets_created_this_run: u64,
    pub files_uploaded: u64,
    pub bytes_uploaded: u64,
    pub requests: Requests,
    /// Answers `429 Too Many Requests` from Visibuild or S3.
    pub rate_limited_429: u64,
    /// Jobs put back to run again after a transient error.
    pub retries: u64,
    pub elapsed_seconds: f64,
    pub top_errors: Vec<ErrorCount>,
    /// Tickets in the in-process sandbox at the end of a rehearsal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_tickets: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Requests {
    pub presign: u64,
    pub upload: u64,
    pub create: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub reason: String,
    pub count: i64,
}

fn outcome(exit: Exit) -> &'static str {
    match exit {
        Exit::Success => "success",
        Exit::TicketsFailed => "tickets_failed",
        Exit::Usage => "usage_error",
        Exit::Unreachable => "unreachable",
        Exit::Interrupted | Exit::Terminated => "interrupted",
    }
}

impl Summary {
    pub fn new(
        batch: Option<String>,
        totals: &RunSummary,
        progress: &Progress,
        counters: &Counters,
        sandbox_tickets: Option<u64>,
        exit: Exit,
    ) -> Self {
        Self {
            batch,
            exit_code: exit.code(),
            outcome: outcome(exit),
            tickets_created: totals.created,
            tickets_failed: totals.failed,
            tickets_needs_review: totals.needs_review,
            tickets_not_finished: totals.pending,
            tickets_cancelled: totals.cancelled,
            tickets_created_this_run: progress.tickets.load(Relaxed),
            files_uploaded: progress.files.load(Relaxed),
            bytes_uploaded: progress.bytes.load(Relaxed),
            requests: Requests {
                presign: counters.presigns.load(Relaxed),
                upload: counters.uploads.load(Relaxed),
                create: counters.creates.load(Relaxed),
            },
            rate_limited_429: counters.rate_limited.load(Relaxed),
            retries: progress.retries.load(Relaxed),
            elapsed_seconds: (progress.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            top_errors: totals
                .top_errors
                .iter()
                .map(|(reason, count)| ErrorCount {
                    reason: reason.clone(),
                    count: *count,
                })
                .collect(),
            sandbox_tickets,
        }
    }

    /// The lines a person reads.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "tickets: {} created, {} failed, {} {}, {} not finished",
                self.tickets_created,
                self.tickets_failed,
                self.tickets_needs_review,
                if self.tickets_needs_review == 1 {
                    "needs review"
                } else {
                    "need review"
                },
                self.tickets_not_finished
            ) + &if self.tickets_cancelled > 0 {
                format!(", {} cancelled", self.tickets_cancelled)
            } else {
                String::new()
            },
            format!(
                "this run: {} uploaded ({}), {} created in {:.1}s",
                count(self.files_uploaded, "file"),
                bytes(self.bytes_uploaded),
                count(self.tickets_created_this_run, "ticket"),
                self.elapsed_seconds
            ),
            format!(
                "requests: {} presign, {} upload, {} create; {} rate-limited (429); {}",
                self.requests.presign,
                self.requests.upload,
                self.requests.create,
                self.rate_limited_429,
                count(self.retries, "retry")
            ),
        ];
        for e in &self.top_errors {
            lines.push(format!("  {} × {}", e.count, e.reason));
        }
        if let Some(n) = self.sandbox_tickets {
            lines.push(format!(
                "sandbox: {} now {} there (rehearsal only; nothing was sent to Visibuild)",
                count(n, "ticket"),
                if n == 1 { "exists" } else { "exist" }
            ));
        }
        if self.tickets_failed + self.tickets_needs_review > 0 {
            lines.push(
                "see `visibuild-import status` for reasons, `visibuild-import retry` to try again"
                    .into(),
            );
        }
        lines
    }

    /// On stdout for a person; one JSON line on stderr under `--log-format json`.
    pub fn print(&self) {
        match logging::format() {
            LogFormat::Human => {
                for line in self.lines() {
                    println!("{line}");
                }
            }
            LogFormat::Json => logging::say(
                Level::Info,
                &format!("summary: {}", self.lines()[0]),
                serde_json::json!({ "summary": self }),
            ),
        }
    }
}

/// Where `--summary-json` writes.
#[derive(Debug, Clone)]
pub enum SummaryOut {
    Stdout,
    /// Replaced in one rename, so a scheduler never reads half a summary.
    File(PathBuf),
}

impl SummaryOut {
    /// `-` is stdout; anything else a file.
    pub fn from_arg(path: PathBuf) -> Self {
        if path.as_os_str() == "-" {
            SummaryOut::Stdout
        } else {
            SummaryOut::File(path)
        }
    }

    pub fn write(&self, summary: &impl Serialize) -> Result<(), anyhow::Error> {
        let text = serde_json::to_string(summary)?;
        match self {
            SummaryOut::Stdout => println!("{text}"),
            SummaryOut::File(path) => {
                use std::io::Write as _;
                let mut file = super::operator::temporary_beside(path)?;
                file.write_all(text.as_bytes())?;
                file.write_all(b"\n")?;
                file.as_file().sync_all()?;
                file.persist(path).map_err(|e| {
                    super::UsageError(format!("cannot write {}: {}", path.display(), e.error))
                })?;
            }
        }
        Ok(())
    }
}

/// A run that ended in an error still leaves a summary for the scheduler: its exit code
/// and the error. The result passes through.
pub(super) fn write_on_error(
    out: Option<&SummaryOut>,
    result: Result<Exit, anyhow::Error>,
) -> Result<Exit, anyhow::Error> {
    if let (Some(out), Err(e)) = (out, &result) {
        let code = error_code(e);
        let failed = serde_json::json!({
            "exit_code": code,
            "outcome": match code {
                2 => "usage_error",
                3 => "unreachable",
                _ => "error",
            },
            "error": one_line(e),
        });
        if let Err(write) = out.write(&failed) {
            logging::say(
                Level::Warn,
                &format!("cannot write the summary: {}", one_line(&write)),
                serde_json::json!({}),
            );
        }
    }
    result
}
