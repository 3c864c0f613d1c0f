//! Progress of a run: counters the workers bump, shown as indicatif bars on a terminal or
//! as a plain line every few seconds when stderr is not one (cron, CI, a scheduler's log).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters of one run.
#[derive(Debug)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub tickets: AtomicU64,
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
            files_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            tickets_total: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Progress {
    pub fn file_done(&self, bytes: u64) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn ticket_done(&self) {
        self.tickets.fetch_add(1, Ordering::Relaxed);
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// One plain line: `tickets 12/40, files 30/95, 1.2 MB, 3.1 files/s, ETA 21s`.
    pub fn line(&self) -> String {
        let secs = self.elapsed().as_secs_f64().max(0.001);
        let files = self.files.load(Ordering::Relaxed);
        let files_total = self.files_total.load(Ordering::Relaxed);
        let tickets = self.tickets.load(Ordering::Relaxed);
        let tickets_total = self.tickets_total.load(Ordering::Relaxed);
        let rate = files as f64 / secs;
        let eta = if rate > 0.0 && files_total > files {
            format!(", ETA {:.0}s", (files_total - files) as f64 / rate)
        } else {
            String::new()
        };
        format!(
            "tickets {tickets}/{tickets_total}, files {files}/{files_total}, {}, {rate:.1} files/s{eta}",
            human_bytes(self.bytes.load(Ordering::Relaxed))
        )
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// How often the plain progress line is logged when stderr is not a terminal.
pub const DEFAULT_LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Show progress until the returned handle is dropped or aborted. `quiet` shows nothing;
/// without a terminal, a plain line every `every`.
pub fn spawn_reporter(
    progress: std::sync::Arc<Progress>,
    quiet: bool,
    every: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if quiet {
        return None;
    }
    if std::io::stderr().is_terminal() {
        Some(tokio::spawn(bars(progress)))
    } else {
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            tick.tick().await;
            loop {
                tick.tick().await;
                // Under our own target, so the default filter (our crate at info) shows it.
                tracing::info!("{}", progress.line());
            }
        }))
    }
}

async fn bars(progress: std::sync::Arc<Progress>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let bytes_style = ProgressStyle::with_template(
        "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let make = |prefix: &'static str, style: &ProgressStyle| {
        let bar = multi.add(ProgressBar::new(0));
        bar.set_style(style.clone());
        bar.set_prefix(prefix);
        bar
    };
    let tickets = make("tickets", &style);
    let files = make("files", &style);
    let bytes = make("bytes", &bytes_style);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        tickets.set_length(load(&progress.tickets_total));
        tickets.set_position(load(&progress.tickets));
        files.set_length(load(&progress.files_total));
        files.set_position(load(&progress.files));
        bytes.set_length(load(&progress.bytes_total));
        bytes.set_position(load(&progress.bytes));
    }
}
