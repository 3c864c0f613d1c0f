//! Logging: human lines by default, JSON for schedulers; `-v`/`-q` set the level and
//! `RUST_LOG` overrides it. Logs go to stderr; results go to stdout.
//!
//! Lines the program says itself (the fatal `error:`, a manifest's problems, the signal
//! lines, the summary) go through [`say`], so that under `--log-format json` every line on
//! stderr is one JSON object of the same shape as tracing's own.

use serde_json::{Map, Value};
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
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

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format chosen at start-up (human until logging is set up).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Human)
}

pub fn init_logging(settings: &LogSettings) {
    let _ = FORMAT.set(settings.format);
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
        // Colour codes only for a person at a terminal who has not asked for none
        // (https://no-color.org), never into a file or a scheduler.
        .with_ansi(colour_wanted(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ));
    let _ = match settings.format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

/// Whether log lines get colour codes: at a terminal, unless `NO_COLOR` is set to anything
/// but the empty string.
fn colour_wanted(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// How much a line of ours matters (the `level` of its JSON form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// Say one line on stderr: `message` as it is for a person; under `--log-format json` an
/// object `{timestamp, level, fields: {message, ...fields}, target}`, the shape of
/// tracing's JSON lines, so that a scheduler parses one schema. Not filtered by `-q`: these
/// lines are what the operator must see (errors, problems, signals, the summary).
pub fn say(level: Level, message: &str, fields: Value) {
    let line = match format() {
        LogFormat::Human => message.to_string(),
        LogFormat::Json => json_line(level, message, fields),
    };
    // A closed stderr is nothing to fail over.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A result line: on stdout for a person; under `--log-format json` a JSON line on stderr
/// like every other line the program writes, so that a scheduler merging both streams
/// reads JSON only.
pub fn result(message: &str, fields: Value) {
    match format() {
        LogFormat::Human => println!("{message}"),
        LogFormat::Json => say(Level::Info, message, fields),
    }
}

fn json_line(level: Level, message: &str, fields: Value) -> String {
    let mut all = Map::new();
    all.insert("message".into(), Value::String(message.to_string()));
    if let Value::Object(extra) = fields {
        all.extend(extra);
    }
    let timestamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({
        "timestamp": timestamp,
        "level": level.as_str(),
        "fields": all,
        "target": "visibuild_import",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_at_a_terminal_and_never_under_no_color() {
        assert!(colour_wanted(true, None));
        assert!(
            colour_wanted(true, Some("".into())),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour_wanted(true, Some("1".into())));
        assert!(!colour_wanted(false, None));
    }

    #[test]
    fn a_json_line_has_tracings_shape_with_the_fields_beside_the_message() {
        let line = json_line(
            Level::Error,
            "error: no batch named \"x\"",
            serde_json::json!({"exit_code": 2}),
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["fields"]["message"], "error: no batch named \"x\"");
        assert_eq!(v["fields"]["exit_code"], 2);
        assert!(v["timestamp"].is_string());
        assert!(!line.contains('\n'));
    }
}
