//! The sandbox's S3: one bucket whose objects are PUT through presigned URLs (see
//! [`crate::sigv4`]), checked like S3 and streamed to disk while hashed.

use crate::sigv4::{self, AuthError};
use crate::state::Shared;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use md5::{Digest, Md5};
use rand::Rng;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The one bucket the sandbox serves.
pub const BUCKET: &str = "sandbox-bucket";

/// `/s3/<bucket>/<key>` with every key segment escaped.
pub(crate) fn object_path(key: &str) -> String {
    let key: Vec<String> = key.split('/').map(sigv4::escape_segment).collect();
    format!("/s3/{BUCKET}/{}", key.join("/"))
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
    shared.upload_arrived();
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
        shared.clock.now(),
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
    let digest = stream_to_file(&shared, request.into_body(), &incoming, size).await?;
    let expected = BASE64.decode(&md5).map_err(S3Error::internal)?;
    if digest.as_slice() != expected.as_slice() {
        return Err(S3Error::new(
            StatusCode::BAD_REQUEST,
            "BadDigest",
            "The Content-MD5 you specified did not match what we received.",
        ));
    }
    let destination = shared.object_path(&upload_id);
    let quarantined = tokio::task::spawn_blocking(move || {
        let infected = holds_eicar(incoming.path())?;
        incoming.persist(destination)?;
        Ok::<bool, std::io::Error>(infected)
    })
    .await
    .map_err(S3Error::internal)?
    .map_err(S3Error::internal)?;
    if let Some(upload) = shared.lock().uploads.get_mut(&key) {
        upload.stored = true;
        upload.quarantined = quarantined;
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
    shared: &Shared,
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
        shared.bytes_arrived(chunk.len() as u64);
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

/// The EICAR anti-virus test string. The vendor scans uploads for malware and quarantines
/// what it finds; the sandbox's "scan" finds exactly this string, anywhere in the object.
pub const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// Whether the file holds [`EICAR`], read in chunks (objects may be large).
fn holds_eicar(path: &std::path::Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut window: Vec<u8> = Vec::with_capacity(256 * 1024 + EICAR.len());
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            return Ok(false);
        }
        window.extend_from_slice(&chunk[..n]);
        if window.windows(EICAR.len()).any(|w| w == EICAR) {
            return Ok(true);
        }
        // Keep the tail that could start a match across chunks.
        let keep = window.len().min(EICAR.len() - 1);
        window.drain(..window.len() - keep);
    }
}
