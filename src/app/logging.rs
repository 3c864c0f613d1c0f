//! Logging: human lines by default, JSON for schedulers; `-v`/`-q` set the level and
//! `RUST_LOG` overrides it. Logs go to stderr; results go to stdout.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    pub format: LogFormat,
    pub verbose: u8,
    pub quiet: bool,
}

pub fn init_logging(settings: &LogSettings) {
    let level = match (settings.quiet, settings.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // Our own crate at the chosen level; dependencies one step quieter unless asked.
    let default = match level {
        "trace" => "trace".to_string(),
        "debug" => "visibuild_import=debug,info".to_string(),
        other => format!("visibuild_import={other},sqlx=error,warn"),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a file or a scheduler.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match settings.format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}
