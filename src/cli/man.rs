//! The man page: clap_mangen's page for the program, followed by a section per command with
//! its own options, environment variables and examples (clap_mangen renders one command).

use clap::{Arg, Command};
use roff::{Roff, bold, italic, roman};

/// The whole page, in roff.
pub fn render(mut cli: Command) -> Result<Vec<u8>, std::io::Error> {
    // Propagates the global flags, so that they can be told apart below.
    cli.build();
    let mut page = Vec::new();
    clap_mangen::Man::new(cli.clone()).render(&mut page)?;
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS IN DETAIL"]);
    for sub in cli
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("{} {}", cli.get_name(), sub.get_name());
        roff.control("SS", [name.as_str()]);
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            roff.text([roman(about.to_string())]);
        }
        for arg in sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set())
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        {
            roff.control("TP", []);
            roff.text(marker(arg));
            roff.text([roman(description(arg))]);
        }
        if let Some(after) = sub.get_after_long_help().or(sub.get_after_help()) {
            roff.control("PP", []);
            roff.control("nf", []);
            roff.text([roman(after.to_string())]);
            roff.control("fi", []);
        }
    }
    roff.to_writer(&mut page)?;
    Ok(page)
}

/// `--api-rate <API_RATE>`, `-q, --quiet`, `<MANIFEST>`.
fn marker(arg: &Arg) -> Vec<roff::Inline> {
    let value = arg
        .get_value_names()
        .and_then(|names| names.first())
        .map(|n| n.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    let mut inlines = Vec::new();
    match (arg.get_short(), arg.get_long()) {
        (None, None) => {
            inlines.push(italic(format!("<{value}>")));
            return inlines;
        }
        (Some(s), Some(l)) => inlines.push(bold(format!("-{s}, --{l}"))),
        (Some(s), None) => inlines.push(bold(format!("-{s}"))),
        (None, Some(l)) => inlines.push(bold(format!("--{l}"))),
    }
    if arg.get_action().takes_values() {
        inlines.push(roman(" "));
        inlines.push(italic(format!("<{value}>")));
    }
    inlines
}

/// The help text, then `[env: …]`, `[default: …]` and the possible values, as `--help` says.
fn description(arg: &Arg) -> String {
    let mut text = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    if let Some(env) = arg.get_env() {
        text.push_str(&format!(" [env: {}]", env.to_string_lossy()));
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && arg.get_action().takes_values() {
        text.push_str(&format!(" [default: {}]", defaults.join(", ")));
    }
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    if !values.is_empty() {
        text.push_str(&format!(" [possible values: {}]", values.join(", ")));
    }
    text
}
