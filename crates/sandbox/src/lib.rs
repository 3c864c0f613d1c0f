//! A strict local stand-in for Visibuild's API and the S3 it presigns for, with fault knobs,
//! so the importer can be tested and rehearsed without the real service.
//!
//! Start it in-process with [`start`] (tests bind port 0) or from the CLI with
//! [`serve_forever`]. S3 size mismatches answer `400 EntityTooSmall` / `400 EntityTooLarge`
//! (the `Content-Length` against the presigned `fileSize`), checked before the body is read.
//!
//! It knows nothing of the importer: its priority is the vendor's API model and its secrets
//! are its own type.
#![forbid(unsafe_code)]

mod api;
mod clock;
mod model;
mod s3;
mod secret;
mod server;
mod sigv4;
mod state;

pub use api::MAX_FILE_SIZE;
pub use clock::{Clock, ManualClock};
pub use model::{
    Priority, SandboxAttachment, SandboxContact, SandboxObject, SandboxStats, SandboxTicket,
};
pub use s3::{BUCKET, EICAR};
pub use secret::Secret;

use state::{Behaviour, Shared, SharedParts};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How to run a sandbox. `Default` is a quiet, fault-free sandbox on `127.0.0.1:0` that
/// accepts the token `sandbox-token` for company `sandbox`.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub listen: SocketAddr,
    /// Long-lived bearer tokens: `(token, company)`.
    pub tokens: Vec<(Secret, String)>,
    /// OAuth clients: `(client id, client secret, company)`.
    pub clients: Vec<(String, Secret, String)>,
    /// Known projects; empty accepts any well-formed UUID.
    pub projects: Vec<Uuid>,
    /// Projects whose tickets are refused with `422` on `projectId` ("projectId is not a
    /// project of this company"), as Visibuild answers for a project of another company;
    /// changeable while running ([`Sandbox::refuse_project`], [`Sandbox::accept_project`]).
    pub refuse_projects: Vec<Uuid>,
    /// Where objects are stored; `None` is a temporary directory removed with the sandbox.
    pub data_dir: Option<PathBuf>,
    /// API requests (incl. OAuth) per second; above it `429` with `Retry-After` (whole
    /// seconds, rounded up).
    pub rate: Option<u32>,
    /// How many requests the rate's token bucket lets through at once: `Some(1)` is the
    /// strictest server (every request at least `1/rate` after the last one let through);
    /// `None`, a second's worth (`rate`).
    pub rate_burst: Option<u32>,
    /// Probability of a random 500/502/503 on an API call, before it does anything.
    pub fail_rate: f64,
    /// Probability that a created ticket's response is lost (the connection just closes).
    pub drop_rate: f64,
    /// Probability of a 503 SlowDown / 500 InternalError on an S3 PUT, before its body.
    pub s3_fail_rate: f64,
    /// Added to every request.
    pub latency: Duration,
    /// Lifetime of presigned URLs.
    pub url_ttl: Duration,
    /// Lifetime of OAuth access tokens.
    pub token_ttl: Duration,
    /// What every expiry (presigned URLs, OAuth tokens) and the rate limit read as "now";
    /// `latency` is real time whatever the clock.
    pub clock: Clock,
    /// Seeds keys, ids, tokens and fault dice, for reproducible runs.
    pub seed: Option<u64>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tokens: vec![(Secret::new("sandbox-token"), "sandbox".to_string())],
            clients: Vec::new(),
            projects: Vec::new(),
            refuse_projects: Vec::new(),
            data_dir: None,
            rate: None,
            rate_burst: None,
            fail_rate: 0.0,
            drop_rate: 0.0,
            s3_fail_rate: 0.0,
            latency: Duration::ZERO,
            url_ttl: Duration::from_secs(15 * 60),
            token_ttl: Duration::from_secs(3600),
            clock: Clock::system(),
            seed: None,
        }
    }
}

/// Why a sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{name} must be between 0 and 1, got {value}")]
    BadProbability { name: &'static str, value: f64 },
    #[error("rate and rate burst must be at least 1")]
    ZeroRate,
    #[error("url_ttl must be between 1 second and 7 days")]
    BadUrlTtl,
    #[error("cannot prepare the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for Ctrl-C")]
    Signal(#[source] std::io::Error),
}

/// A running sandbox. Dropping it stops it (and removes its temporary data dir).
pub struct Sandbox {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    _temp_dir: Option<tempfile::TempDir>,
}

/// Starts a sandbox on `cfg.listen` and returns once it accepts connections.
pub async fn start(cfg: SandboxConfig) -> Result<Sandbox, SandboxError> {
    for (name, value) in [
        ("fail_rate", cfg.fail_rate),
        ("drop_rate", cfg.drop_rate),
        ("s3_fail_rate", cfg.s3_fail_rate),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(SandboxError::BadProbability { name, value });
        }
    }
    if cfg.rate == Some(0) || cfg.rate_burst == Some(0) {
        return Err(SandboxError::ZeroRate);
    }
    if cfg.url_ttl < Duration::from_secs(1) || cfg.url_ttl > Duration::from_secs(604_800) {
        return Err(SandboxError::BadUrlTtl);
    }
    let (temp_dir, data_dir) = match cfg.data_dir {
        Some(dir) => (None, dir),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("visibuild-sandbox-")
                .tempdir()
                .map_err(|source| SandboxError::DataDir {
                    path: std::env::temp_dir(),
                    source,
                })?;
            let path = temp.path().to_path_buf();
            (Some(temp), path)
        }
    };
    let objects_dir = data_dir.join("objects");
    let incoming_dir = data_dir.join("incoming");
    for dir in [&objects_dir, &incoming_dir] {
        std::fs::create_dir_all(dir).map_err(|source| SandboxError::DataDir {
            path: dir.clone(),
            source,
        })?;
    }
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| SandboxError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SandboxError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let shared = Arc::new(Shared::new(SharedParts {
        behaviour: Behaviour {
            fail_rate: cfg.fail_rate,
            drop_rate: cfg.drop_rate,
            s3_fail_rate: cfg.s3_fail_rate,
            latency: cfg.latency,
            url_ttl: cfg.url_ttl,
            token_ttl: cfg.token_ttl,
        },
        clock: cfg.clock,
        rate: cfg.rate,
        rate_burst: cfg.rate_burst,
        seed: cfg.seed,
        objects_dir,
        incoming_dir,
        authority: reachable(addr).to_string(),
        tokens: cfg
            .tokens
            .into_iter()
            .map(|(token, company)| (token.expose().to_string(), company))
            .collect(),
        clients: cfg.clients,
        projects: cfg.projects,
        refused_projects: cfg.refuse_projects,
    }));
    let router = api::router(shared.clone());
    let task = tokio::spawn(server::serve(listener, router));
    tracing::info!(%addr, "sandbox listening");
    Ok(Sandbox {
        addr,
        shared,
        task,
        _temp_dir: temp_dir,
    })
}

/// The address a client on this machine can reach: `0.0.0.0:p` becomes `127.0.0.1:p`.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
    } else {
        addr
    }
}

impl Sandbox {
    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The origin to use as the Visibuild API URL, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        format!("http://{}", reachable(self.addr))
    }

    /// Tickets created so far, in creation order.
    pub fn tickets(&self) -> Vec<SandboxTicket> {
        self.shared.tickets()
    }

    /// Objects successfully PUT so far, by key.
    pub fn objects(&self) -> Vec<SandboxObject> {
        self.shared.objects()
    }

    pub fn stats(&self) -> SandboxStats {
        self.shared.stats()
    }

    /// From now on, refuse tickets of `project` (`422` on `projectId`).
    pub fn refuse_project(&self, project: Uuid) {
        self.shared.lock().refused_projects.insert(project);
    }

    /// From now on, accept tickets of `project` again (the operator fixed its access).
    pub fn accept_project(&self, project: Uuid) {
        self.shared.lock().refused_projects.remove(&project);
    }

    /// Revoke every credential now: each token is refused (401) and no OAuth client gets a
    /// new one, as when a company's API access is withdrawn mid-run.
    pub fn revoke_credentials(&self) {
        self.shared.lock().revoked = true;
    }

    /// Stops accepting and closes every open connection.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // Aborted, so the only outcome is a "cancelled" JoinError: nothing to report.
        let _ = (&mut self.task).await;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a sandbox until Ctrl-C: the `sandbox` subcommand.
pub async fn serve_forever(cfg: SandboxConfig) -> Result<(), SandboxError> {
    let sandbox = start(cfg).await?;
    println!("sandbox listening on http://{}", sandbox.addr());
    tokio::signal::ctrl_c()
        .await
        .map_err(SandboxError::Signal)?;
    sandbox.shutdown().await;
    Ok(())
}
