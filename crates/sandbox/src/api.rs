//! The sandbox's Visibuild API (OAuth, presign, tickets), its fault-injection middleware
//! and the unauthenticated `/sandbox/*` views used by tests and rehearsals.

use crate::model::{Priority, SandboxContact, SandboxTicket};
use crate::s3;
use crate::server::ConnectionKill;
use crate::sigv4::PresignRequest;
use crate::state::{KeyRefusal, Shared, Upload};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use url::form_urlencoded;
use uuid::Uuid;

/// S3's single-PUT ceiling, which Visibuild's presign inherits.
pub const MAX_FILE_SIZE: u64 = 5 * 1024 * 1024 * 1024;
const SCOPES: [&str; 2] = ["read", "write"];

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oauth/token", post(oauth_token))
        .route("/api/core/v1/attachments", post(presign))
        .route("/api/core/v1/tickets", post(create_ticket))
        .route(
            "/s3/{bucket}/{*key}",
            put(s3::put_object).layer(DefaultBodyLimit::disable()),
        )
        .route("/sandbox/tickets", get(list_tickets))
        .route("/sandbox/objects", get(list_objects))
        .route("/sandbox/stats", get(show_stats))
        .route_layer(middleware::from_fn_with_state(shared.clone(), behave))
        .with_state(shared)
}

/// Latency on everything; on the API (incl. OAuth) the rate limit, then random faults,
/// both answered before the handler runs. Counts every answered request.
async fn behave(
    State(shared): State<Arc<Shared>>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let path = matched.as_ref().map_or("", |m| m.as_str());
    let endpoint = if path.starts_with("/s3/") {
        format!("{} /s3", request.method())
    } else {
        format!("{} {path}", request.method())
    };
    let is_api = path == "/oauth/token" || path.starts_with("/api/");
    if !shared.behaviour.latency.is_zero() {
        tokio::time::sleep(shared.behaviour.latency).await;
    }
    if is_api {
        shared.arrived();
    }
    let response = if !is_api {
        next.run(request).await
    } else if let Some(limited) = rate_limited(&shared) {
        limited
    } else if shared.roll(shared.behaviour.fail_rate) {
        injected_fault(&shared)
    } else {
        next.run(request).await
    };
    shared.record(endpoint, response.status().as_u16());
    response
}

fn rate_limited(shared: &Shared) -> Option<Response> {
    let limiter = shared.limiter.as_ref()?;
    let not_until = limiter.check().err()?;
    let wait = not_until.wait_time_from(governor::clock::Clock::now(limiter.clock()));
    // Whole seconds, rounded up: a client that honours it is never early.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    shared.lock().stats.rate_limited += 1;
    let mut response =
        ApiError::status(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded").into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    Some(response)
}

fn injected_fault(shared: &Shared) -> Response {
    let status = {
        let mut inner = shared.lock();
        inner.stats.faults_injected += 1;
        [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ][inner.rng.random_range(0..3)]
    };
    ApiError::status(status, "injected fault").into_response()
}

/// A JSON API error: `{"error":{"code"?, "message", "field"?, "key"?}}` (`code` is
/// `invalid_field` on a field's error).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<&'static str>,
    key: Option<String>,
}

impl ApiError {
    fn status(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
            key: None,
        }
    }

    fn unauthorized() -> Self {
        Self::status(
            StatusCode::UNAUTHORIZED,
            "missing, unknown or expired token",
        )
    }

    fn bad_json(message: impl Into<String>) -> Self {
        Self::status(StatusCode::BAD_REQUEST, message)
    }

    fn field(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            ..Self::status(StatusCode::UNPROCESSABLE_ENTITY, message)
        }
    }

    fn key(message: impl Into<String>, key: String) -> Self {
        Self {
            key: Some(key),
            ..Self::status(StatusCode::UNPROCESSABLE_ENTITY, message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = Map::new();
        if let Some(field) = self.field {
            error.insert("code".into(), "invalid_field".into());
            error.insert("field".into(), field.into());
        }
        error.insert("message".into(), self.message.into());
        if let Some(key) = self.key {
            error.insert("key".into(), key.into());
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The company behind the request's bearer token.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or_else(ApiError::unauthorized)?;
    shared.company_for(token).ok_or_else(ApiError::unauthorized)
}

/// An OAuth 2 error body (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({ "error": error, "error_description": description });
    (status, Json(body)).into_response()
}

/// `POST /oauth/token`, client-credentials grant only.
async fn oauth_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if field("grant_type") != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let (Some(id), Some(secret)) = (field("client_id"), field("client_secret")) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    let company = shared
        .clients
        .iter()
        .find_map(|(known_id, known_secret, company)| {
            let matches = known_id == id && known_secret.matches(secret);
            matches.then(|| company.clone())
        });
    let company = company.filter(|_| !shared.lock().revoked);
    let Some(company) = company else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    let scope = field("scope").unwrap_or("read write");
    if scope.split_whitespace().any(|s| !SCOPES.contains(&s)) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope must be within \"read write\"",
        );
    }
    let token = shared.issue_token(&company);
    let body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": shared.behaviour.token_ttl.as_secs(),
        "scope": scope,
    });
    (StatusCode::OK, Json(body)).into_response()
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_json("request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_json(format!("malformed JSON: {e}"))),
    }
}

fn required_string<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, ApiError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ApiError::field(field, "must not be empty")),
        None | Some(Value::Null) => Err(ApiError::field(field, "is required")),
        Some(_) => Err(ApiError::field(field, "must be a string")),
    }
}

fn optional_string<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::field(field, "must be a string")),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
}

/// `type/subtype`, optionally followed by `; parameters`.
fn is_media_type(s: &str) -> bool {
    let essence = s.split(';').next().unwrap_or_default().trim();
    essence
        .split_once('/')
        .is_some_and(|(kind, sub)| is_token(kind) && is_token(sub))
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(char::is_whitespace)
}

/// `POST /api/core/v1/attachments`: presign one upload.
async fn presign(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let company = authenticate(&shared, &headers)?;
    let obj = parse_object(&body)?;

    let filename = required_string(&obj, "filename")?;
    if filename.contains('/') || filename.contains('\\') {
        return Err(ApiError::field(
            "filename",
            "must not contain a path separator",
        ));
    }
    if filename == "." || filename == ".." || filename.chars().any(char::is_control) {
        return Err(ApiError::field("filename", "is not a valid file name"));
    }
    if filename.len() > 255 {
        return Err(ApiError::field("filename", "must be at most 255 bytes"));
    }
    let content_type = required_string(&obj, "contentType")?;
    if !is_media_type(content_type) {
        return Err(ApiError::field(
            "contentType",
            "must be a MIME type such as image/jpeg",
        ));
    }
    let size = match obj.get("fileSize") {
        None | Some(Value::Null) => return Err(ApiError::field("fileSize", "is required")),
        Some(Value::Number(n)) => n.as_u64().filter(|&n| n > 0).ok_or_else(|| {
            ApiError::field("fileSize", "must be a positive integer number of bytes")
        })?,
        Some(_) => return Err(ApiError::field("fileSize", "must be an integer")),
    };
    if size > MAX_FILE_SIZE {
        return Err(ApiError::field(
            "fileSize",
            "must be at most 5 GiB (5368709120 bytes)",
        ));
    }
    let checksum = required_string(&obj, "checksum")?;
    if BASE64.decode(checksum).map(|d| d.len()) != Ok(16) {
        return Err(ApiError::field(
            "checksum",
            "must be the base64 encoding of a 16-byte MD5 digest",
        ));
    }

    let (id, key) = {
        let mut inner = shared.lock();
        let id = inner.random_id();
        (id.clone(), format!("attachment/{id}/{filename}"))
    };
    let authority = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&shared.authority);
    let url = shared
        .signer
        .presign(&PresignRequest {
            authority,
            path: &s3::object_path(&key),
            content_type,
            content_md5: checksum,
            expires_in: shared.behaviour.url_ttl,
            now: shared.clock.now(),
        })
        .map_err(|e| {
            tracing::error!(error = %e, "sandbox could not presign");
            ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "could not presign")
        })?;
    let upload = Upload {
        id,
        company,
        filename: filename.to_string(),
        content_type: content_type.to_string(),
        size,
        md5: checksum.to_string(),
        stored: false,
        quarantined: false,
        linked_to: None,
    };
    shared.lock().uploads.insert(key.clone(), upload);
    let body = json!({ "data": { "upload": {
        "key": key,
        "filename": filename,
        "url": url,
        "headers": { "Content-Type": content_type, "Content-MD5": checksum },
    }}});
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `POST /api/core/v1/tickets`: validate, link every key or none, maybe lose the answer.
async fn create_ticket(
    State(shared): State<Arc<Shared>>,
    request: Request,
) -> Result<Response, ApiError> {
    let company = authenticate(&shared, request.headers())?;
    let kill = request.extensions().get::<ConnectionKill>().cloned();
    let body = axum::body::to_bytes(request.into_body(), 2 * 1024 * 1024)
        .await
        .map_err(|_| ApiError::bad_json("request body unreadable or too large"))?;
    let obj = parse_object(&body)?;

    let title = required_string(&obj, "title")?.to_string();
    let project_id = required_string(&obj, "projectId")?;
    let project_id =
        Uuid::parse_str(project_id).map_err(|_| ApiError::field("projectId", "must be a UUID"))?;
    let unknown = !shared.projects.is_empty() && !shared.projects.contains(&project_id);
    if unknown || shared.lock().refused_projects.contains(&project_id) {
        return Err(ApiError::field(
            "projectId",
            "projectId is not a project of this company",
        ));
    }
    let priority = optional_string(&obj, "priority")?
        .map(|p| match p {
            "low" => Ok(Priority::Low),
            "medium" => Ok(Priority::Medium),
            "high" => Ok(Priority::High),
            _ => Err(ApiError::field(
                "priority",
                "must be one of low, medium, high",
            )),
        })
        .transpose()?;
    let address = optional_string(&obj, "address")?.map(str::to_string);
    let contact = match obj.get("contact") {
        None | Some(Value::Null) => None,
        Some(Value::Object(contact)) => {
            let name = optional_string(contact, "name")
                .map_err(|_| ApiError::field("contact", "contact.name must be a string"))?;
            let email = optional_string(contact, "email")
                .map_err(|_| ApiError::field("contact", "contact.email must be a string"))?;
            if let Some(email) = email
                && !is_email(email)
            {
                return Err(ApiError::field(
                    "contact",
                    "contact.email is not an email address",
                ));
            }
            Some(SandboxContact {
                name: name.map(str::to_string),
                email: email.map(str::to_string),
            })
        }
        Some(_) => return Err(ApiError::field("contact", "must be an object")),
    };
    let keys: Vec<String> = match obj.get("attachmentKeys") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::field("attachmentKeys", "must be an array of strings"))?,
        Some(_) => {
            return Err(ApiError::field(
                "attachmentKeys",
                "must be an array of strings",
            ));
        }
    };

    let draft = SandboxTicket {
        id: Uuid::nil(),
        company: String::new(),
        project_id,
        title,
        priority,
        address,
        contact,
        attachments: Vec::new(),
    };
    let ticket = shared
        .lock()
        .create_ticket(&company, draft, &keys)
        .map_err(|(refusal, key)| match refusal {
            // The sandbox's assumption of the wording: the vendor publishes none.
            KeyRefusal::Quarantined => ApiError::key(format!("{refusal}: {key}"), key),
            _ => ApiError::key(refusal.to_string(), key),
        })?;
    tracing::debug!(ticket = %ticket.id, keys = keys.len(), "sandbox created a ticket");

    if let Some(kill) = kill
        && shared.roll(shared.behaviour.drop_rate)
    {
        shared.lock().stats.responses_dropped += 1;
        kill.close_without_response();
        // The connection task drops this future with the connection; nothing is sent.
        std::future::pending::<()>().await;
    }
    let body = json!({ "data": { "ticket": {
        "id": ticket.id,
        "title": ticket.title,
        "projectId": ticket.project_id,
        "priority": ticket.priority,
        "address": ticket.address,
        "contact": ticket.contact,
        "attachmentKeys": keys,
    }}});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_tickets(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({ "tickets": shared.tickets() })).into_response()
}

async fn list_objects(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({ "objects": shared.objects() })).into_response()
}

async fn show_stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.stats()).into_response()
}
