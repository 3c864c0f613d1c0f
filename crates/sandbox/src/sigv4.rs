//! Query-string SigV4 for presigned S3 PUTs, signed and verified with `aws-sigv4`: what a
//! presigned URL carries, and the check an incoming PUT's URL and headers must pass.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use axum::http::HeaderMap;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;
use time::PrimitiveDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use url::form_urlencoded;

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
    /// The object's path, already escaped (see [`escape_segment`]).
    pub path: &'a str,
    pub content_type: &'a str,
    pub content_md5: &'a str,
    pub expires_in: Duration,
    pub now: SystemTime,
}

impl Signer {
    pub fn new(secret: String) -> Self {
        Self { secret }
    }

    /// A full `http://…` presigned PUT URL for `req.path`.
    pub fn presign(&self, req: &PresignRequest<'_>) -> Result<String, AuthError> {
        let headers = [
            ("content-md5", req.content_md5),
            ("content-type", req.content_type),
        ];
        // Whole seconds: X-Amz-Date has no fraction, and verification starts from it.
        let now = truncate_to_seconds(req.now);
        let params =
            self.signing_params(req.authority, req.path, &[], &headers, now, req.expires_in)?;
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in &params {
            query.append_pair(name, value);
        }
        Ok(format!(
            "http://{}{}?{}",
            req.authority,
            req.path,
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

/// One path segment in its canonical escaping (RFC 3986 unreserved characters stay).
pub(crate) fn escape_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const MD5: &str = "XUFAKrxLKna5cZ2REBfFkg==";

    fn presigned(signer: &Signer, now: SystemTime) -> url::Url {
        let url = signer
            .presign(&PresignRequest {
                authority: "127.0.0.1:9000",
                path: "/s3/b/attachment/x/photo%20one.jpg",
                content_type: "image/jpeg",
                content_md5: MD5,
                expires_in: Duration::from_secs(60),
                now,
            })
            .unwrap();
        url::Url::parse(&url).unwrap()
    }

    fn headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("image/jpeg"));
        headers.insert("content-md5", HeaderValue::from_static(MD5));
        headers
    }

    fn verify_at(signer: &Signer, url: &url::Url, now: SystemTime) -> Result<(), AuthError> {
        let query = url.query().unwrap_or_default();
        signer.verify("127.0.0.1:9000", url.path(), query, &headers(), now)
    }

    #[test]
    fn a_presigned_url_verifies_until_its_expiry_and_not_a_second_after() {
        let signer = Signer::new("secret".into());
        let signed_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let url = presigned(&signer, signed_at + Duration::from_millis(900));
        assert!(url.query().unwrap().contains("X-Amz-Date=20231114T221320Z"));
        assert_eq!(verify_at(&signer, &url, signed_at), Ok(()));
        let last = signed_at + Duration::from_secs(60);
        assert_eq!(verify_at(&signer, &url, last), Ok(()));
        let late = last + Duration::from_millis(1);
        assert_eq!(verify_at(&signer, &url, late), Err(AuthError::Expired));
    }

    #[test]
    fn another_secret_or_escaping_of_the_path_is_judged_as_s3_would() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let url = presigned(&Signer::new("secret".into()), now);
        let other = Signer::new("other".into());
        assert_eq!(verify_at(&other, &url, now), Err(AuthError::Mismatch));
        // The same path escaped differently by the client is the same object.
        let signer = Signer::new("secret".into());
        let query = url.query().unwrap();
        let path = "/s3/b/attachment/x/photo%20one%2Ejpg";
        let result = signer.verify("127.0.0.1:9000", path, query, &headers(), now);
        assert_eq!(result, Ok(()));
    }
}
