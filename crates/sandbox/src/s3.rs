//! The sandbox's S3: presigned-PUT URLs signed and verified with `aws-sigv4` (query-string
//! SigV4), and a PUT endpoint that checks them like S3 and streams bodies to disk.

use crate::state::Shared;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use md5::{Digest, Md5};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;
use time::PrimitiveDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use tokio::io::AsyncWriteExt;
use url::form_urlencoded;

/// The one bucket the sandbox serves.
pub const BUCKET: &str = "sandbox-bucket";
const REGION: &str = "us-east-1";
const SERVICE: &str = "s3";
const ACCESS_KEY: &str = "SANDBOXACCESSKEY";
/// S3's ceiling for a presigned URL's lifetime (7 days).
const MAX_EXPIRES: u64 = 604_800;
const AMZ_DATE: &[BorrowedFormatItem<'_>] =
    format_description!("[year][month][day]T[hour][minute][second]Z");

/// RFC 3986 unreserved characters stay; everything else in a path segment is escaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The query parameters that carry a presigned signature, in the order S3 writes them.
const SIGNING_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// Why a presigned request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("query-string authentication requires {0}")]
    Missing(&'static str),
    #[error("{0} is malformed")]
    Malformed(&'static str),
    #[error("request has expired")]
    Expired,
    #[error("the request signature we calculated does not match the signature you provided")]
    Mismatch,
    #[error("signing failed: {0}")]
    Signing(String),
}

/// Signs and verifies presigned PUT URLs with one secret, made at start.
pub(crate) struct Signer {
    secret: String,
}

/// What a presigned URL is for.
pub(crate) struct PresignRequest<'a> {
    pub authority: &'a str,
    pub key: &'a str,
    pub content_type: &'a str,
    pub content_md5: &'a str,
    pub expires_in: Duration,
    pub now: SystemTime,
}

impl Signer {
    pub fn new(secret: String) -> Self {
        Self { secret }
    }

    /// A full `http://…` presigned PUT URL for `key`.
    pub fn presign(&self, req: &PresignRequest<'_>) -> Result<String, AuthError> {
        let path = object_path(req.key);
        let headers = [
            ("content-md5", req.content_md5),
            ("content-type", req.content_type),
        ];
        // Whole seconds: X-Amz-Date has no fraction, and verification starts from it.
        let now = truncate_to_seconds(req.now);
        let params =
            self.signing_params(req.authority, &path, &[], &headers, now, req.expires_in)?;
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &params {
            query.append_pair(name, value);
        }
        Ok(format!(
            "http://{}{}?{}",
            req.authority,
            path,
            query.finish()
        ))
    }

    /// Recomputes the signature of an incoming PUT from its own method, path, query, `Host`,
    /// `Content-Type` and `Content-MD5`, and compares every signing parameter.
    pub fn verify(
        &self,
        authority: &str,
        raw_path: &str,
        raw_query: &str,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let mut given: Vec<(String, String)> = Vec::new();
        let mut other: Vec<(String, String)> = Vec::new();
        for (name, value) in form_urlencoded::parse(raw_query.as_bytes()) {
            let pair = (name.into_owned(), value.into_owned());
            if SIGNING_PARAMS.contains(&pair.0.as_str()) {
                if given.iter().any(|(n, _)| *n == pair.0) {
                    return Err(AuthError::Mismatch);
                }
                given.push(pair);
            } else {
                other.push(pair);
            }
        }
        let get = |name: &'static str| {
            given
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .ok_or(AuthError::Missing(name))
        };
        if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
            return Err(AuthError::Malformed("X-Amz-Algorithm"));
        }
        get("X-Amz-Credential")?;
        get("X-Amz-SignedHeaders")?;
        get("X-Amz-Signature")?;
        let date = PrimitiveDateTime::parse(get("X-Amz-Date")?, AMZ_DATE)
            .map(|date| SystemTime::from(date.assume_utc()))
            .map_err(|_| AuthError::Malformed("X-Amz-Date"))?;
        let expires = get("X-Amz-Expires")?
            .parse::<u64>()
            .ok()
            .filter(|secs| (1..=MAX_EXPIRES).contains(secs))
            .ok_or(AuthError::Malformed("X-Amz-Expires"))?;
        let expires = Duration::from_secs(expires);
        if now > date + expires {
            return Err(AuthError::Expired);
        }

        let path = canonical_path(raw_path).ok_or(AuthError::Mismatch)?;
        // A repeated header signs as its values joined by commas, as SigV4 canonicalises it.
        let mut header_values = Vec::new();
        for name in ["content-md5", "content-type"] {
            let values = headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().map_err(|_| AuthError::Mismatch))
                .collect::<Result<Vec<_>, _>>()?;
            if !values.is_empty() {
                header_values.push((name, values.join(",")));
            }
        }
        let signed_headers: Vec<(&str, &str)> = header_values
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let expected =
            self.signing_params(authority, &path, &other, &signed_headers, date, expires)?;
        let mut all_equal = subtle::Choice::from(1u8);
        for (name, value) in &expected {
            let incoming = given
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            all_equal &= incoming.as_bytes().ct_eq(value.as_bytes());
        }
        if given.len() != expected.len() || !bool::from(all_equal) {
            return Err(AuthError::Mismatch);
        }
        Ok(())
    }

    /// The `X-Amz-*` query parameters `aws-sigv4` produces for this request.
    fn signing_params(
        &self,
        authority: &str,
        path: &str,
        other_query: &[(String, String)],
        headers: &[(&str, &str)],
        time: SystemTime,
        expires_in: Duration,
    ) -> Result<Vec<(&'static str, String)>, AuthError> {
        let failed = |e: &dyn std::fmt::Display| AuthError::Signing(e.to_string());
        let mut uri = format!("http://{authority}{path}");
        if !other_query.is_empty() {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.extend_pairs(other_query);
            uri = format!("{uri}?{}", query.finish());
        }
        let identity = Credentials::new(ACCESS_KEY, &self.secret, None, None, "sandbox").into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires_in);
        // S3 signs the path as sent: no re-encoding, no dot-segment normalisation.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(REGION)
            .name(SERVICE)
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| failed(&e))?
            .into();
        let mut all_headers = vec![("host", authority)];
        all_headers.extend_from_slice(headers);
        let signable = SignableRequest::new(
            "PUT",
            uri,
            all_headers.into_iter(),
            SignableBody::UnsignedPayload,
        )
        .map_err(|e| failed(&e))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| failed(&e))?
            .into_parts();
        let (_headers, query) = instructions.into_parts();
        Ok(query
            .into_iter()
            .map(|(name, value)| (name, value.into_owned()))
            .collect())
    }
}

/// `/s3/<bucket>/<key>` with every key segment escaped.
pub(crate) fn object_path(key: &str) -> String {
    let key: Vec<String> = key
        .split('/')
        .map(|segment| utf8_percent_encode(segment, SEGMENT).to_string())
        .collect();
    format!("/s3/{BUCKET}/{}", key.join("/"))
}

/// The path in its one canonical escaping, however the client escaped it.
fn canonical_path(raw: &str) -> Option<String> {
    let segments: Option<Vec<String>> = raw
        .split('/')
        .map(|segment| {
            let decoded = percent_decode_str(segment).decode_utf8().ok()?;
            Some(utf8_percent_encode(&decoded, SEGMENT).to_string())
        })
        .collect();
    Some(segments?.join("/"))
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// An S3-style XML error.
pub(crate) struct S3Error {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl S3Error {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "sandbox S3 failed to store an object");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    }
}

impl From<AuthError> for S3Error {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Expired => {
                Self::new(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired")
            }
            AuthError::Mismatch => Self::new(
                StatusCode::FORBIDDEN,
                "SignatureDoesNotMatch",
                err.to_string(),
            ),
            AuthError::Missing(_) | AuthError::Malformed(_) => {
                Self::new(StatusCode::FORBIDDEN, "AccessDenied", err.to_string())
            }
            AuthError::Signing(_) => Self::internal(err),
        }
    }
}

impl IntoResponse for S3Error {
    fn into_response(self) -> Response {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message></Error>",
            self.code,
            xml_escape(&self.message)
        );
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        response
    }
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// `PUT /s3/{bucket}/{*key}`: the presigned upload.
///
/// Checks, in S3's order: chunked (501), no `Content-Length` (411), expiry (403
/// AccessDenied), signature incl. `Content-Type`/`Content-MD5` (403 SignatureDoesNotMatch),
/// length against the presigned `fileSize` (400 EntityTooSmall / EntityTooLarge), then the
/// streamed body's MD5 (400 BadDigest). Only a fully valid body replaces the stored object.
pub(crate) async fn put_object(
    State(shared): State<Arc<Shared>>,
    Path((bucket, key)): Path<(String, String)>,
    request: Request,
) -> Result<Response, S3Error> {
    if shared.roll(shared.behaviour.s3_fail_rate) {
        let slow_down = {
            let mut inner = shared.lock();
            inner.stats.s3_faults += 1;
            inner.rng.random_bool(0.5)
        };
        return Err(if slow_down {
            S3Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            )
        } else {
            S3Error::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            )
        });
    }
    let headers = request.headers();
    let chunked = headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"))
    });
    if chunked {
        return Err(S3Error::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "A header you provided implies functionality that is not implemented: Transfer-Encoding",
        ));
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            S3Error::new(
                StatusCode::LENGTH_REQUIRED,
                "MissingContentLength",
                "You must provide the Content-Length HTTP header.",
            )
        })?;
    if bucket != BUCKET {
        return Err(S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist",
        ));
    }
    let authority = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    shared.signer.verify(
        authority,
        request.uri().path(),
        request.uri().query().unwrap_or_default(),
        headers,
        SystemTime::now(),
    )?;

    let (upload_id, size, md5) = {
        let inner = shared.lock();
        let upload = inner
            .uploads
            .get(&key)
            .ok_or_else(|| S3Error::new(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied"))?;
        (upload.id.clone(), upload.size, upload.md5.clone())
    };
    if length < size {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "EntityTooSmall",
            format!("Your proposed upload is smaller than the presigned size of {size} bytes."),
        ));
    }
    if length > size {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "EntityTooLarge",
            format!("Your proposed upload exceeds the presigned size of {size} bytes."),
        ));
    }

    let incoming =
        tempfile::NamedTempFile::new_in(&shared.incoming_dir).map_err(S3Error::internal)?;
    let digest = stream_to_file(request.into_body(), &incoming, size).await?;
    let expected = BASE64.decode(&md5).map_err(S3Error::internal)?;
    if digest.as_slice() != expected.as_slice() {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "BadDigest",
            "The Content-MD5 you specified did not match what we received.",
        ));
    }
    let destination = shared.object_path(&upload_id);
    tokio::task::spawn_blocking(move || incoming.persist(destination))
        .await
        .map_err(S3Error::internal)?
        .map_err(S3Error::internal)?;
    if let Some(upload) = shared.lock().uploads.get_mut(&key) {
        upload.stored = true;
    }
    tracing::debug!(%key, size, "sandbox S3 stored an object");
    let etag = format!("\"{}\"", hex::encode(digest));
    let mut response = StatusCode::OK.into_response();
    response.headers_mut().insert(
        header::ETAG,
        HeaderValue::from_str(&etag).map_err(S3Error::internal)?,
    );
    Ok(response)
}

/// Streams `body` into `file` while hashing it; exactly `size` bytes must arrive.
async fn stream_to_file(
    body: Body,
    file: &tempfile::NamedTempFile,
    size: u64,
) -> Result<[u8; 16], S3Error> {
    let incomplete = || {
        S3Error::new(
            StatusCode::BAD_REQUEST,
            "IncompleteBody",
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        )
    };
    let mut out = tokio::fs::File::from_std(file.reopen().map_err(S3Error::internal)?);
    let mut hasher = Md5::new();
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| incomplete())?;
        received += chunk.len() as u64;
        if received > size {
            return Err(incomplete());
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(S3Error::internal)?;
    }
    out.flush().await.map_err(S3Error::internal)?;
    if received != size {
        return Err(incomplete());
    }
    Ok(hasher.finalize().into())
}
