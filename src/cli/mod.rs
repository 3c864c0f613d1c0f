//! The command line: clap types live here and nowhere else. Flags become validated settings
//! once ([`crate::app`] takes those), so the rest of the program never sees clap.

mod man;
pub mod sandbox_args;

use crate::app::{
    self, ApiSettings, EnqueueSettings, Exit, LogFormat, LogSettings, ManifestSettings,
    WorkerSettings,
};
use crate::bandwidth::ByteRate;
use crate::domain::JobId;
use crate::rate::{ApiRate, Rate};
use crate::secret::Secret;
use crate::visibuild::{Credentials, Region};
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// Where the credentials come from: the environment only, never a flag (a flag shows in
/// `ps` and in shell history). Named in the help of the commands that call Visibuild.
macro_rules! credentials_help {
    () => {
        "\
Credentials (environment variables only, never flags):
  VISIBUILD_TOKEN            a long-lived bearer token; or
  VISIBUILD_CLIENT_ID        OAuth client credentials, together with
  VISIBUILD_CLIENT_SECRET    (exchanged at POST /oauth/token, refreshed every hour)
  With --sandbox none are needed.
"
    };
}

const TOP_HELP: &str = concat!(
    credentials_help!(),
    "
Examples:
  visibuild-import check defects.csv
  visibuild-import import defects.csv --sandbox          # rehearse; touches nothing real
  VISIBUILD_CLIENT_ID=… VISIBUILD_CLIENT_SECRET=… visibuild-import import defects.csv --region au
  visibuild-import status
  visibuild-import report --failed-only --out failed.csv

Exit codes: 0 all tickets created; 1 some failed or need review; 2 usage, manifest or
credential error; 3 the database or Visibuild unreachable for longer than the outage limit;
130 interrupted by Ctrl-C or at --max-duration, 143 by SIGTERM (a later `run` resumes)."
);

const IMPORT_HELP: &str = concat!(
    credentials_help!(),
    "
Examples:
  visibuild-import import defects.csv --sandbox
  VISIBUILD_CLIENT_ID=… VISIBUILD_CLIENT_SECRET=… visibuild-import import defects.csv \\
      --region au --api-rate 10/s --upload-rate 20/s --summary-json last-run.json"
);

const RUN_HELP: &str = concat!(
    credentials_help!(),
    "
Examples:
  VISIBUILD_TOKEN=… visibuild-import run --region au             # until the queue is empty
  VISIBUILD_TOKEN=… visibuild-import run --region au --watch     # keep serving
  VISIBUILD_TOKEN=… visibuild-import run --region au --batch defects.csv --summary-json run.json"
);

/// Bulk-import defect tickets with their photos and documents into Visibuild.
#[derive(Debug, Parser)]
#[command(name = "visibuild-import", version, about, long_about = None, after_help = TOP_HELP)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Log format: human (default) or json (for schedulers: every stderr line is JSON).
    #[arg(
        long,
        value_enum,
        global = true,
        default_value = "human",
        env = "VISIBUILD_LOG_FORMAT",
        help_heading = "Output"
    )]
    log_format: LogFormat,
    /// More logs (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Output")]
    verbose: u8,
    /// Only warnings and errors; no progress.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = "Output"
    )]
    quiet: bool,
}

/// The queue's store: only on the commands that use it.
#[derive(Debug, Args)]
struct StoreArgs {
    /// The queue's store, created and migrated on first use: `sqlite:PATH` (an embedded
    /// file) or `postgres://…` (for several worker hosts) [default: an embedded file in the
    /// state directory, $XDG_STATE_HOME or ~/.local/state, visibuild-import/queue.db]
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_name = "URL",
        help_heading = "Store"
    )]
    database_url: Option<String>,
}

impl StoreArgs {
    /// The store's URL: the one given, or the embedded file in the state directory; with
    /// `rehearsal`, the rehearsal's store beside it.
    fn url(&self, rehearsal: bool) -> Result<String, anyhow::Error> {
        let url = match &self.database_url {
            Some(url) if !url.trim().is_empty() => url.clone(),
            _ => app::default_store_url()?,
        };
        crate::store::check_url(&url)?;
        Ok(if rehearsal {
            app::rehearsal_database_url(&url)
        } else {
            url
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enqueue a manifest, run until its batch is finished, print the summary.
    #[command(after_help = IMPORT_HELP)]
    Import(ImportArgs),
    /// Validate a manifest and load it into the queue as a batch (idempotent).
    #[command(after_help = "\
Examples:
  visibuild-import enqueue defects.csv
  visibuild-import enqueue defects.csv --batch nightly-2026-12-01 --skip-invalid")]
    Enqueue(EnqueueArgs),
    /// Validate a manifest only: columns, values, files. Touches nothing.
    #[command(after_help = "\
Example:
  visibuild-import check defects.csv --files-root /srv/defect-photos")]
    Check(CheckArgs),
    /// Print a starting map (TOML) for a register, guessed from its header and values.
    #[command(after_help = "\
Example:
  visibuild-import map register.xlsx > register.map.toml
  visibuild-import check register.xlsx --map register.map.toml --preview 3")]
    Map(MapArgs),
    /// Run the worker pool on whatever is queued.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Per batch: tickets, files and jobs by state, failures with reasons.
    #[command(after_help = "\
Examples:
  visibuild-import status
  visibuild-import status --batch defects.csv --json | jq '.[0].tickets'")]
    Status(StatusArgs),
    /// Put failed work back in the queue.
    #[command(after_help = "\
Examples:
  visibuild-import retry --ref HV-0101
  visibuild-import retry --batch defects.csv --error-contains '503'
  visibuild-import retry --force        # also re-send tickets needing review, once checked")]
    Retry(RetryArgs),
    /// Stop claiming new work, everywhere or for one batch: every worker process obeys
    /// within seconds; work in flight finishes.
    #[command(after_help = "\
Examples:
  visibuild-import pause                        # the vendor has an incident
  visibuild-import pause --batch defects.csv
  visibuild-import resume")]
    Pause(PauseArgs),
    /// Lift a pause (all pauses, or one batch's).
    Resume(PauseArgs),
    /// Send nothing more for a batch's or a ticket's tickets not yet sent; `retry` brings
    /// them back.
    #[command(after_help = "\
Examples:
  visibuild-import cancel --batch wrong-file.csv
  visibuild-import cancel --ref HV-0101
  visibuild-import retry --batch wrong-file.csv   # changed your mind")]
    Cancel(CancelArgs),
    /// Delete the history of finished batches (jobs, attempts) and request counters older
    /// than an age; which tickets exist, and their Visibuild ids, are kept for good.
    #[command(after_help = "\
Example:
  visibuild-import prune --older-than 30d")]
    Prune(PruneArgs),
    /// Write a results CSV: one row per ticket, or per file with --files.
    #[command(after_help = "\
Examples:
  visibuild-import report --out results.csv
  visibuild-import report --failed-only --out failed.csv
  visibuild-import report --files --batch defects.csv --out files.csv")]
    Report(ReportArgs),
    /// Serve the local Visibuild-compatible API and S3 endpoint.
    #[command(after_help = "\
Example:
  visibuild-import sandbox --listen 127.0.0.1:8080 --client demo:s3cret --drop-rate 0.1")]
    Sandbox(sandbox_args::SandboxArgs),
    /// Serve the operations dashboard, /metrics and /healthz.
    Ui(UiArgs),
    /// Create the store (the embedded file, or the Postgres database) if needed and apply
    /// migrations.
    #[command(after_help = "\
Example:
  DATABASE_URL=postgres://importer@db.internal/visibuild_import visibuild-import migrate")]
    Migrate(MigrateArgs),
    /// Print a shell completion script on stdout.
    #[command(after_help = "\
Examples:
  visibuild-import completions bash > ~/.local/share/bash-completion/completions/visibuild-import
  visibuild-import completions zsh > ~/.zfunc/_visibuild-import
  visibuild-import completions fish > ~/.config/fish/completions/visibuild-import.fish")]
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout.
    #[command(after_help = "\
Example:
  visibuild-import man > ~/.local/share/man/man1/visibuild-import.1 && man visibuild-import")]
    Man,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct ManifestArgs {
    /// The CSV manifest ("-" for standard input, which needs --files-root).
    manifest: PathBuf,
    /// Folder the attachment paths are relative to (default: the manifest's folder; required
    /// for a manifest read from standard input, a pipe or /dev).
    #[arg(long, env = "VISIBUILD_FILES_ROOT", help_heading = "Manifest")]
    files_root: Option<PathBuf>,
    /// Allow absolute paths and paths outside the files root.
    #[arg(long, help_heading = "Manifest")]
    allow_outside_root: bool,
    /// A register in its own shape (.csv of any delimiter, .xlsx, .xls, .ods): the TOML map
    /// from its columns and words to the manifest's (see `visibuild-import map`).
    #[arg(long, value_name = "FILE", help_heading = "Manifest")]
    map: Option<PathBuf>,
}

/// What `enqueue` and `import` load.
#[derive(Debug, Args)]
struct LoadArgs {
    #[command(flatten)]
    manifest: ManifestArgs,
    /// Batch name (default: the manifest's file name).
    #[arg(long, help_heading = "Manifest")]
    batch: Option<String>,
    /// Load the valid tickets of a manifest with errors, and list the skipped ones.
    #[arg(long, help_heading = "Manifest")]
    skip_invalid: bool,
    /// Give each ticket without files a small `import-receipt.txt`, so a lost create answer
    /// can be proven and no ticket needs review (one more presign and PUT per such ticket).
    #[arg(long, help_heading = "Manifest")]
    receipts: bool,
}

/// Attempts of the jobs a load creates; apart from [`LoadArgs`] so that its heading comes
/// after Visibuild's in `import --help` (clap orders headings by first use).
#[derive(Debug, Args)]
struct AttemptsArgs {
    /// Attempts per job before it fails.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=100), help_heading = "Throughput")]
    max_attempts: i32,
}

#[derive(Debug, Args)]
struct EnqueueArgs {
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    attempts: AttemptsArgs,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    manifest: ManifestArgs,
    /// Also print the first N tickets exactly as they would be sent: the JSON body and the
    /// files with their sizes (after --map).
    #[arg(long, value_name = "N")]
    preview: Option<usize>,
}

#[derive(Debug, Args)]
struct MapArgs {
    /// The register (.csv, .xlsx, .xls, .ods).
    register: PathBuf,
}

#[derive(Debug, Args)]
struct ImportArgs {
    #[command(flatten)]
    load: LoadArgs,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    workers: WorkerArgs,
    #[command(flatten)]
    attempts: AttemptsArgs,
    /// Write the final summary to this file as one JSON object ("-" for stdout).
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    summary_json: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    workers: WorkerArgs,
    /// Keep serving: wait for new batches instead of exiting when the queue is empty.
    #[arg(long)]
    watch: bool,
    /// Only this batch's jobs.
    #[arg(long)]
    batch: Option<String>,
    /// Write the final summary to this file as one JSON object ("-" for stdout).
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    summary_json: Option<PathBuf>,
    /// Serve the dashboard, /metrics and /healthz from this worker while it runs, e.g.
    /// 127.0.0.1:8080 (any other address needs --ui-token).
    #[arg(long, value_name = "ADDR", help_heading = "Output")]
    listen: Option<String>,
    #[command(flatten)]
    ui_token: UiTokenArgs,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct UiArgs {
    /// Address to listen on; any but a loopback address needs --ui-token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(flatten)]
    ui_token: UiTokenArgs,
    /// Show the rehearsal's queue (the one `import --sandbox` uses).
    #[arg(long)]
    sandbox: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct UiTokenArgs {
    /// Secret (16+ characters) every dashboard page asks for: a sign-in form, or
    /// `Authorization: Bearer` for /metrics.
    #[arg(
        long,
        env = "VISIBUILD_UI_TOKEN",
        hide_env_values = true,
        help_heading = "Output"
    )]
    ui_token: Option<String>,
}

#[derive(Debug, Args)]
struct ApiArgs {
    /// Visibuild origin, e.g. https://app.visibuild.com.au (the paths are appended).
    #[arg(
        long,
        env = "VISIBUILD_API_URL",
        conflicts_with = "region",
        help_heading = "Visibuild"
    )]
    api_url: Option<String>,
    /// Accept a plain http:// --api-url to a host that is not this machine (the token then
    /// crosses the network in clear); loopback origins need no flag.
    #[arg(
        long,
        env = "VISIBUILD_ALLOW_HTTP",
        value_parser = clap::builder::BoolishValueParser::new(),
        help_heading = "Visibuild"
    )]
    allow_http: bool,
    /// Visibuild region, instead of --api-url.
    #[arg(long, value_enum, env = "VISIBUILD_REGION", help_heading = "Visibuild")]
    region: Option<Region>,
    /// Rehearse against an in-process sandbox instead of Visibuild (no credentials needed).
    #[arg(long, conflicts_with_all = ["api_url", "region"], help_heading = "Visibuild")]
    sandbox: bool,
    /// Rate of Visibuild API calls (presign and ticket create), e.g. 10/s or 600/min; or
    /// `auto` to learn the server's limit (`auto:50/s`: never above 50/s).
    #[arg(
        long,
        env = "VISIBUILD_API_RATE",
        default_value = "10/s",
        help_heading = "Throughput"
    )]
    api_rate: ApiRate,
    /// Rate of S3 uploads (PUTs).
    #[arg(
        long,
        env = "VISIBUILD_UPLOAD_RATE",
        default_value = "20/s",
        help_heading = "Throughput"
    )]
    upload_rate: Rate,
    /// Upload bytes per second, e.g. 20MiB/s or 500KiB/s (at least 64KiB/s): one limit for
    /// every process sharing the store, so the site's uplink stays usable. Unlimited if unset.
    #[arg(
        long,
        env = "VISIBUILD_BWLIMIT",
        value_name = "SIZE/s",
        help_heading = "Throughput"
    )]
    bwlimit: Option<ByteRate>,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// Jobs in flight at once.
    #[arg(long, env = "VISIBUILD_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024), help_heading = "Throughput")]
    workers: u16,
    /// Uploads in flight at once (presigning happens just before each).
    #[arg(long, env = "VISIBUILD_UPLOAD_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024), help_heading = "Throughput")]
    upload_concurrency: u16,
    /// Seconds a claimed job is held before another worker may take it over.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(3..=86_400), help_heading = "Throughput")]
    lease_secs: u64,
    /// Seconds the database or Visibuild may stay unreachable before the run exits 3.
    #[arg(long, env = "VISIBUILD_OUTAGE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400), help_heading = "Throughput")]
    outage_secs: u64,
    /// Seconds between plain progress lines when stderr is not a terminal.
    #[arg(long, hide = true, env = "VISIBUILD_PROGRESS_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    progress_secs: u64,
    /// A file Visibuild still refuses after one fresh upload (quarantined by its malware
    /// scan) is left out of its ticket, which is created without it; `report` lists it in
    /// skipped_files. Without this the ticket fails naming the file.
    #[arg(long)]
    skip_quarantined: bool,
    /// Stop claiming work this long after the start (e.g. 6h, 90m): in-flight work finishes,
    /// the run exits 130 as an interrupted one does, and the next run resumes.
    #[arg(long, env = "VISIBUILD_MAX_DURATION", value_name = "DURATION", value_parser = parse_duration, help_heading = "Throughput")]
    max_duration: Option<std::time::Duration>,
}

/// A duration as operators write it: `6h`, `90m`, `1h 30m`, `45s` (as `prune`'s ages).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    match crate::human::duration(text) {
        Ok(d) if d.is_zero() => Err("the duration must be longer than zero".into()),
        other => other,
    }
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The rehearsal's store (the one `import --sandbox` uses), not the real one.
    #[arg(long)]
    sandbox: bool,
    /// Only this batch.
    #[arg(long)]
    batch: Option<String>,
    /// One ticket (manifest ref) with every attempt of its jobs: time, step, outcome and the
    /// server's answer.
    #[arg(long, value_name = "REF")]
    ticket: Option<String>,
    /// Machine-readable output.
    #[arg(long, help_heading = "Output")]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct PauseArgs {
    /// The rehearsal's store (the one `import --sandbox` uses), not the real one.
    #[arg(long)]
    sandbox: bool,
    /// Only this batch (default: everything).
    #[arg(long)]
    batch: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("scope").required(true).multiple(true).args(["batch", "reference"]))]
struct CancelArgs {
    /// The rehearsal's store (the one `import --sandbox` uses), not the real one.
    #[arg(long)]
    sandbox: bool,
    /// This batch's tickets.
    #[arg(long)]
    batch: Option<String>,
    /// This ticket (manifest ref).
    #[arg(long = "ref")]
    reference: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct PruneArgs {
    /// The rehearsal's store (the one `import --sandbox` uses), not the real one.
    #[arg(long)]
    sandbox: bool,
    /// Age of the history to delete: 30d, 12h, 90m, 2w.
    #[arg(long, value_name = "AGE", value_parser = crate::human::duration)]
    older_than: std::time::Duration,
    /// Machine-readable output.
    #[arg(long, help_heading = "Output")]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct RetryArgs {
    /// The rehearsal's store (the one `import --sandbox` uses), not the real one.
    #[arg(long)]
    sandbox: bool,
    /// Only this batch's failed work.
    #[arg(long)]
    batch: Option<String>,
    /// Only this ticket (manifest ref).
    #[arg(long = "ref")]
    reference: Option<String>,
    /// Only this project's tickets (UUID); a refused project's gate opens again, so its
    /// first ticket is created before its other files are uploaded.
    #[arg(long, value_name = "UUID")]
    project: Option<uuid::Uuid>,
    /// Only this job.
    #[arg(long)]
    job: Option<i64>,
    /// Only failures whose error contains this text.
    #[arg(long)]
    error_contains: Option<String>,
    /// Also re-send tickets marked for review (a create whose outcome was unknown).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// The rehearsal's store (the one `import --sandbox` uses), not the real one.
    #[arg(long)]
    sandbox: bool,
    /// Only this batch.
    #[arg(long)]
    batch: Option<String>,
    /// Only tickets that failed or need review (with --files: their files).
    #[arg(long)]
    failed_only: bool,
    /// One row per file instead of per ticket: path, size, MD5, key, state, error.
    #[arg(long)]
    files: bool,
    /// Where to write the CSV ("-" for stdout).
    #[arg(long, default_value = "-", help_heading = "Output")]
    out: PathBuf,
    /// Replace the --out file if it exists.
    #[arg(long, help_heading = "Output")]
    force: bool,
    #[command(flatten)]
    store: StoreArgs,
}

impl Cli {
    /// Parse the command line, or exit as clap does (help and version on stdout, exit 0;
    /// a usage error exit 2), the usage error as one JSON line when JSON logs were asked
    /// for, so that a scheduler never reads a line that is not JSON.
    pub fn parse_or_exit() -> Self {
        let e = match Cli::try_parse() {
            Ok(cli) => return cli,
            Err(e) => e,
        };
        if !e.use_stderr() || !json_logs_asked(std::env::args()) {
            e.exit();
        }
        let text = e.render().to_string();
        // The error itself, on one line: what comes before the usage.
        let message = text
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        // Logging is not set up yet: say it in JSON directly.
        crate::app::init_logging(&LogSettings {
            format: LogFormat::Json,
            verbose: 0,
            quiet: true,
        });
        crate::app::say(
            crate::app::Level::Error,
            &message,
            serde_json::json!({ "exit_code": e.exit_code(), "usage": text.trim_end() }),
        );
        std::process::exit(e.exit_code());
    }

    pub fn log_settings(&self) -> LogSettings {
        LogSettings {
            format: self.global.log_format,
            verbose: self.global.verbose,
            quiet: self.global.quiet,
        }
    }

    /// Turn the parsed flags into settings and run the command.
    pub async fn run(self) -> Result<Exit, anyhow::Error> {
        let quiet = self.global.quiet;
        match self.command {
            Command::Check(a) => app::check(&a.manifest.into_settings(), a.preview).await,
            Command::Map(a) => app::starting_map(&a.register).await,
            Command::Enqueue(a) => {
                let enqueue = a.load.into_settings(&a.attempts);
                app::enqueue(&a.store.url(false)?, &enqueue)
                    .await
                    .map(|_| Exit::Success)
            }
            Command::Import(a) => {
                let db = a.store.url(false)?;
                let enqueue = a.load.into_settings(&a.attempts);
                let api = a.api.into_settings()?;
                let workers = a.workers.into_settings(quiet);
                let summary = a.summary_json.map(app::SummaryOut::from_arg);
                app::import(&db, &enqueue, api, workers, summary).await
            }
            Command::Run(a) => {
                let api = a.api.into_settings()?;
                let workers = a.workers.into_settings(quiet);
                let summary = a.summary_json.map(app::SummaryOut::from_arg);
                let ui = a.listen.map(|listen| a.ui_token.settings(listen));
                app::run(
                    &a.store.url(false)?,
                    api,
                    workers,
                    a.watch,
                    a.batch.as_deref(),
                    summary,
                    ui,
                )
                .await
            }
            Command::Status(a) => {
                let db = a.store.url(a.sandbox)?;
                match &a.ticket {
                    Some(r) => app::ticket_status(&db, a.batch.as_deref(), r, a.json).await,
                    None => app::status(&db, a.batch.as_deref(), a.json).await,
                }
            }
            Command::Pause(a) => app::pause(&a.store.url(a.sandbox)?, a.batch.as_deref()).await,
            Command::Resume(a) => app::resume(&a.store.url(a.sandbox)?, a.batch.as_deref()).await,
            Command::Cancel(a) => {
                let db = a.store.url(a.sandbox)?;
                let settings = app::CancelSettings {
                    batch: a.batch,
                    reference: a.reference,
                };
                app::cancel(&db, settings).await
            }
            Command::Prune(a) => app::prune(&a.store.url(a.sandbox)?, a.older_than, a.json).await,
            Command::Retry(a) => {
                app::retry(
                    &a.store.url(a.sandbox)?,
                    app::RetrySettings {
                        batch: a.batch,
                        reference: a.reference,
                        job: a.job.map(JobId),
                        error_contains: a.error_contains,
                        force: a.force,
                        project: a.project,
                    },
                )
                .await
            }
            Command::Report(a) => {
                let db = a.store.url(a.sandbox)?;
                app::report(&db, a.into_settings()).await
            }
            Command::Sandbox(a) => {
                visibuild_sandbox::serve_forever(a.into_config()?).await?;
                Ok(Exit::Success)
            }
            Command::Ui(a) => {
                let db = a.store.url(a.sandbox)?;
                app::ui(&db, a.ui_token.settings(a.listen)).await
            }
            Command::Migrate(a) => app::migrate(&a.store.url(false)?).await,
            Command::Completions(a) => {
                let mut script = Vec::new();
                clap_complete::generate(
                    a.shell,
                    &mut Cli::command(),
                    "visibuild-import",
                    &mut script,
                );
                print_all(&script)
            }
            Command::Man => print_all(&man::render(Cli::command())?),
        }
    }
}

impl UiTokenArgs {
    fn settings(self, listen: String) -> app::UiSettings {
        app::UiSettings {
            listen,
            token: self
                .ui_token
                .filter(|t| !t.trim().is_empty())
                .map(Secret::new),
        }
    }
}

impl ManifestArgs {
    fn into_settings(self) -> ManifestSettings {
        ManifestSettings {
            manifest: self.manifest,
            files_root: self.files_root,
            allow_outside_root: self.allow_outside_root,
            map: self.map,
        }
    }
}

/// `--log-format json` (or `=json`, or `VISIBUILD_LOG_FORMAT=json`) among arguments that
/// clap could not parse.
fn json_logs_asked(args: impl Iterator<Item = String>) -> bool {
    let args: Vec<String> = args.collect();
    args.windows(2)
        .any(|w| w[0] == "--log-format" && w[1].eq_ignore_ascii_case("json"))
        || args
            .iter()
            .any(|a| a.eq_ignore_ascii_case("--log-format=json"))
        || std::env::var("VISIBUILD_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"))
}

/// Text on stdout; a reader that stops early (`| head`) is not an error.
fn print_all(text: &[u8]) -> Result<Exit, anyhow::Error> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(Exit::Success),
    }
}

impl LoadArgs {
    fn into_settings(self, attempts: &AttemptsArgs) -> EnqueueSettings {
        EnqueueSettings {
            manifest: self.manifest.into_settings(),
            batch: self.batch,
            skip_invalid: self.skip_invalid,
            max_attempts: attempts.max_attempts,
            receipts: self.receipts,
        }
    }
}

impl ReportArgs {
    fn into_settings(self) -> app::ReportSettings {
        let out = if self.out == std::path::Path::new("-") {
            app::ReportOut::Stdout
        } else {
            app::ReportOut::File {
                path: self.out,
                overwrite: self.force,
            }
        };
        app::ReportSettings {
            batch: self.batch,
            out,
            failed_only: self.failed_only,
            rows: if self.files {
                app::ReportRows::Files
            } else {
                app::ReportRows::Tickets
            },
        }
    }
}

impl ApiArgs {
    fn into_settings(self) -> Result<ApiSettings, anyhow::Error> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let credentials = match (
            env("VISIBUILD_TOKEN"),
            env("VISIBUILD_CLIENT_ID"),
            env("VISIBUILD_CLIENT_SECRET"),
        ) {
            (Some(token), _, _) => Some(Credentials::Token(Secret::new(token))),
            (None, Some(id), Some(secret)) => Some(Credentials::Client {
                id,
                secret: Secret::new(secret),
            }),
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(app::UsageError(
                    "VISIBUILD_CLIENT_ID and VISIBUILD_CLIENT_SECRET go together: set both".into(),
                )
                .into());
            }
            (None, None, None) => None,
        };
        let api_url = match (self.api_url, self.region) {
            (Some(url), _) => {
                let origin = crate::visibuild::parse_origin(&url).map_err(app::UsageError)?;
                check_plain_http(&origin, self.allow_http)?;
                Some(origin)
            }
            (None, Some(region)) => Some(region.origin().to_string()),
            (None, None) => None,
        };
        Ok(ApiSettings {
            api_url,
            credentials,
            sandbox: self.sandbox,
            api_rate: self.api_rate,
            upload_rate: self.upload_rate,
            bwlimit: self.bwlimit,
        })
    }
}

/// A plain `http://` origin off this machine sends the token in clear: refused unless
/// `--allow-http`, and then said once. Loopback (`127.0.0.0/8`, `::1`, `localhost`) is fine.
fn check_plain_http(origin: &str, allow_http: bool) -> Result<(), app::UsageError> {
    if !origin.starts_with("http://") || is_loopback_origin(origin) {
        return Ok(());
    }
    if !allow_http {
        return Err(app::UsageError(format!(
            "--api-url {origin} is plain http to another machine: the Visibuild token would cross \
             the network in clear; use https://, or pass --allow-http (VISIBUILD_ALLOW_HTTP=1) to \
             send it anyway"
        )));
    }
    app::say(
        app::Level::Warn,
        &format!(
            "--allow-http: talking to {origin} over plain http; the Visibuild token and every \
             ticket cross the network unencrypted"
        ),
        serde_json::json!({ "api_url": origin, "allow_http": true }),
    );
    Ok(())
}

/// The origin's host is this machine: `localhost`, `127.0.0.0/8` or `[::1]`.
fn is_loopback_origin(origin: &str) -> bool {
    match url::Url::parse(origin)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl WorkerArgs {
    fn into_settings(self, quiet: bool) -> WorkerSettings {
        WorkerSettings {
            workers: self.workers.into(),
            upload_concurrency: self.upload_concurrency.into(),
            lease: std::time::Duration::from_secs(self.lease_secs),
            progress_every: std::time::Duration::from_secs(self.progress_secs),
            quiet,
            outage_limit: std::time::Duration::from_secs(self.outage_secs),
            skip_quarantined: self.skip_quarantined,
            max_duration: self.max_duration.map(|limit| app::Window {
                limit,
                deadline: std::time::Instant::now() + limit,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_origins_count_as_this_machine() {
        for local in [
            "http://127.0.0.1:8080",
            "http://127.9.9.9",
            "http://localhost:3000",
            "http://LOCALHOST",
            "http://[::1]:8080",
        ] {
            assert!(is_loopback_origin(local), "{local}");
            assert!(check_plain_http(local, false).is_ok(), "{local}");
        }
        for remote in [
            "http://10.0.0.5",
            "http://app.visibuild.com.au",
            "http://localhost.evil.example",
            "http://[fe80::1]",
            "http://128.0.0.1",
        ] {
            assert!(!is_loopback_origin(remote), "{remote}");
            let refused = check_plain_http(remote, false).unwrap_err().to_string();
            assert!(refused.contains("--allow-http"), "{refused}");
        }
        assert!(check_plain_http("https://app.visibuild.com.au", false).is_ok());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn only_the_commands_that_use_the_store_take_database_url() {
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            let has = sub.get_arguments().any(|a| a.get_id() == "database_url");
            let uses_store = !matches!(
                sub.get_name(),
                "check" | "map" | "sandbox" | "completions" | "man"
            );
            assert_eq!(has, uses_store, "{}", sub.get_name());
        }
    }
}
