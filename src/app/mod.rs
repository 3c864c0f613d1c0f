//! The commands, on validated settings: check, enqueue, import, run, status, retry, report.
//! Each returns an [`Exit`]; errors carry what the operator should do about them.

mod logging;
mod operator;

pub use logging::{LogFormat, LogSettings, init_logging};
pub use operator::{
    RETRY_ATTEMPTS, ReportOut, ReportSettings, RetrySettings, report, retry, status,
};

use crate::domain::BatchId;
use crate::manifest::{self, Checked, ManifestOptions};
use crate::pipeline::{self, PoolConfig, Progress, RunEnd};
use crate::rate::{Rate, RateGate};
use crate::secret::Secret;
use crate::store::{self, status as stats, tickets};
use crate::visibuild::{Client, ClientConfig, Credentials};
use anyhow::Context as _;
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the program ends, per SPEC: 0 all created; 1 failed tickets; 2 usage, manifest,
/// configuration or credential error; 3 the store or Visibuild unreachable for longer than
/// the outage limit; 130 interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    TicketsFailed,
    Usage,
    Unreachable,
    Interrupted,
}

/// A mistake in what the operator gave us (flags, manifest, credentials): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The store or Visibuild could not be reached (for longer than the outage limit): exit 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnreachableError(pub String);

pub fn exit_code(result: Result<Exit, anyhow::Error>) -> ExitCode {
    match result {
        Ok(Exit::Success) => ExitCode::SUCCESS,
        Ok(Exit::TicketsFailed) => ExitCode::from(1),
        Ok(Exit::Usage) => ExitCode::from(2),
        Ok(Exit::Unreachable) => ExitCode::from(3),
        Ok(Exit::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            let usage = e.chain().any(|c| {
                c.is::<UsageError>()
                    || c.is::<manifest::ManifestError>()
                    || matches!(
                        c.downcast_ref::<crate::visibuild::ApiError>(),
                        Some(crate::visibuild::ApiError::Unauthorized { .. })
                    )
                    || c.downcast_ref::<store::StoreError>()
                        .is_some_and(store::StoreError::is_misconfigured)
            });
            let unreachable = e.chain().any(|c| {
                c.is::<UnreachableError>()
                    || c.downcast_ref::<store::StoreError>()
                        .is_some_and(store::StoreError::is_unreachable)
            });
            ExitCode::from(if usage {
                2
            } else if unreachable {
                3
            } else {
                1
            })
        }
    }
}

/// An error and its causes on one line, each said once: a cause whose text the one before
/// it already contains is skipped (sqlx repeats its source's message in its own).
fn one_line(error: &anyhow::Error) -> String {
    let mut said: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !said.last().is_some_and(|last| last.contains(&text)) {
            said.push(text);
        }
    }
    said.join(": ")
}

/// Which manifest, and how to read it.
#[derive(Debug, Clone)]
pub struct ManifestSettings {
    pub manifest: PathBuf,
    pub files_root: Option<PathBuf>,
    pub allow_outside_root: bool,
}

impl ManifestSettings {
    fn options(&self) -> ManifestOptions {
        ManifestOptions {
            files_root: self.files_root.clone(),
            allow_outside_root: self.allow_outside_root,
        }
    }
}

/// Where Visibuild is and how to call it.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub api_url: Option<String>,
    pub credentials: Option<Credentials>,
    pub sandbox: bool,
    pub api_rate: Rate,
    pub upload_rate: Rate,
}

/// How hard to work.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub workers: usize,
    pub upload_concurrency: usize,
    pub lease: Duration,
    /// Plain progress line interval (no terminal).
    pub progress_every: Duration,
    pub quiet: bool,
    /// How long the database or Visibuild may stay unreachable before the run exits 3.
    pub outage_limit: Duration,
}

/// Where the dashboard listens, and the token it asks for (required off loopback).
#[derive(Debug, Clone)]
pub struct UiSettings {
    pub listen: String,
    pub token: Option<Secret>,
}

/// Check the listen address against the token and bind it: a refusal is the operator's to
/// fix (exit 2), found before anything else is done.
async fn bind_ui(settings: &UiSettings) -> Result<tokio::net::TcpListener, anyhow::Error> {
    crate::ui::bind(&settings.listen, settings.token.as_ref())
        .await
        .map_err(|e| UsageError(one_line(&anyhow::Error::from(e))).into())
}

/// `visibuild-import ui`: serve the dashboard, `/metrics` and `/healthz` until a signal.
pub async fn ui(
    database_url: &str,
    settings: UiSettings,
    sandbox: bool,
) -> Result<Exit, anyhow::Error> {
    let listener = bind_ui(&settings).await?;
    let database_url = if sandbox {
        rehearsal_database_url(database_url)
    } else {
        database_url.to_string()
    };
    let db = store::connect(&database_url).await?;
    let addr = listener.local_addr()?;
    println!("dashboard listening on http://{addr}/ (also /metrics and /healthz)");
    let router = crate::ui::router(
        db,
        crate::ui::UiConfig {
            token: settings.token,
            budget: None,
            retry_attempts: RETRY_ATTEMPTS,
            database_url,
        },
    );
    crate::ui::serve(listener, router, stop_on_signals()).await?;
    Ok(Exit::Success)
}

pub async fn migrate(database_url: &str) -> Result<Exit, anyhow::Error> {
    store::connect(database_url).await?;
    println!("database ready: migrations applied");
    Ok(Exit::Success)
}

/// Check a manifest, print every problem compiler-style and a summary line.
pub async fn check(settings: &ManifestSettings) -> Result<Exit, anyhow::Error> {
    let checked = check_manifest(settings).await?;
    for problem in &checked.problems {
        println!("{problem}");
    }
    println!("{}", summary_line(&checked));
    Ok(if checked.is_clean() {
        Exit::Success
    } else {
        Exit::Usage
    })
}

async fn check_manifest(settings: &ManifestSettings) -> Result<Checked, anyhow::Error> {
    let path = settings.manifest.clone();
    let options = settings.options();
    Ok(tokio::task::spawn_blocking(move || manifest::check(&path, &options)).await??)
}

fn summary_line(checked: &Checked) -> String {
    format!(
        "{}: {} tickets, {} files, {} bytes; {} problems",
        if checked.is_clean() { "ok" } else { "errors" },
        checked.tickets.len(),
        checked.files(),
        checked.bytes(),
        checked.problems.len()
    )
}

/// Validate and load a manifest as a batch. Returns the batch.
pub async fn enqueue(
    database_url: &str,
    settings: &ManifestSettings,
    batch: Option<&str>,
    skip_invalid: bool,
    max_attempts: i32,
) -> Result<(BatchId, PgPool), anyhow::Error> {
    let checked = check_manifest(settings).await?;
    for problem in &checked.problems {
        eprintln!("{problem}");
    }
    if !checked.is_clean() && !skip_invalid {
        return Err(UsageError(format!(
            "{} has {} problems; nothing was loaded (fix them, or pass --skip-invalid to load the valid tickets)",
            settings.manifest.display(),
            checked.problems.len()
        ))
        .into());
    }
    if !checked.skipped_refs.is_empty() {
        eprintln!(
            "skipped {} tickets with problems: {}",
            checked.skipped_refs.len(),
            checked.skipped_refs.join(", ")
        );
    }
    let db = store::connect(database_url).await?;
    let name = batch
        .map(str::to_string)
        .unwrap_or_else(|| default_batch_name(&settings.manifest));
    // Stored absolute: workers open every file inside this folder, from any working folder.
    let root = files_root(settings);
    let root = root.canonicalize().unwrap_or(root);
    let mut tx = db.begin().await?;
    let batch_id = tickets::upsert_batch(
        &mut *tx,
        &name,
        &settings.manifest.to_string_lossy(),
        &root.to_string_lossy(),
    )
    .await?;
    let loaded = tickets::load_tickets(&mut tx, batch_id, &checked.tickets, max_attempts).await?;
    tx.commit().await?;
    for changed in &loaded.changed {
        eprintln!(
            "{}:{}: ref {:?} (project {}) was loaded before with other fields; kept as it was, not loaded again",
            settings.manifest.display(),
            changed.line,
            changed.reference,
            changed.project_id
        );
    }
    println!(
        "batch {name}: {} tickets and {} files added; {} already known; {} changed refs reported",
        loaded.tickets_added,
        loaded.attachments_added,
        loaded.unchanged,
        loaded.changed.len()
    );
    Ok((batch_id, db))
}

fn default_batch_name(manifest: &Path) -> String {
    manifest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "manifest".into())
}

fn files_root(settings: &ManifestSettings) -> PathBuf {
    settings.files_root.clone().unwrap_or_else(|| {
        settings
            .manifest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    })
}

/// The client, and the in-process sandbox when rehearsing (kept alive by the caller).
async fn connect_api(
    api: &ApiSettings,
) -> Result<(Arc<Client>, Option<crate::sandbox::Sandbox>), anyhow::Error> {
    let (api_url, credentials, sandbox) = if api.sandbox {
        let sandbox = crate::sandbox::start(crate::sandbox::SandboxConfig::default())
            .await
            .context("starting the in-process sandbox")?;
        let credentials = api
            .credentials
            .clone()
            .unwrap_or_else(|| Credentials::Token(Secret::new("sandbox-token")));
        tracing::info!(url = %sandbox.base_url(), "rehearsing against the in-process sandbox");
        (sandbox.base_url(), credentials, Some(sandbox))
    } else {
        let url = api.api_url.clone().ok_or_else(|| {
            UsageError(
                "no Visibuild origin: pass --api-url or --region (or --sandbox to rehearse)".into(),
            )
        })?;
        let credentials = api.credentials.clone().ok_or_else(|| {
            UsageError(
                "no credentials: set VISIBUILD_TOKEN, or VISIBUILD_CLIENT_ID and VISIBUILD_CLIENT_SECRET".into(),
            )
        })?;
        (url, credentials, None)
    };
    let client = Client::new(ClientConfig {
        api_url,
        credentials,
        api_gate: Arc::new(RateGate::new(Some(api.api_rate))),
        upload_gate: Arc::new(RateGate::new(Some(api.upload_rate))),
        timeout: Duration::from_secs(60),
    })?;
    Ok((Arc::new(client), sandbox))
}

/// Exchange client credentials for a token before anything is loaded or claimed. Refused
/// credentials, or an origin that is not Visibuild's, are the operator's to fix (exit 2); an
/// unreachable Visibuild is waited for up to the outage limit (then exit 3). A long-lived
/// token is only checked by its first call.
async fn authenticate(client: &Client, outage_limit: Duration) -> Result<(), anyhow::Error> {
    use crate::visibuild::ApiError;
    let started = std::time::Instant::now();
    let mut logged: Option<std::time::Instant> = None;
    loop {
        let error = match client.authenticate().await {
            Ok(()) => return Ok(()),
            Err(ApiError::Unauthorized { reason }) => {
                return Err(UsageError(format!(
                    "Visibuild refused the credentials ({reason}); check VISIBUILD_CLIENT_ID and VISIBUILD_CLIENT_SECRET"
                ))
                .into());
            }
            Err(ApiError::Permanent { status, reason }) => {
                return Err(UsageError(format!(
                    "the token endpoint answered {status} ({reason}); is --api-url Visibuild's origin?"
                ))
                .into());
            }
            Err(e) => e,
        };
        if started.elapsed() > outage_limit {
            return Err(UnreachableError(format!(
                "no access token after {}s: {error}; nothing was loaded or sent",
                started.elapsed().as_secs()
            ))
            .into());
        }
        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
            logged = Some(std::time::Instant::now());
            tracing::warn!(error = %error, gives_up_after_secs = outage_limit.as_secs(),
                "cannot fetch an access token yet; trying again");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Cancelled at the first Ctrl-C or SIGTERM; a second one exits at once.
pub fn stop_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let stop = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        next_signal(&mut term).await;
        eprintln!("stopping: finishing in-flight work (signal again to exit at once)");
        stop.cancel();
        next_signal(&mut term).await;
        eprintln!("second signal: exiting now; leases will return unfinished work to the queue");
        std::process::exit(130);
    });
    token
}

/// The next Ctrl-C or SIGTERM.
async fn next_signal(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(t) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = t.recv() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The database a rehearsal uses: the real one's name with `_sandbox`, so that tickets
/// "created" in a sandbox never count as created in the real queue.
pub fn rehearsal_database_url(database_url: &str) -> String {
    match url::Url::parse(database_url) {
        Ok(mut url) => {
            let name = url.path().trim_start_matches('/').to_string();
            let name = if name.is_empty() {
                "visibuild_import".into()
            } else {
                name
            };
            url.set_path(&format!("/{name}_sandbox"));
            url.to_string()
        }
        Err(_) => format!("{database_url}_sandbox"),
    }
}

/// Enqueue, run until the batch is finished, print the summary.
pub async fn import(
    database_url: &str,
    manifest: &ManifestSettings,
    batch: Option<&str>,
    skip_invalid: bool,
    max_attempts: i32,
    api: ApiSettings,
    workers: WorkerSettings,
) -> Result<Exit, anyhow::Error> {
    let database_url = queue_url(database_url, &api);
    // Credentials and the API are checked before anything is loaded.
    let (client, sandbox) = connect_api(&api).await?;
    authenticate(&client, workers.outage_limit).await?;
    if api.sandbox {
        // A rehearsal starts from nothing, like the in-process sandbox it talks to.
        store::drop_database(&database_url).await?;
        eprintln!(
            "rehearsal: using database {} (your real queue is untouched)",
            store::redact_url(&database_url)
        );
    }
    let (batch_id, db) =
        enqueue(&database_url, manifest, batch, skip_invalid, max_attempts).await?;
    work(db, (client, sandbox), workers, false, Some(batch_id), None).await
}

/// The queue's database: the real one, or the rehearsal's when talking to the sandbox.
fn queue_url(database_url: &str, api: &ApiSettings) -> String {
    if api.sandbox {
        rehearsal_database_url(database_url)
    } else {
        database_url.to_string()
    }
}

/// Run the pool on what is queued (one batch, or all); with `ui`, serve the dashboard from
/// this worker while it runs.
pub async fn run(
    database_url: &str,
    api: ApiSettings,
    workers: WorkerSettings,
    watch: bool,
    batch: Option<&str>,
    ui: Option<UiSettings>,
) -> Result<Exit, anyhow::Error> {
    let listener = match &ui {
        Some(settings) => Some(bind_ui(settings).await?),
        None => None,
    };
    let (client, sandbox) = connect_api(&api).await?;
    let database_url = queue_url(database_url, &api);
    let db = store::connect(&database_url).await?;
    let batch_id = operator::batch_id(&db, batch).await?;
    authenticate(&client, workers.outage_limit).await?;
    let dashboard = listener.zip(ui).map(|(listener, settings)| {
        let config = crate::ui::UiConfig {
            token: settings.token,
            budget: Some(crate::ui::Budget {
                api_per_sec: api.api_rate.per_sec_f64(),
                upload_per_sec: api.upload_rate.per_sec_f64(),
            }),
            retry_attempts: RETRY_ATTEMPTS,
            database_url,
        };
        (listener, config)
    });
    work(db, (client, sandbox), workers, watch, batch_id, dashboard).await
}

/// Serve the dashboard while the pool runs; stopped (and waited for, briefly) by the guard.
fn serve_dashboard(
    db: &PgPool,
    dashboard: Option<(tokio::net::TcpListener, crate::ui::UiConfig)>,
) -> Option<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let (listener, config) = dashboard?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("dashboard listening on http://{addr}/ (also /metrics and /healthz)");
    }
    let stop = CancellationToken::new();
    let router = crate::ui::router(db.clone(), config);
    let serving = stop.clone();
    let handle = tokio::spawn(async move {
        if let Err(e) = crate::ui::serve(listener, router, serving).await {
            tracing::warn!(error = %e, "the dashboard stopped");
        }
    });
    Some((stop, handle))
}

async fn work(
    db: PgPool,
    (client, sandbox): (Arc<Client>, Option<crate::sandbox::Sandbox>),
    workers: WorkerSettings,
    watch: bool,
    batch: Option<BatchId>,
    dashboard: Option<(tokio::net::TcpListener, crate::ui::UiConfig)>,
) -> Result<Exit, anyhow::Error> {
    let dashboard = serve_dashboard(&db, dashboard);
    let progress = Arc::new(Progress::default());
    let remaining = stats::remaining(&db, batch).await?;
    progress
        .tickets_total
        .store(remaining.tickets, std::sync::atomic::Ordering::Relaxed);
    progress
        .files_total
        .store(remaining.files, std::sync::atomic::Ordering::Relaxed);
    progress
        .bytes_total
        .store(remaining.bytes, std::sync::atomic::Ordering::Relaxed);
    let reporter =
        pipeline::progress::spawn_reporter(progress.clone(), workers.quiet, workers.progress_every);
    let config = PoolConfig {
        workers: workers.workers,
        upload_concurrency: workers.upload_concurrency,
        lease: workers.lease,
        batch,
        watch,
        outage_limit: workers.outage_limit,
        ..PoolConfig::default()
    };
    let stop = stop_on_signals();
    let end = pipeline::run(db.clone(), client.clone(), progress.clone(), config, stop).await;
    if let Some((stop, handle)) = dashboard {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    }
    let end = end?;
    if let Some(r) = reporter {
        r.abort();
    }
    let summary = stats::run_summary(&db, batch).await?;
    print_summary(&summary, &progress, &client, sandbox.as_ref());
    if let Some(sandbox) = sandbox {
        sandbox.shutdown().await;
    }
    Ok(match end {
        RunEnd::CredentialsRefused { reason } => {
            eprintln!(
                "error: Visibuild refused the credentials ({reason}); nothing was marked failed — \
                 fix VISIBUILD_TOKEN or VISIBUILD_CLIENT_ID/VISIBUILD_CLIENT_SECRET and run again"
            );
            Exit::Usage
        }
        RunEnd::ApiUnreachable { reason, for_secs } => {
            eprintln!(
                "error: Visibuild unreachable for {for_secs}s ({reason}); nothing was marked \
                 failed for it — run again when it answers"
            );
            Exit::Unreachable
        }
        RunEnd::StoreUnreachable { reason } => {
            eprintln!(
                "error: the queue's database unreachable for longer than the outage limit \
                 ({reason}); unfinished work returns to the queue — run again when it is back"
            );
            Exit::Unreachable
        }
        RunEnd::Interrupted => Exit::Interrupted,
        RunEnd::Drained if summary.failed + summary.needs_review + summary.pending > 0 => {
            Exit::TicketsFailed
        }
        RunEnd::Drained => Exit::Success,
    })
}

fn print_summary(
    s: &stats::RunSummary,
    progress: &Progress,
    client: &Client,
    sandbox: Option<&crate::sandbox::Sandbox>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &client.counters;
    println!(
        "tickets: {} created, {} failed, {} need review, {} not finished",
        s.created, s.failed, s.needs_review, s.pending
    );
    println!(
        "this run: {} files uploaded ({}), {} tickets created in {:.1}s",
        progress.files.load(Relaxed),
        pipeline::progress::human_bytes(progress.bytes.load(Relaxed)),
        progress.tickets.load(Relaxed),
        progress.elapsed().as_secs_f64()
    );
    println!(
        "requests: {} presign, {} upload, {} create; {} rate-limited (429)",
        c.presigns.load(Relaxed),
        c.uploads.load(Relaxed),
        c.creates.load(Relaxed),
        c.rate_limited.load(Relaxed)
    );
    for (reason, count) in &s.top_errors {
        println!("  {count} × {reason}");
    }
    if let Some(sandbox) = sandbox {
        println!(
            "sandbox: {} tickets now exist there (rehearsal only; nothing was sent to Visibuild)",
            sandbox.tickets().len()
        );
    }
    if s.failed + s.needs_review > 0 {
        println!(
            "see `visibuild-import status` for reasons, `visibuild-import retry` to try again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Cause {
        text: &'static str,
        #[source]
        source: Option<Box<Cause>>,
    }

    fn chain(texts: &[&'static str]) -> anyhow::Error {
        let mut error = None;
        for text in texts.iter().rev() {
            error = Some(Cause {
                text,
                source: error.map(Box::new),
            });
        }
        error.unwrap().into()
    }

    #[test]
    fn one_line_says_each_cause_once() {
        let e = chain(&[
            "cannot connect to postgres://db/x",
            "error communicating with database: Connection refused (os error 111)",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            one_line(&e),
            "cannot connect to postgres://db/x: error communicating with database: \
             Connection refused (os error 111)"
        );
        let e = chain(&["reading a.csv", "No such file", "permission denied"]);
        assert_eq!(
            one_line(&e),
            "reading a.csv: No such file: permission denied"
        );
    }
}
