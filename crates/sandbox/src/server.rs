//! Serves the sandbox router one HTTP/1.1 connection per task, so that a handler can close
//! its own connection without answering (the "response lost" fault) cleanly, with no panic.

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Put in every request's extensions: closes that request's connection, unanswered.
#[derive(Clone, Default)]
pub(crate) struct ConnectionKill(Arc<Notify>);

impl ConnectionKill {
    /// The connection is dropped as soon as its task next runs; the handler should then
    /// wait forever (it is dropped with the connection) rather than return a response.
    pub fn close_without_response(&self) {
        self.0.notify_one();
    }
}

/// Accepts until the task is aborted; aborting it drops (and so closes) every connection.
pub(crate) async fn serve(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, router.clone()));
                }
                Err(error) => tracing::warn!(%error, "sandbox failed to accept a connection"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, router: Router) {
    let kill = ConnectionKill::default();
    let request_kill = kill.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(request_kill.clone());
        router.clone().oneshot(request.map(Body::new))
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "sandbox connection ended with an error");
            }
        }
        () = kill.0.notified() => {
            tracing::debug!("sandbox closed a connection without answering");
        }
    }
}
