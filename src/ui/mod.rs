//! The operations dashboard, `/metrics` and `/healthz`: an axum router over the queue's
//! store, served by `visibuild-import ui` or by a worker (`run --listen`).
//!
//! Actions are POSTs carrying a per-server CSRF token, refused when their `Origin` is
//! another site. With a token (`--ui-token`, required off loopback) every page asks for it:
//! a login form that sets a `SameSite=Strict` session cookie, or `Authorization: Bearer`.
//! Without one, only loopback `Host` names are answered (no DNS rebinding). Wrong tokens
//! are slowed down per client address; every answer carries a `Content-Security-Policy`,
//! `nosniff` and frame denial; the listener caps and times out its connections.

mod charts;
mod failures;
mod html;
pub mod listener;
mod metrics;
mod operations;
mod pages;
mod throttle;

use crate::secret::Secret;
use crate::store::{self, Store, StoreError};
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// The session cookie set by the login form.
const SESSION_COOKIE: &str = "visibuild_ui_session";

/// Shortest `--ui-token` accepted: it guards retry actions on a network.
pub const MIN_TOKEN_LEN: usize = 16;

/// The pages' policy: their own inline stylesheet and `style` attributes, inline SVG
/// charts, forms posting to this server; no scripts, no frames, nothing fetched elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the dashboard needs besides the store, injected by its caller.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// Asked of every page when set; required when listening off loopback.
    pub token: Option<Secret>,
    /// Attempts a job retried from the dashboard gets (as `retry` gives).
    pub retry_attempts: i32,
    /// The queue's database URL, shown on every page with its password redacted.
    pub database_url: String,
}

/// What can go wrong serving the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("the queue's database: {0}")]
    Store(#[from] StoreError),
    #[error("no such batch")]
    NoBatch,
    #[error("no such ticket needing review in this batch")]
    NoTicket,
    #[error("no such action: the dashboard's actions are pause, resume, cancel, retry and prune")]
    NoAction,
    #[error("older than: {0}")]
    BadAge(String),
    #[error("this form is stale or was sent from another site; reload the dashboard and try again")]
    Forbidden,
    #[error(
        "--listen {addr} is not a loopback address: set --ui-token (or VISIBUILD_UI_TOKEN) to a secret of at least {MIN_TOKEN_LEN} characters, which every page will then ask for"
    )]
    Exposed { addr: SocketAddr },
    #[error("--ui-token is too short: use at least {MIN_TOKEN_LEN} characters")]
    WeakToken,
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the dashboard server stopped")]
    Serve(#[source] std::io::Error),
    #[error("cannot draw a chart: {0}")]
    Chart(String),
    #[error("cannot write the metrics")]
    Metrics(#[source] std::fmt::Error),
}

impl UiError {
    /// A mistake in the operator's settings (exit 2), rather than a failure while serving.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            UiError::Exposed { .. } | UiError::WeakToken | UiError::Bind { .. }
        )
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::NoBatch | UiError::NoTicket | UiError::NoAction => StatusCode::NOT_FOUND,
            UiError::BadAge(_) => StatusCode::BAD_REQUEST,
            UiError::Forbidden => StatusCode::FORBIDDEN,
            UiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "dashboard request failed");
        }
        let body = html::layout(
            "error",
            false,
            &format!(
                "<h1>{}</h1><p class=error>{}</p><p><a href=\"/\">Back to the dashboard</a></p>",
                status.as_u16(),
                html::esc(&self.to_string())
            ),
            "",
        );
        (status, body).into_response()
    }
}

/// Refuse a listen address off loopback without a token, and a token too short to guard it.
pub fn check_exposure(addr: SocketAddr, token: Option<&Secret>) -> Result<(), UiError> {
    match token {
        Some(t) if t.expose().chars().count() < MIN_TOKEN_LEN => Err(UiError::WeakToken),
        Some(_) => Ok(()),
        None if addr.ip().is_loopback() => Ok(()),
        None => Err(UiError::Exposed { addr }),
    }
}

/// Resolve `listen`, check it against the token, and bind it.
pub async fn bind(
    listen: &str,
    token: Option<&Secret>,
) -> Result<tokio::net::TcpListener, UiError> {
    let bind_error = |source| UiError::Bind {
        addr: listen.to_string(),
        source,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .map_err(bind_error)?
        .collect();
    let Some(first) = addrs.first() else {
        return Err(bind_error(std::io::Error::other(
            "the name resolves to nothing",
        )));
    };
    for addr in &addrs {
        check_exposure(*addr, token)?;
    }
    tokio::net::TcpListener::bind(*first)
        .await
        .map_err(bind_error)
}

/// Serve `router` on `listener` until `stop`, within this process's [`listener::Limits`]
/// (a connection cap from its open-files limit, header-read and lifetime timeouts).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> Result<(), UiError> {
    listener::serve(listener, router, stop, listener::Limits::for_this_process()).await
}

/// The shared state of every request.
struct Inner {
    db: Store,
    config: UiConfig,
    /// Shown on every page (redacted once, here).
    database: String,
    /// Embedded in every form and checked on every POST.
    csrf: String,
    /// The login cookie's value; only meaningful with a token.
    session: String,
    /// Wrong tokens per client address.
    throttle: throttle::Throttle,
}

type AppState = Arc<Inner>;

/// The dashboard's routes over `db`. Tests serve it on port 0.
pub fn router(db: Store, config: UiConfig) -> Router {
    let state: AppState = Arc::new(Inner {
        database: store::redact_url(&config.database_url),
        db,
        config,
        csrf: random_hex(),
        session: random_hex(),
        throttle: throttle::Throttle::default(),
    });
    Router::new()
        .route("/", get(pages::overview))
        .route("/batches/{batch}", get(pages::batch))
        .route("/batches/{batch}/retry", post(pages::retry))
        .route(
            "/batches/{batch}/review/{ticket}",
            get(pages::confirm_resend),
        )
        .route(
            "/batches/{batch}/review/{ticket}/resend",
            post(pages::resend),
        )
        .route("/confirm/{action}", get(operations::confirm))
        .route("/actions/{action}", post(operations::act))
        .route("/tickets", get(operations::tickets))
        .route("/tickets/{ticket}", get(operations::ticket))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn not_found() -> Response {
    let body = html::layout(
        "not found",
        false,
        "<h1>404</h1><p class=error>No such page.</p><p><a href=\"/\">Back to the dashboard</a></p>",
        "",
    );
    (StatusCode::NOT_FOUND, body).into_response()
}

/// Every answer, refusals and errors included: a content policy that allows no script and
/// no framing, no MIME sniffing, no caching, and no referrer off this site.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: under it a browser sends `Origin: null` with our own forms.
        header::HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// `200 ok` while the store answers, `503` when it does not (within two seconds).
async fn healthz(State(state): State<AppState>) -> Response {
    let ping = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        store::dashboard::ping(&state.db),
    )
    .await;
    match ping {
        Ok(Ok(())) => (StatusCode::OK, "ok\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "healthz: the store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "store unreachable\n").into_response(),
    }
}

/// Every request: a loopback `Host` (without a token), the token or session (with one),
/// and no cross-site POST. A client that sent too many wrong tokens waits before its next
/// token is looked at.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/healthz" {
        return next.run(request).await;
    }
    let headers = request.headers();
    if state.config.token.is_none() && !host_is_loopback(headers) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard answers loopback names only (127.0.0.1, localhost); serve it with --ui-token to reach it by another name\n",
        )
            .into_response();
    }
    if request.method() == axum::http::Method::POST && !same_origin(headers) {
        return UiError::Forbidden.into_response();
    }
    let Some(token) = &state.config.token else {
        return next.run(request).await;
    };
    let client = client_ip(&request);
    let bearer = headers.contains_key(header::AUTHORIZATION);
    let signing_in = path == "/login" && request.method() == axum::http::Method::POST;
    if (bearer || signing_in)
        && let Some(wait) = state.throttle.wait(client, Instant::now())
    {
        return too_many_wrong_tokens(wait);
    }
    if path != "/login" && !authorized(headers, token, &state.session) {
        if bearer {
            state.throttle.failed(client, Instant::now());
        }
        if path == "/metrics" || bearer {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a token is needed: Authorization: Bearer <--ui-token>\n",
            )
                .into_response();
        }
        return Redirect::to("/login").into_response();
    }
    if bearer {
        state.throttle.succeeded(client);
    }
    next.run(request).await
}

/// `429` with `Retry-After`: the client's next token is not looked at before then.
fn too_many_wrong_tokens(wait: std::time::Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.to_string())],
        format!("too many wrong tokens from this address: try again in {secs}s\n"),
    )
        .into_response()
}

/// The client's address, as the listener recorded it (unspecified when served otherwise:
/// such clients then share one count).
fn client_ip(request: &Request) -> IpAddr {
    client_of(request.extensions())
}

fn client_of(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// The client's address, for a handler.
struct Client(IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Client(client_of(&parts.extensions)))
    }
}

/// The `Host` names a loopback address (`localhost`, `127.x.y.z`, `[::1]`), any port.
fn host_is_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A POST from this dashboard's own pages: no `Origin` (not a browser, or an old one) or one
/// naming the `Host` it was sent to; and no `Sec-Fetch-Site: cross-site`.
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|h| h.to_str().ok());
    if text(header::HeaderName::from_static("sec-fetch-site"))
        .is_some_and(|s| s.eq_ignore_ascii_case("cross-site"))
    {
        return false;
    }
    let Some(origin) = text(header::ORIGIN) else {
        return true;
    };
    let Some(host) = text(header::HOST) else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// The token as a bearer, or the session cookie the login form set.
fn authorized(headers: &HeaderMap, token: &Secret, session: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "));
    if let Some(given) = bearer {
        return equal(given.trim(), token.expose());
    }
    cookie(headers, SESSION_COOKIE).is_some_and(|c| equal(c, session))
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Constant-time comparison (the length is not secret).
fn equal(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// The form's CSRF token is this server's.
fn check_csrf(state: &Inner, given: &str) -> Result<(), UiError> {
    if equal(given, &state.csrf) {
        Ok(())
    } else {
        Err(UiError::Forbidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_loopback_host_names_are_answered_without_a_token() {
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.1.2.3",
        ] {
            assert!(host_is_loopback(&headers(&[("host", host)])), "{host}");
        }
        for host in ["evil.example:8080", "10.0.0.1:8080", "[fe80::1]:80", ""] {
            assert!(!host_is_loopback(&headers(&[("host", host)])), "{host}");
        }
        assert!(!host_is_loopback(&HeaderMap::new()));
    }

    #[test]
    fn a_post_from_another_site_is_refused() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn the_token_is_taken_as_a_bearer_or_the_session_as_a_cookie() {
        let token = Secret::new("0123456789abcdef");
        assert!(authorized(
            &headers(&[("authorization", "Bearer 0123456789abcdef")]),
            &token,
            "s"
        ));
        assert!(!authorized(
            &headers(&[("authorization", "Bearer 0123456789abcdeX")]),
            &token,
            "s"
        ));
        assert!(authorized(
            &headers(&[("cookie", "a=b; visibuild_ui_session=sess")]),
            &token,
            "sess"
        ));
        assert!(!authorized(
            &headers(&[("cookie", "visibuild_ui_session=other")]),
            &token,
            "sess"
        ));
        assert!(!authorized(&HeaderMap::new(), &token, "sess"));
    }

    #[test]
    fn off_loopback_a_token_of_sixteen_characters_is_needed() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(matches!(
            check_exposure(any, None),
            Err(UiError::Exposed { .. })
        ));
        assert!(check_exposure(local, None).is_ok());
        assert!(matches!(
            check_exposure(any, Some(&Secret::new("short"))),
            Err(UiError::WeakToken)
        ));
        assert!(check_exposure(any, Some(&Secret::new("0123456789abcdef"))).is_ok());
    }
}
