//! The `visibuild-import` binary: parse the arguments, set up logging, run, map the result
//! to an exit code. Nothing else lives here.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use visibuild_import::{app, cli::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse_or_exit();
    app::init_logging(&cli.log_settings());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            app::say(
                app::Level::Error,
                &format!("error: cannot start the async runtime: {e}"),
                serde_json::json!({ "exit_code": 2 }),
            );
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(cli.run());
    // In-flight work was released by the pool; do not wait on stray blocking tasks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    app::exit_code(result)
}
