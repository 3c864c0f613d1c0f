//! The commands, on validated settings: check, enqueue, import, run, status, retry, report.
//! Each returns an [`Exit`]; errors carry what the operator should do about them.

mod budgets;
mod control;
mod logging;
mod operator;
mod preview;
mod summary;

pub use control::{CancelSettings, cancel, pause, prune, resume, ticket_status};
pub use logging::{Level, LogFormat, LogSettings, init_logging, say};
pub use operator::{
    RETRY_ATTEMPTS, ReportOut, ReportRows, ReportSettings, RetrySettings, report, retry, status,
};
pub use summary::{Summary, SummaryOut};

use crate::domain::BatchId;
use crate::human::count;
use crate::ingest;
use crate::manifest::{self, ManifestOptions};
use crate::pipeline::{self, PoolConfig, Progress, RunEnd};
use crate::rate::{ApiRate, Rate, RateGate};
use crate::secret::Secret;
use crate::store::{self, status as stats, tickets};
use crate::visibuild::{Client, ClientConfig, Credentials};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the program ends, per SPEC: 0 all created; 1 failed tickets; 2 usage, manifest,
/// configuration or credential error; 3 the store or Visibuild unreachable for longer than
/// the outage limit; 130 interrupted (Ctrl-C, or the end of `--max-duration`); 143 stopped
/// by SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success,
    TicketsFailed,
    Usage,
    Unreachable,
    Interrupted,
    Terminated,
}

/// A mistake in what the operator gave us (flags, manifest, credentials): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The store or Visibuild could not be reached (for longer than the outage limit): exit 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnreachableError(pub String);

impl Exit {
    /// The process exit status, per SPEC.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::TicketsFailed => 1,
            Exit::Usage => 2,
            Exit::Unreachable => 3,
            Exit::Interrupted => 130,
            Exit::Terminated => 143,
        }
    }
}

/// The exit status of an error: 2 for the operator's mistakes (flags, manifest, refused
/// credentials, a misconfigured store), 3 for an unreachable store or Visibuild, else 1.
pub fn error_code(e: &anyhow::Error) -> u8 {
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
    if usage {
        2
    } else if unreachable {
        3
    } else {
        1
    }
}

/// The fatal `error:` line (JSON under `--log-format json`) and the exit status.
pub fn exit_code(result: Result<Exit, anyhow::Error>) -> ExitCode {
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(e) => {
            let code = error_code(&e);
            say(
                Level::Error,
                &format!("error: {}", one_line(&e)),
                serde_json::json!({ "exit_code": code }),
            );
            ExitCode::from(code)
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
    /// `--map FILE`: the register's map.
    pub map: Option<PathBuf>,
}

impl ManifestSettings {
    fn options(&self) -> ManifestOptions {
        ManifestOptions {
            files_root: self.files_root.clone(),
            allow_outside_root: self.allow_outside_root,
            map: self.map.clone(),
        }
    }
}

/// Which manifest to load, as which batch.
#[derive(Debug, Clone)]
pub struct EnqueueSettings {
    pub manifest: ManifestSettings,
    /// The batch's name (default: the manifest's file name).
    pub batch: Option<String>,
    /// Load the valid tickets of a manifest with problems.
    pub skip_invalid: bool,
    pub max_attempts: i32,
    /// `--receipts`: each ticket without files gets an `import-receipt.txt`.
    pub receipts: bool,
}

impl EnqueueSettings {
    /// The batch's name: the one given, else the manifest's file name.
    pub fn batch_name(&self) -> String {
        self.batch
            .clone()
            .unwrap_or_else(|| default_batch_name(&self.manifest.manifest))
    }
}

/// Where Visibuild is and how to call it.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub api_url: Option<String>,
    pub credentials: Option<Credentials>,
    pub sandbox: bool,
    pub api_rate: ApiRate,
    pub upload_rate: Rate,
    /// Upload bytes per second for every process sharing the store (`--bwlimit`).
    pub bwlimit: Option<crate::bandwidth::ByteRate>,
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
    /// Create a ticket without a file Visibuild keeps refusing (quarantined), reporting it.
    pub skip_quarantined: bool,
    /// `--max-duration`: when claiming stops.
    pub max_duration: Option<Window>,
}

/// A run's window (`--max-duration`): counted from the start of the process, so the time an
/// `import` spends loading its manifest is inside it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub limit: Duration,
    pub deadline: std::time::Instant,
}

impl Window {
    /// The limit as the operator wrote it, more or less: `6h`, `90m`, `2s`.
    pub fn describe(&self) -> String {
        humantime::format_duration(self.limit)
            .to_string()
            .replace(' ', "")
    }
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
pub async fn ui(database_url: &str, settings: UiSettings) -> Result<Exit, anyhow::Error> {
    let listener = bind_ui(&settings).await?;
    let database_url = database_url.to_string();
    let db = open_store(&database_url).await?;
    let addr = listener.local_addr()?;
    say(
        Level::Info,
        &format!("dashboard listening on http://{addr}/ (also /metrics and /healthz)"),
        serde_json::json!({ "listen": addr.to_string() }),
    );
    let router = crate::ui::router(
        db,
        crate::ui::UiConfig {
            token: settings.token,
            retry_attempts: RETRY_ATTEMPTS,
            database_url,
        },
    );
    crate::ui::serve(listener, router, stop_on_signals().token()).await?;
    Ok(Exit::Success)
}

pub async fn migrate(database_url: &str) -> Result<Exit, anyhow::Error> {
    open_store(database_url).await?;
    logging::result("database ready: migrations applied", serde_json::json!({}));
    Ok(Exit::Success)
}

/// Check a manifest, print every problem compiler-style and a summary line. Streams: the
/// rows go through a private staging file, so memory stays flat whatever the manifest's size.
/// With `preview`, the first tickets are printed first, as they would be sent.
pub async fn check(
    settings: &ManifestSettings,
    preview: Option<usize>,
) -> Result<Exit, anyhow::Error> {
    let manifest = open_manifest(settings).await?;
    let mut shown = 0;
    let wanted = preview.unwrap_or(0);
    let counts = ingest::check_each(
        manifest,
        ingest::DEFAULT_CHUNK,
        |problem| println!("{problem}"),
        |ticket| {
            if shown < wanted {
                shown += 1;
                print!("{}", preview::ticket(ticket));
            }
        },
    )
    .await
    .map_err(ingest_error)?;
    println!(
        "{}: {}",
        if counts.is_clean() { "ok" } else { "errors" },
        counts.summary()
    );
    Ok(if counts.is_clean() {
        Exit::Success
    } else {
        Exit::Usage
    })
}

/// `visibuild-import map REGISTER`: prints a starting map guessed from the register.
pub async fn starting_map(register: &Path) -> Result<Exit, anyhow::Error> {
    let register = register.to_owned();
    let map = tokio::task::spawn_blocking(move || manifest::starting_map(&register)).await??;
    print!("{map}");
    Ok(Exit::Success)
}

/// Opens the manifest: a missing or unreadable one is said before anything else is done.
async fn open_manifest(settings: &ManifestSettings) -> Result<manifest::Opened, anyhow::Error> {
    let path = settings.manifest.clone();
    let options = settings.options();
    Ok(tokio::task::spawn_blocking(move || manifest::open(&path, &options)).await??)
}

/// A staging error as the exit code wants it: the store's own error, so that an unreachable
/// store is exit 3 and a misconfigured one exit 2.
fn ingest_error(e: ingest::IngestError) -> anyhow::Error {
    match e {
        ingest::IngestError::Store(e) => e.into(),
        other => other.into(),
    }
}

/// What `enqueue` says as it loads: problems as errors, left-out and changed refs as
/// warnings (each with its fields in JSON logs).
struct EnqueueOutput<'a> {
    source: &'a str,
}

impl ingest::LoadOutput for EnqueueOutput<'_> {
    fn problem(&mut self, problem: manifest::Problem) {
        say(
            Level::Error,
            &problem.to_string(),
            serde_json::json!({
                "file": problem.file.display().to_string(),
                "line": problem.line,
                "column": problem.field,
                "ref": problem.reference,
                "problem": problem.message,
            }),
        );
    }

    fn skipped(&mut self, total: u64, refs: Vec<String>) {
        let more = total.saturating_sub(refs.len() as u64);
        let more = match more {
            0 => String::new(),
            n => format!(", … and {n} more (each named by its problems above)"),
        };
        say(
            Level::Warn,
            &format!(
                "skipped {} with problems: {}{more}",
                count(total, "ticket"),
                refs.join(", ")
            ),
            serde_json::json!({ "skipped": total, "skipped_refs": refs }),
        );
    }

    fn changed(&mut self, changed: ingest::Changed) {
        say(
            Level::Warn,
            &format!(
                "{}:{}: ref {:?} (project {}) differs from when it was loaded ({}); kept as it \
                 was, not loaded again (`report` shows it in changed_fields)",
                self.source,
                changed.line,
                changed.reference,
                changed.project_id,
                changed.fields.join(", ")
            ),
            serde_json::json!({
                "file": self.source,
                "line": changed.line,
                "ref": changed.reference,
                "project_id": changed.project_id.to_string(),
                "changed_fields": changed.fields,
            }),
        );
    }
}

/// Validate and load a manifest as a batch. Returns the batch. Streams through a staging
/// table in the store, so memory stays flat; loads in one transaction, all or nothing.
pub async fn enqueue(
    database_url: &str,
    settings: &EnqueueSettings,
) -> Result<(BatchId, store::Store), anyhow::Error> {
    let manifest = open_manifest(&settings.manifest).await?;
    let db = open_store(database_url).await?;
    let name = settings.batch_name();
    let source = settings.manifest.manifest.display().to_string();
    let load = ingest::Load {
        batch: name.clone(),
        source: source.clone(),
        skip_invalid: settings.skip_invalid,
        max_attempts: settings.max_attempts,
        receipts: settings.receipts.then(|| tickets::ReceiptSource {
            manifest: default_batch_name(&settings.manifest.manifest),
            batch: name.clone(),
        }),
    };
    let mut out = EnqueueOutput { source: &source };
    let loaded = ingest::enqueue(&db, manifest, &load, ingest::DEFAULT_CHUNK, &mut out)
        .await
        .map_err(ingest_error)?;
    let (batch_id, added) = match loaded {
        ingest::Loaded::Done { batch, added, .. } => (batch, added),
        ingest::Loaded::Refused { counts } => {
            return Err(UsageError(format!(
                "{source} has {}; nothing was loaded (fix them, or pass --skip-invalid to load the valid tickets)",
                count(counts.problems, "problem")
            ))
            .into());
        }
        ingest::Loaded::ReceiptsDiffer { batch_has } => {
            let flag = |on: bool| {
                if on {
                    "with --receipts"
                } else {
                    "without --receipts"
                }
            };
            return Err(UsageError(format!(
                "batch {name:?} was loaded {} and this load is {}: receipts are chosen once per \
                 batch; load again {}, or under another --batch name; nothing was loaded",
                flag(batch_has),
                flag(settings.receipts),
                flag(batch_has)
            ))
            .into());
        }
    };
    logging::result(
        &format!(
            "batch {name}: {} and {} added; {} already known; {} reported",
            count(added.tickets, "ticket"),
            count(added.files, "file"),
            added.unchanged,
            count(added.changed, "changed ref")
        ),
        serde_json::json!({
            "batch": name,
            "tickets_added": added.tickets,
            "files_added": added.files,
            "already_known": added.unchanged,
            "changed_refs": added.changed,
        }),
    );
    Ok((batch_id, db))
}

fn default_batch_name(manifest: &Path) -> String {
    if manifest == Path::new(manifest::STDIN) {
        return "stdin".into();
    }
    manifest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "manifest".into())
}

/// The client, and the in-process sandbox when rehearsing (kept alive by the caller).
async fn connect_api(
    api: &ApiSettings,
) -> Result<(Arc<Client>, Option<visibuild_sandbox::Sandbox>), anyhow::Error> {
    let (api_url, credentials, sandbox) = if api.sandbox {
        let sandbox = visibuild_sandbox::start(visibuild_sandbox::SandboxConfig::default())
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
        api_gate: Arc::new(RateGate::new(Some(api.api_rate.alone()))),
        upload_gate: Arc::new(RateGate::new(Some(api.upload_rate))),
        bytes_gate: api
            .bwlimit
            .map(|limit| Arc::new(RateGate::new(Some(limit.units())))),
        timeout: Duration::from_secs(60),
        answer_timeout: crate::visibuild::ANSWER_TIMEOUT,
        outages: Arc::default(),
    })?;
    Ok((Arc::new(client), sandbox))
}

/// Exchange client credentials for a token, then ask the API whether it is there, before
/// anything is loaded or claimed. Refused credentials, or an origin that does not serve the
/// API (404 on its path), are the operator's to fix (exit 2); an unreachable or silent
/// Visibuild is waited for up to the outage limit (then exit 3).
async fn authenticate(client: &Client, outage_limit: Duration) -> Result<(), anyhow::Error> {
    use crate::visibuild::ApiError;
    let started = std::time::Instant::now();
    let mut logged: Option<std::time::Instant> = None;
    loop {
        let checked = match client.authenticate().await {
            Ok(()) => match client.probe_api().await {
                // Refused connections sent nothing: the pool tries its jobs and pauses on
                // the outage as it would mid-run. A silent API (no answer) is waited for here,
                // so that no create is sent into it.
                Err(ApiError::Unreachable { .. }) => {
                    client.outages().forget_remote();
                    return Ok(());
                }
                probed => probed,
            },
            Err(e) => Err(e),
        };
        let error = match checked {
            Ok(crate::visibuild::Probe::Answered) => return Ok(()),
            Ok(crate::visibuild::Probe::NotServed) => {
                return Err(UsageError(
                    "this origin does not serve the Visibuild API (POST /api/core/v1/attachments \
                     answered 404): check --api-url (the origin only, e.g. \
                     https://app.visibuild.com.au) or use --region; nothing was loaded or sent"
                        .into(),
                )
                .into());
            }
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
                "the Visibuild API down since the run started ({}s, longer than --outage-secs): \
                 {error}; nothing was loaded or sent",
                started.elapsed().as_secs()
            ))
            .into());
        }
        if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
            logged = Some(std::time::Instant::now());
            tracing::warn!(error = %error, gives_up_after_secs = outage_limit.as_secs(),
                "Visibuild does not answer yet (access token or API check); trying again");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Why a run was asked to stop before its work ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopWhy {
    /// Ctrl-C (SIGINT): exit 130.
    Interrupt,
    /// SIGTERM (`systemctl stop`, `kill`, a pod's end): exit 143.
    Terminate,
    /// `--max-duration` ran out: exit 130, as an interrupted run.
    Window,
}

impl StopWhy {
    fn exit(self) -> Exit {
        match self {
            StopWhy::Interrupt | StopWhy::Window => Exit::Interrupted,
            StopWhy::Terminate => Exit::Terminated,
        }
    }
}

/// Asks a run to stop claiming, and remembers why (the first reason wins).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    token: CancellationToken,
    why: Arc<std::sync::OnceLock<StopWhy>>,
}

impl Stop {
    pub fn request(&self, why: StopWhy) {
        let _ = self.why.set(why);
        self.token.cancel();
    }

    /// Why it was asked to stop, if it was.
    pub fn why(&self) -> Option<StopWhy> {
        self.why.get().copied()
    }

    /// Cancelled when a stop is requested.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

/// Stops at the first Ctrl-C or SIGTERM; a second one exits at once (130 or 143).
pub fn stop_on_signals() -> Stop {
    let stop = Stop::default();
    let asked = stop.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let first = next_signal(&mut term).await;
        say(
            Level::Warn,
            "stopping: finishing in-flight work (signal again to exit at once)",
            serde_json::json!({ "signal": "first" }),
        );
        asked.request(first);
        let second = next_signal(&mut term).await.exit().code();
        say(
            Level::Warn,
            "second signal: exiting now; leases will return unfinished work to the queue",
            serde_json::json!({ "signal": "second", "exit_code": second }),
        );
        std::process::exit(i32::from(second));
    });
    stop
}

/// Stops `stop` when `window` ends (`--max-duration`), saying so.
fn stop_at_window_end(stop: &Stop, window: Window) {
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep_until(window.deadline.into()).await;
        if stop.why().is_none() {
            say(
                Level::Warn,
                &format!(
                    "--max-duration {} reached: no more work is claimed; in-flight work \
                     finishes and the next run resumes the rest",
                    window.describe()
                ),
                serde_json::json!({ "max_duration_secs": window.limit.as_secs_f64() }),
            );
            stop.request(StopWhy::Window);
        }
    });
}

/// The next Ctrl-C or SIGTERM, and which it was.
async fn next_signal(term: &mut Option<tokio::signal::unix::Signal>) -> StopWhy {
    match term {
        Some(t) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => StopWhy::Interrupt,
                _ = t.recv() => StopWhy::Terminate,
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
            StopWhy::Interrupt
        }
    }
}

/// The embedded store's file when `DATABASE_URL` is not set: `visibuild-import/queue.db` in
/// the user's state directory (`$XDG_STATE_HOME`, else `~/.local/state`).
pub fn default_store_url() -> Result<String, UsageError> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let state = absolute("XDG_STATE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".local").join("state")))
        .ok_or_else(|| {
            UsageError(
                "no state directory for the embedded store ($XDG_STATE_HOME and $HOME are unset \
                 or relative): set DATABASE_URL to sqlite:PATH or postgres://…"
                    .into(),
            )
        })?;
    Ok(store::sqlite_url(
        &state.join("visibuild-import").join("queue.db"),
    ))
}

/// Where a run keeps answers the store could not take yet (see [`pipeline::journal`]):
/// beside an embedded store's file; for Postgres, in the state directory, named for the
/// server and database (never the password).
fn journal_base(database_url: &str) -> PathBuf {
    if let Some(path) = store::sqlite_path(database_url) {
        let mut name = path.into_os_string();
        name.push("-answers");
        return PathBuf::from(name);
    }
    let dir = default_store_url()
        .ok()
        .and_then(|url| store::sqlite_path(&url))
        .and_then(|db| db.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
    let shown = store::redact_url(database_url);
    let digest = <md5::Md5 as md5::Digest>::digest(shown.as_bytes());
    dir.join(format!("answers-{}", hex::encode(&digest[..8])))
}

/// Opens the store, saying which embedded file it is (every run prints its path).
pub async fn open_store(database_url: &str) -> Result<store::Store, store::StoreError> {
    if let Some(path) = store::sqlite_path(database_url) {
        say(
            Level::Info,
            &format!("store: {}", path.display()),
            serde_json::json!({ "store": path.display().to_string() }),
        );
    }
    store::connect(database_url).await
}

/// The store a rehearsal uses, beside the real one: `queue-sandbox.db` next to an embedded
/// `queue.db`, or the Postgres database's name with `_sandbox` — so that tickets "created"
/// in a sandbox never count as created in the real queue.
pub fn rehearsal_database_url(database_url: &str) -> String {
    if let Some(path) = store::sqlite_path(database_url) {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "queue".into());
        let ext = path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        return store::sqlite_url(&path.with_file_name(format!("{stem}-sandbox{ext}")));
    }
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

/// Enqueue, run until the batch is finished, print the summary (and write it as JSON when
/// asked, an error included).
pub async fn import(
    database_url: &str,
    settings: &EnqueueSettings,
    api: ApiSettings,
    workers: WorkerSettings,
    summary: Option<SummaryOut>,
) -> Result<Exit, anyhow::Error> {
    let result = import_batch(database_url, settings, api, workers, summary.as_ref()).await;
    summary::write_on_error(summary.as_ref(), result)
}

async fn import_batch(
    database_url: &str,
    settings: &EnqueueSettings,
    api: ApiSettings,
    workers: WorkerSettings,
    summary: Option<&SummaryOut>,
) -> Result<Exit, anyhow::Error> {
    let database_url = queue_url(database_url, &api);
    // Credentials and the API are checked before anything is loaded.
    let (client, sandbox) = connect_api(&api).await?;
    authenticate(&client, workers.outage_limit).await?;
    if api.sandbox {
        // A rehearsal starts from nothing, like the in-process sandbox it talks to.
        store::drop_database(&database_url).await?;
        let shown = store::redact_url(&database_url);
        say(
            Level::Info,
            &format!("rehearsal: using the store {shown} (your real queue is untouched)"),
            serde_json::json!({ "database": shown.to_string(), "rehearsal": true }),
        );
    }
    let (batch_id, db) = enqueue(&database_url, settings).await?;
    let shared = share_budgets(&db, &client, &api).await?;
    let name = settings.batch_name();
    let run = RunTarget {
        batch: Some((batch_id, name)),
        watch: false,
        summary,
        dashboard: None,
        journal: journal_base(&database_url),
    };
    work(db, (client, sandbox, shared), workers, run).await
}

/// Joins the store's rate budgets, so that this process's calls count against the rate every
/// process sharing the store shares.
async fn share_budgets(
    db: &store::Store,
    client: &Client,
    api: &ApiSettings,
) -> Result<budgets::SharedBudgets, anyhow::Error> {
    let rates = (api.api_rate, api.upload_rate);
    budgets::share(
        db,
        client,
        rates,
        api.bwlimit,
        &pipeline::identity::worker_name(),
    )
    .await
    .context("joining the store's shared rate budgets")
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
    summary: Option<SummaryOut>,
    ui: Option<UiSettings>,
) -> Result<Exit, anyhow::Error> {
    let result = async {
        let listener = match &ui {
            Some(settings) => Some(bind_ui(settings).await?),
            None => None,
        };
        let (client, sandbox) = connect_api(&api).await?;
        let database_url = queue_url(database_url, &api);
        let db = open_store(&database_url).await?;
        let batch_id = operator::batch_id(&db, batch).await?;
        // Shared before the first call: the token fetch counts against the budget too.
        let shared = share_budgets(&db, &client, &api).await?;
        authenticate(&client, workers.outage_limit).await?;
        let journal = journal_base(&database_url);
        let dashboard = listener.zip(ui).map(|(listener, settings)| {
            let config = crate::ui::UiConfig {
                token: settings.token,
                retry_attempts: RETRY_ATTEMPTS,
                database_url,
            };
            (listener, config)
        });
        let run = RunTarget {
            batch: batch_id.zip(batch.map(str::to_string)),
            watch,
            summary: summary.as_ref(),
            dashboard,
            journal,
        };
        work(db, (client, sandbox, shared), workers, run).await
    }
    .await;
    summary::write_on_error(summary.as_ref(), result)
}

/// What a pool works on, where its summary goes, and the dashboard it serves meanwhile.
struct RunTarget<'a> {
    /// One batch (id and name), or every batch.
    batch: Option<(BatchId, String)>,
    watch: bool,
    summary: Option<&'a SummaryOut>,
    dashboard: Option<(tokio::net::TcpListener, crate::ui::UiConfig)>,
    /// Where answers the store cannot take yet are kept ([`journal_base`]).
    journal: PathBuf,
}

/// Serve the dashboard while the pool runs; stopped (and waited for, briefly) by the guard.
fn serve_dashboard(
    db: &store::Store,
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
    db: store::Store,
    (client, sandbox, shared): (
        Arc<Client>,
        Option<visibuild_sandbox::Sandbox>,
        budgets::SharedBudgets,
    ),
    workers: WorkerSettings,
    mut target: RunTarget<'_>,
) -> Result<Exit, anyhow::Error> {
    let batch = target.batch.as_ref().map(|b| b.0);
    control::prune_old_counters(&db).await;
    let dashboard = serve_dashboard(&db, target.dashboard.take());
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
    let reporter = pipeline::progress::spawn_reporter(
        progress.clone(),
        client.clone(),
        pipeline::progress::ReporterSettings {
            quiet: workers.quiet,
            every: workers.progress_every,
            structured: logging::format() == LogFormat::Json,
        },
    );
    let config = PoolConfig {
        workers: workers.workers,
        upload_concurrency: workers.upload_concurrency,
        lease: workers.lease,
        batch,
        watch: target.watch,
        outage_limit: workers.outage_limit,
        journal: Some(target.journal.clone()),
        skip_quarantined: workers.skip_quarantined,
        ..PoolConfig::default()
    };
    let stop = stop_on_signals();
    if let Some(window) = workers.max_duration {
        stop_at_window_end(&stop, window);
    }
    let end = pipeline::run(
        db.clone(),
        client.clone(),
        progress.clone(),
        config,
        stop.token(),
    )
    .await;
    // Leaving the budgets writes to the store: not tried when it is the one down, else
    // bounded (a silent member stops counting soon anyway).
    let store_down = matches!(&end, Ok(RunEnd::Outage(o)) if o.what == crate::outage::Down::Store);
    if !store_down {
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.leave()).await;
    }
    if let Some((stop, handle)) = dashboard {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    }
    let end = end?;
    if let Some(r) = reporter {
        r.finish().await;
    }
    if let RunEnd::Outage(outage) = &end {
        // The store may be the one down: the summary is what it can say in a few seconds.
        let wait = if store_down {
            Duration::ZERO
        } else {
            Duration::from_secs(5)
        };
        let totals = tokio::time::timeout(wait, async {
            stats::run_summary(&mut db.acquire().await?.conn(), batch).await
        })
        .await;
        if let Ok(Ok(totals)) = totals {
            Summary::new(
                target.batch.as_ref().map(|b| b.1.clone()),
                &totals,
                &progress,
                &client.counters,
                sandbox.as_ref().map(|s| s.tickets().len() as u64),
                Exit::Unreachable,
            )
            .print();
        }
        let since = outage
            .since_wall
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        say(
            Level::Error,
            &format!(
                "error: {} down since {since} ({}s, longer than --outage-secs): {}; nothing \
                 was marked failed for it and unfinished work returns to the queue — run again \
                 when it is back",
                outage.what.describe(),
                outage.since.elapsed().as_secs(),
                outage.reason
            ),
            serde_json::json!({
                "exit_code": Exit::Unreachable.code(),
                "down": outage.what.as_str(),
                "since": since,
            }),
        );
        if let Some(sandbox) = sandbox {
            sandbox.shutdown().await;
        }
        return Ok(Exit::Unreachable);
    }
    let totals = stats::run_summary(&mut db.acquire().await?.conn(), batch).await?;
    // Work left only because it is paused is not a failure: said, and exit 0.
    let paused = match &end {
        RunEnd::Drained => visibuild_queue::paused_jobs(&db, batch.map(|b| b.0)).await?,
        _ => 0,
    };
    // The summary comes first, then why the run stopped early, as the operator's last line.
    let (exit, why) = match &end {
        RunEnd::CredentialsRefused { reason } => (
            Exit::Usage,
            Some(format!(
                "error: Visibuild refused the credentials ({reason}); nothing was marked failed — \
                 fix VISIBUILD_TOKEN or VISIBUILD_CLIENT_ID/VISIBUILD_CLIENT_SECRET and run again"
            )),
        ),
        RunEnd::Outage(_) => unreachable!("an outage's end is reported above"),
        RunEnd::Interrupted => match stop.why() {
            Some(StopWhy::Window) => (
                Exit::Interrupted,
                Some(format!(
                    "stopped at --max-duration {}: {} left for the next run, which resumes them",
                    workers
                        .max_duration
                        .map(|w| w.describe())
                        .unwrap_or_default(),
                    crate::human::count(u64::try_from(totals.pending).unwrap_or(0), "ticket")
                )),
            ),
            why => (why.unwrap_or(StopWhy::Interrupt).exit(), None),
        },
        RunEnd::Drained if totals.failed + totals.needs_review > 0 => (Exit::TicketsFailed, None),
        RunEnd::Drained if paused > 0 => (Exit::Success, None),
        RunEnd::Drained if totals.pending > 0 => (Exit::TicketsFailed, None),
        RunEnd::Drained => (Exit::Success, None),
    };
    let summary = Summary::new(
        target.batch.map(|b| b.1),
        &totals,
        &progress,
        &client.counters,
        sandbox.as_ref().map(|s| s.tickets().len() as u64),
        exit,
    );
    summary.print();
    if paused > 0 {
        say(
            Level::Warn,
            &format!(
                "paused: {} waiting; `visibuild-import resume` lets workers claim them again",
                count(paused as u64, "job")
            ),
            serde_json::json!({ "paused_jobs": paused }),
        );
    }
    if let Some(why) = why {
        say(
            Level::Error,
            &why,
            serde_json::json!({ "exit_code": exit.code() }),
        );
    }
    if let Some(out) = target.summary {
        out.write(&summary)?;
    }
    if let Some(sandbox) = sandbox {
        sandbox.shutdown().await;
    }
    Ok(exit)
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
