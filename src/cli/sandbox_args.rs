//! Flags of `visibuild-import sandbox`, turned once into a [`SandboxConfig`].
//! Clap stops here: the sandbox itself never sees these types.

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;
use visibuild_sandbox::{Clock, SandboxConfig, Secret};

const DEFAULT_COMPANY: &str = "sandbox";

/// Serve a local Visibuild-compatible API and S3 for tests and rehearsals.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Accepted bearer token, `TOKEN` or `TOKEN@COMPANY` (repeatable).
    #[arg(long = "token", value_name = "TOKEN", default_value = "sandbox-token")]
    pub tokens: Vec<String>,

    /// OAuth client, `ID:SECRET` or `ID:SECRET@COMPANY` (repeatable).
    #[arg(long = "client", value_name = "ID:SECRET")]
    pub clients: Vec<String>,

    /// Known project UUID (repeatable); none accepts any UUID.
    #[arg(long = "project", value_name = "UUID")]
    pub projects: Vec<Uuid>,

    /// Refuse tickets of this project (repeatable): `422` on `projectId`, "projectId is not
    /// a project of this company", as for a project of another company.
    #[arg(long = "refuse-project", value_name = "UUID")]
    pub refuse_projects: Vec<Uuid>,

    /// Where to store uploaded objects (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// API rate limit, e.g. `10/s`; above it the API answers 429 with Retry-After.
    #[arg(long, value_name = "N/s")]
    pub rate: Option<String>,

    /// How many API requests the rate lets through at once (default: a second's worth);
    /// `1` is the strictest server: each request at least 1/rate after the last one served.
    #[arg(long, value_name = "N", requires = "rate", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_burst: Option<u32>,

    /// Probability (0..1) of a random 500/502/503 on an API call.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub fail_rate: f64,

    /// Probability (0..1) that a created ticket's response is lost (connection closed).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub drop_rate: f64,

    /// Probability (0..1) of a 503 SlowDown / 500 InternalError on an S3 PUT.
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    pub s3_fail_rate: f64,

    /// Milliseconds added to every request.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency: u64,

    /// Lifetime of presigned URLs, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub url_ttl: u64,

    /// Lifetime of OAuth access tokens, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub token_ttl: u64,

    /// Seed for keys, ids and fault dice (reproducible runs).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

impl SandboxArgs {
    pub fn into_config(self) -> anyhow::Result<SandboxConfig> {
        let tokens = self
            .tokens
            .iter()
            .map(|spec| {
                let (token, company) = split_company(spec);
                if token.is_empty() {
                    bail!("--token must not be empty");
                }
                Ok((Secret::new(token), company))
            })
            .collect::<anyhow::Result<_>>()?;
        let clients = self
            .clients
            .iter()
            .map(|spec| {
                // No echo of the spec: it holds a secret.
                let (id, rest) = spec
                    .split_once(':')
                    .context("--client must be ID:SECRET or ID:SECRET@COMPANY")?;
                let (secret, company) = split_company(rest);
                if id.is_empty() || secret.is_empty() {
                    bail!("--client must be ID:SECRET or ID:SECRET@COMPANY");
                }
                Ok((id.to_string(), Secret::new(secret), company))
            })
            .collect::<anyhow::Result<_>>()?;
        let rate = self.rate.as_deref().map(parse_rate).transpose()?;
        for (flag, value) in [
            ("--fail-rate", self.fail_rate),
            ("--drop-rate", self.drop_rate),
            ("--s3-fail-rate", self.s3_fail_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                bail!("{flag} must be between 0 and 1, got {value}");
            }
        }
        Ok(SandboxConfig {
            listen: self.listen,
            tokens,
            clients,
            projects: self.projects,
            refuse_projects: self.refuse_projects,
            data_dir: self.data_dir,
            rate,
            rate_burst: self.rate_burst,
            fail_rate: self.fail_rate,
            drop_rate: self.drop_rate,
            s3_fail_rate: self.s3_fail_rate,
            latency: Duration::from_millis(self.latency),
            url_ttl: Duration::from_secs(self.url_ttl),
            token_ttl: Duration::from_secs(self.token_ttl),
            clock: Clock::system(),
            seed: self.seed,
        })
    }
}

/// `VALUE@COMPANY` → `(VALUE, COMPANY)`; no `@` → the default company.
fn split_company(spec: &str) -> (String, String) {
    match spec.rsplit_once('@') {
        Some((value, company)) if !company.is_empty() => (value.to_string(), company.to_string()),
        _ => (spec.to_string(), DEFAULT_COMPANY.to_string()),
    }
}

/// `N/s` (or a bare `N`) requests per second.
fn parse_rate(spec: &str) -> anyhow::Result<u32> {
    let number = spec
        .strip_suffix("/s")
        .or_else(|| spec.strip_suffix("/sec"))
        .unwrap_or(spec);
    let rate: u32 = number
        .trim()
        .parse()
        .with_context(|| format!("--rate must look like 10/s, got {spec:?}"))?;
    if rate == 0 {
        bail!("--rate must be at least 1/s");
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SandboxArgs,
    }

    fn config(argv: &[&str]) -> anyhow::Result<SandboxConfig> {
        let mut full = vec!["sandbox"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full)?.args.into_config()
    }

    #[test]
    fn defaults_give_the_sandbox_token_on_port_8080() {
        let cfg = config(&[]).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.tokens.len(), 1);
        assert_eq!(cfg.tokens[0].0.expose(), "sandbox-token");
        assert_eq!(cfg.tokens[0].1, "sandbox");
        assert_eq!(cfg.url_ttl, Duration::from_secs(900));
        assert_eq!(cfg.rate, None);
    }

    #[test]
    fn tokens_and_clients_take_an_optional_company() {
        let cfg = config(&[
            "--token",
            "a",
            "--token",
            "b@acme",
            "--client",
            "id1:s3cret",
            "--client",
            "id2:x:y@other",
            "--rate",
            "5/s",
        ])
        .unwrap();
        let tokens: Vec<_> = cfg
            .tokens
            .iter()
            .map(|(t, c)| (t.expose(), c.as_str()))
            .collect();
        assert_eq!(tokens, [("a", "sandbox"), ("b", "acme")]);
        let clients: Vec<_> = cfg
            .clients
            .iter()
            .map(|(i, s, c)| (i.as_str(), s.expose(), c.as_str()))
            .collect();
        assert_eq!(
            clients,
            [("id1", "s3cret", "sandbox"), ("id2", "x:y", "other")]
        );
        assert_eq!(cfg.rate, Some(5));
    }

    #[test]
    fn bad_values_are_refused_without_echoing_client_secrets() {
        assert!(config(&["--rate", "0/s"]).is_err());
        assert!(config(&["--rate", "ten"]).is_err());
        assert!(config(&["--fail-rate", "1.5"]).is_err());
        let err = config(&["--client", "no-colon-secretvalue"]).unwrap_err();
        assert!(!err.to_string().contains("secretvalue"));
    }
}
