//! The dashboard's listener: a capped accept loop and HTTP/1 connections with timeouts, so
//! that idle, slow or too many clients can never take the worker's file descriptors.
//!
//! A connection that sends nothing, or half a request, is closed after
//! [`Limits::header_read_timeout`] (hyper's timer also runs while a kept-alive connection
//! waits for its next request); any connection is wound down after
//! [`Limits::connection_lifetime`]; past [`Limits::max_connections`] a new connection is
//! closed as soon as it is accepted.

use super::UiError;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// A request's headers must arrive within this long, counted from when the server starts
/// waiting for them: right after the connection is accepted, and after each answer on a
/// kept-alive connection.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection is asked to close after this long (at once if idle, else after its answer).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// What a connection asked to close (lifetime over, or the server stopping) may still take.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The share of the open-files limit (`RLIMIT_NOFILE`) the dashboard may hold: one eighth.
/// The rest stays the worker's, for its files, database connections and HTTP.
const SHARE_OF_OPEN_FILES: u64 = 8;
/// Bounds of the connection cap, whatever the open-files limit.
const MIN_CONNECTIONS: u64 = 4;
const MAX_CONNECTIONS: u64 = 256;

/// Pause after an accept error that is not one connection's (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);
/// At most one log line per this long for refused connections and accept errors.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// How much the listener may hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; a connection past it is closed when accepted.
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub connection_lifetime: Duration,
}

impl Limits {
    /// The limits for this process: the cap from its open-files limit (soft `RLIMIT_NOFILE`).
    pub fn for_this_process() -> Self {
        let open_files = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        Self::for_open_files(open_files)
    }

    /// The limits for a process allowed `open_files` file descriptors: one eighth of them for
    /// the dashboard's connections, between 4 and 256.
    pub fn for_open_files(open_files: u64) -> Self {
        let cap = (open_files / SHARE_OF_OPEN_FILES).clamp(MIN_CONNECTIONS, MAX_CONNECTIONS);
        Self {
            max_connections: usize::try_from(cap).unwrap_or(MIN_CONNECTIONS as usize),
            header_read_timeout: HEADER_READ_TIMEOUT,
            connection_lifetime: CONNECTION_LIFETIME,
        }
    }
}

/// Serve `router` on `listener` within `limits` until `stop`; then let the connections
/// finish their answers (briefly) and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
    limits: Limits,
) -> Result<(), UiError> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut refused = Quiet::default();
    let mut failed = Quiet::default();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if one_connections_error(&e) => continue,
            Err(e) => {
                if failed.may_log() {
                    tracing::warn!(error = %e, "dashboard: cannot accept connections; trying again");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            if refused.may_log() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "dashboard: too many open connections; refusing new ones until some close"
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let stop = stop.clone();
        let lifetime = limits.connection_lifetime;
        connections.spawn(async move {
            let _slot = slot;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = tokio::time::sleep(lifetime) => {}
                () = stop.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        });
    }
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(CLOSE_GRACE, connections.wait()).await;
    Ok(())
}

/// An accept error that concerns one connection only (the client gave up first).
fn one_connections_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Says a repeated thing at most once per [`LOG_EVERY`].
#[derive(Default)]
struct Quiet {
    last: Option<Instant>,
}

impl Quiet {
    fn may_log(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_holds_an_eighth_of_the_open_files_between_4_and_256() {
        assert_eq!(Limits::for_open_files(256).max_connections, 32);
        assert_eq!(Limits::for_open_files(1024).max_connections, 128);
        assert_eq!(Limits::for_open_files(16).max_connections, 4);
        assert_eq!(Limits::for_open_files(1 << 20).max_connections, 256);
        assert_eq!(Limits::for_open_files(u64::MAX).max_connections, 256);
    }
}
