//! Progress of a run: counters the workers bump, shown as indicatif bars on a terminal or
//! as a plain line every few seconds when stderr is not one (cron, CI, a scheduler's log).

use crate::human;
use crate::visibuild::Client;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Counters of one run.
#[derive(Debug)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub tickets: AtomicU64,
    /// Jobs put back to run again after a transient error.
    pub retries: AtomicU64,
    /// Totals still to do when the run started (for bars and ETA); zero = unknown.
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub tickets_total: AtomicU64,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            tickets: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            tickets_total: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

/// The counters at one moment, with the rates and ETA they imply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub tickets: u64,
    pub tickets_total: u64,
    pub files: u64,
    pub files_total: u64,
    pub bytes: u64,
    pub bytes_total: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn file_done(&self, bytes: u64) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn ticket_done(&self) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The counters now; `rate_limited` is the client's count of 429s.
    pub fn snapshot(&self, rate_limited: u64) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Snapshot {
            tickets: load(&self.tickets),
            tickets_total: load(&self.tickets_total),
            files: load(&self.files),
            files_total: load(&self.files_total),
            bytes: load(&self.bytes),
            bytes_total: load(&self.bytes_total),
            retries: load(&self.retries),
            rate_limited,
            elapsed: self.elapsed(),
        }
    }
}

impl Snapshot {
    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(0.001)
    }

    pub fn files_per_sec(&self) -> f64 {
        self.files as f64 / self.secs()
    }

    pub fn tickets_per_sec(&self) -> f64 {
        self.tickets as f64 / self.secs()
    }

    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs()
    }

    /// Seconds left at the rate so far: by files when the run has files, else by tickets.
    pub fn eta_secs(&self) -> Option<u64> {
        let (done, total, rate) = if self.files_total > 0 {
            (self.files, self.files_total, self.files_per_sec())
        } else {
            (self.tickets, self.tickets_total, self.tickets_per_sec())
        };
        (rate > 0.0 && total > done).then(|| ((total - done) as f64 / rate).round() as u64)
    }

    /// One plain line: `tickets 12/40, files 30/95 at 3.1/s (1.2 MiB of 3.9 MiB,
    /// 250.0 KiB/s), ETA 21s, retries 2, 429s 0`.
    pub fn line(&self) -> String {
        let eta = self
            .eta_secs()
            .map(|e| format!(", ETA {}", human::duration_secs(e)))
            .unwrap_or_default();
        format!(
            "tickets {}/{}, files {}/{} at {} ({} of {}, {}){eta}, retries {}, 429s {}",
            self.tickets,
            self.tickets_total,
            self.files,
            self.files_total,
            human::rate(self.files_per_sec()),
            human::bytes(self.bytes),
            human::bytes(self.bytes_total),
            human::byte_rate(self.bytes_per_sec()),
            self.retries,
            self.rate_limited,
        )
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy)]
pub struct ReporterSettings {
    /// Show nothing.
    pub quiet: bool,
    /// Plain line interval (no terminal, or structured logs).
    pub every: Duration,
    /// Logs are JSON: plain lines always (never bars), with the numbers as fields.
    pub structured: bool,
}

/// The running progress display; [`Reporter::finish`] draws the final counts once more.
pub struct Reporter {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl Reporter {
    /// Stop showing progress, bars left drawn at the final counts.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Show progress until [`Reporter::finish`]. `quiet` shows nothing; without a terminal (or
/// with JSON logs), a log line every `every`.
pub fn spawn_reporter(
    progress: Arc<Progress>,
    client: Arc<Client>,
    settings: ReporterSettings,
) -> Option<Reporter> {
    if settings.quiet {
        return None;
    }
    let stop = CancellationToken::new();
    let snapshot = move || progress.snapshot(client.counters.rate_limited.load(Ordering::Relaxed));
    let task = if std::io::stderr().is_terminal() && !settings.structured {
        tokio::spawn(bars(snapshot, stop.clone()))
    } else {
        tokio::spawn(lines(snapshot, settings, stop.clone()))
    };
    Some(Reporter { task, stop })
}

async fn lines(
    snapshot: impl Fn() -> Snapshot,
    settings: ReporterSettings,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let s = snapshot();
        // Under our own target, so the default filter (our crate at info) shows it.
        if settings.structured {
            let round = |v: f64| (v * 10.0).round() / 10.0;
            tracing::info!(
                tickets = s.tickets,
                tickets_total = s.tickets_total,
                files = s.files,
                files_total = s.files_total,
                bytes = s.bytes,
                bytes_total = s.bytes_total,
                files_per_sec = round(s.files_per_sec()),
                tickets_per_sec = round(s.tickets_per_sec()),
                bytes_per_sec = s.bytes_per_sec().round() as u64,
                eta_secs = s.eta_secs(),
                retries = s.retries,
                rate_limited_429 = s.rate_limited,
                elapsed_secs = round(s.elapsed.as_secs_f64()),
                "{}",
                s.line()
            );
        } else {
            tracing::info!("{}", s.line());
        }
    }
}

/// A bar's style: rates rounded and bytes in the one unit of [`human::bytes`]; a bar with
/// nothing to do says so instead of drawing itself full.
fn bar_style(bytes: bool, empty: bool) -> ProgressStyle {
    let template = match (empty, bytes) {
        (true, _) => "{prefix:>8} nothing queued",
        (false, false) => "{prefix:>8} [{bar:30}] {pos}/{len} {rate} ETA {eta} {msg}",
        (false, true) => {
            "{prefix:>8} [{bar:30}] {done_bytes}/{total_bytes_h} {byte_rate} ETA {eta}"
        }
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&human::rate(s.per_sec()));
        })
        .with_key(
            "byte_rate",
            |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&human::byte_rate(s.per_sec()));
            },
        )
        .with_key(
            "done_bytes",
            |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&human::bytes(s.pos()));
            },
        )
        .with_key(
            "total_bytes_h",
            |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&human::bytes(s.len().unwrap_or(0)));
            },
        )
        .progress_chars("=> ")
}

async fn bars(snapshot: impl Fn() -> Snapshot, stop: CancellationToken) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let first = snapshot();
    let make = |prefix: &'static str, total: u64, bytes: bool| {
        let bar = multi.add(ProgressBar::new(total));
        bar.set_style(bar_style(bytes, total == 0));
        bar.set_prefix(prefix);
        bar
    };
    let tickets = make("tickets", first.tickets_total, false);
    let files = make("files", first.files_total, false);
    let bytes = make("bytes", first.bytes_total, true);
    let update = |s: &Snapshot| {
        tickets.set_position(s.tickets.min(s.tickets_total));
        tickets.set_message(format!("retries {}, 429s {}", s.retries, s.rate_limited));
        files.set_position(s.files.min(s.files_total));
        files.set_message(String::new());
        bytes.set_position(s.bytes.min(s.bytes_total));
    };
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => update(&snapshot()),
            _ = stop.cancelled() => break,
        }
    }
    // The last counts, drawn and left on screen: a bar is never cleared at 299/300.
    update(&snapshot());
    for bar in [&tickets, &files, &bytes] {
        bar.abandon();
    }
    // indicatif leaves the cursor at the end of the last bar: what follows (the summary, on
    // stdout, to the same terminal) starts on a line of its own.
    drop(multi);
    eprintln!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(files: u64, files_total: u64, secs: u64) -> Snapshot {
        Snapshot {
            tickets: 3,
            tickets_total: 10,
            files,
            files_total,
            bytes: 81_117_000,
            bytes_total: 2 * 81_117_000,
            retries: 2,
            rate_limited: 1,
            elapsed: Duration::from_secs(secs),
        }
    }

    #[test]
    fn the_plain_line_rounds_rates_uses_iec_bytes_and_shows_retries_and_429s() {
        let line = snap(30, 95, 3).line();
        assert_eq!(
            line,
            "tickets 3/10, files 30/95 at 10.0/s (77.4 MiB of 154.7 MiB, 25.8 MiB/s), \
             ETA 7s, retries 2, 429s 1"
        );
    }

    #[test]
    fn eta_is_by_files_when_there_are_files_else_by_tickets_and_none_when_done() {
        assert_eq!(snap(30, 90, 3).eta_secs(), Some(6));
        assert_eq!(snap(90, 90, 3).eta_secs(), None);
        assert_eq!(snap(0, 0, 3).eta_secs(), Some(7));
        assert_eq!(snap(0, 90, 3).eta_secs(), None);
    }
}
