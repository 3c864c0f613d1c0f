//! The command line: clap types live here and nowhere else. Flags become validated settings
//! once ([`crate::app`] takes those), so the rest of the program never sees clap.

pub mod sandbox_args;

use crate::app::{
    self, ApiSettings, Exit, LogFormat, LogSettings, ManifestSettings, WorkerSettings,
};
use crate::domain::JobId;
use crate::rate::Rate;
use crate::secret::Secret;
use crate::visibuild::{Credentials, Region};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Bulk-import defect tickets with their photos and documents into Visibuild.
#[derive(Debug, Parser)]
#[command(name = "visibuild-import", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Postgres holding the queue; created and migrated on first use.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        default_value = "postgres://localhost/visibuild_import",
        hide_env_values = true
    )]
    database_url: String,
    /// Log format: human (default) or json (for schedulers).
    #[arg(
        long,
        value_enum,
        global = true,
        default_value = "human",
        env = "VISIBUILD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// More logs (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors; no progress.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enqueue a manifest, run until its batch is finished, print the summary.
    Import(ImportArgs),
    /// Validate a manifest and load it into the queue as a batch (idempotent).
    Enqueue(EnqueueArgs),
    /// Validate a manifest only: columns, values, files. Touches nothing.
    Check(CheckArgs),
    /// Run the worker pool on whatever is queued.
    Run(RunArgs),
    /// Per batch: tickets, files and jobs by state, failures with reasons.
    Status(StatusArgs),
    /// Put failed work back in the queue.
    Retry(RetryArgs),
    /// Write a results CSV, one row per ticket.
    Report(ReportArgs),
    /// Serve the local Visibuild-compatible API and S3 endpoint.
    Sandbox(sandbox_args::SandboxArgs),
    /// Serve the operations dashboard, /metrics and /healthz.
    Ui(UiArgs),
    /// Create the database if needed and apply migrations.
    Migrate,
}

#[derive(Debug, Args)]
struct ManifestArgs {
    /// The CSV manifest.
    manifest: PathBuf,
    /// Folder the attachment paths are relative to (default: the manifest's folder).
    #[arg(long, env = "VISIBUILD_FILES_ROOT")]
    files_root: Option<PathBuf>,
    /// Allow absolute paths and paths outside the files root.
    #[arg(long)]
    allow_outside_root: bool,
}

#[derive(Debug, Args)]
struct EnqueueArgs {
    #[command(flatten)]
    manifest: ManifestArgs,
    /// Batch name (default: the manifest's file name).
    #[arg(long)]
    batch: Option<String>,
    /// Load the valid tickets of a manifest with errors, and list the skipped ones.
    #[arg(long)]
    skip_invalid: bool,
    /// Attempts per job before it fails.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=100))]
    max_attempts: i32,
}

#[derive(Debug, Args)]
struct CheckArgs {
    #[command(flatten)]
    manifest: ManifestArgs,
}

#[derive(Debug, Args)]
struct ImportArgs {
    #[command(flatten)]
    enqueue: EnqueueArgs,
    #[command(flatten)]
    api: ApiArgs,
    #[command(flatten)]
    workers: WorkerArgs,
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
    /// Serve the dashboard, /metrics and /healthz from this worker while it runs, e.g.
    /// 127.0.0.1:8080 (any other address needs --ui-token).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    #[command(flatten)]
    ui_token: UiTokenArgs,
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
}

#[derive(Debug, Args)]
struct UiTokenArgs {
    /// Secret (16+ characters) every dashboard page asks for: a sign-in form, or
    /// `Authorization: Bearer` for /metrics.
    #[arg(long, env = "VISIBUILD_UI_TOKEN", hide_env_values = true)]
    ui_token: Option<String>,
}

#[derive(Debug, Args)]
struct ApiArgs {
    /// Visibuild origin, e.g. https://app.visibuild.com.au (the paths are appended).
    #[arg(long, env = "VISIBUILD_API_URL", conflicts_with = "region")]
    api_url: Option<String>,
    /// Visibuild region, instead of --api-url.
    #[arg(long, value_enum, env = "VISIBUILD_REGION")]
    region: Option<Region>,
    /// Rehearse against an in-process sandbox instead of Visibuild.
    #[arg(long, conflicts_with_all = ["api_url", "region"])]
    sandbox: bool,
    /// Rate of Visibuild API calls (presign and ticket create), e.g. 10/s or 600/min.
    #[arg(long, env = "VISIBUILD_API_RATE", default_value = "10/s")]
    api_rate: Rate,
    /// Rate of S3 uploads (PUTs).
    #[arg(long, env = "VISIBUILD_UPLOAD_RATE", default_value = "20/s")]
    upload_rate: Rate,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    /// Jobs in flight at once.
    #[arg(long, env = "VISIBUILD_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: u16,
    /// Uploads in flight at once (presigning happens just before each).
    #[arg(long, env = "VISIBUILD_UPLOAD_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    upload_concurrency: u16,
    /// Seconds a claimed job is held before another worker may take it over.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(3..=86_400))]
    lease_secs: u64,
    /// Seconds the database or Visibuild may stay unreachable before the run exits 3.
    #[arg(long, env = "VISIBUILD_OUTAGE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    outage_secs: u64,
    /// Seconds between plain progress lines when stderr is not a terminal.
    #[arg(long, hide = true, env = "VISIBUILD_PROGRESS_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    progress_secs: u64,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Only this batch.
    #[arg(long)]
    batch: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RetryArgs {
    /// Only this batch's failed work.
    #[arg(long)]
    batch: Option<String>,
    /// Only this ticket (manifest ref).
    #[arg(long = "ref")]
    reference: Option<String>,
    /// Only this job.
    #[arg(long)]
    job: Option<i64>,
    /// Only failures whose error contains this text.
    #[arg(long)]
    error_contains: Option<String>,
    /// Also re-send tickets marked for review (a create whose outcome was unknown).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// Only this batch.
    #[arg(long)]
    batch: Option<String>,
    /// Where to write the CSV ("-" for stdout).
    #[arg(long, default_value = "-")]
    out: PathBuf,
    /// Replace the --out file if it exists.
    #[arg(long)]
    force: bool,
}

impl Cli {
    pub fn log_settings(&self) -> LogSettings {
        LogSettings {
            format: self.global.log_format,
            verbose: self.global.verbose,
            quiet: self.global.quiet,
        }
    }

    /// Turn the parsed flags into settings and run the command.
    pub async fn run(self) -> Result<Exit, anyhow::Error> {
        let db = self.global.database_url;
        let quiet = self.global.quiet;
        match self.command {
            Command::Check(a) => app::check(&a.manifest.into_settings()).await,
            Command::Enqueue(a) => {
                let (manifest, batch, skip_invalid, attempts) = a.into_parts();
                app::enqueue(&db, &manifest, batch.as_deref(), skip_invalid, attempts)
                    .await
                    .map(|_| Exit::Success)
            }
            Command::Import(a) => {
                let (manifest, batch, skip_invalid, attempts) = a.enqueue.into_parts();
                let api = a.api.into_settings()?;
                let workers = a.workers.into_settings(quiet);
                app::import(
                    &db,
                    &manifest,
                    batch.as_deref(),
                    skip_invalid,
                    attempts,
                    api,
                    workers,
                )
                .await
            }
            Command::Run(a) => {
                let api = a.api.into_settings()?;
                let workers = a.workers.into_settings(quiet);
                let ui = a.listen.map(|listen| a.ui_token.settings(listen));
                app::run(&db, api, workers, a.watch, a.batch.as_deref(), ui).await
            }
            Command::Status(a) => app::status(&db, a.batch.as_deref(), a.json).await,
            Command::Retry(a) => {
                app::retry(
                    &db,
                    app::RetrySettings {
                        batch: a.batch,
                        reference: a.reference,
                        job: a.job.map(JobId),
                        error_contains: a.error_contains,
                        force: a.force,
                    },
                )
                .await
            }
            Command::Report(a) => app::report(&db, a.into_settings()).await,
            Command::Sandbox(a) => {
                crate::sandbox::serve_forever(a.into_config()?).await?;
                Ok(Exit::Success)
            }
            Command::Ui(a) => app::ui(&db, a.ui_token.settings(a.listen), a.sandbox).await,
            Command::Migrate => app::migrate(&db).await,
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
        }
    }
}

impl EnqueueArgs {
    fn into_parts(self) -> (ManifestSettings, Option<String>, bool, i32) {
        (
            self.manifest.into_settings(),
            self.batch,
            self.skip_invalid,
            self.max_attempts,
        )
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
            (Some(url), _) => Some(crate::visibuild::parse_origin(&url).map_err(app::UsageError)?),
            (None, Some(region)) => Some(region.origin().to_string()),
            (None, None) => None,
        };
        Ok(ApiSettings {
            api_url,
            credentials,
            sandbox: self.sandbox,
            api_rate: self.api_rate,
            upload_rate: self.upload_rate,
        })
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
        }
    }
}
