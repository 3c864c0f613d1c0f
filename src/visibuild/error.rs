//! How a call to Visibuild or S3 failed, classified by what the caller should do next:
//! retry later, wait for the rate limit, give up, or treat the outcome as unknown.

use std::time::Duration;

/// A failed call. Messages never carry tokens or presigned-URL signatures.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A timeout, reset, 5xx or S3 `SlowDown` before anything took effect: retry with backoff.
    #[error("transient: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// No connection could be made (DNS, refused, no route, TLS handshake): nothing was sent.
    /// The pool pauses as for a database outage; no attempt is used.
    #[error("Visibuild unreachable: {reason}")]
    Unreachable { reason: String },
    /// 429: wait `Retry-After` (every worker waits), and retry without using up an attempt.
    #[error("rate limited (429), retry after {retry_after:?}")]
    RateLimited { retry_after: Option<Duration> },
    /// The request left but no answer came back: it may or may not have taken effect.
    #[error("outcome unknown: {reason}")]
    OutcomeUnknown { reason: String },
    /// 401 even after fresh credentials.
    #[error("unauthorized (401): {reason}")]
    Unauthorized { reason: String },
    /// A refusal that will not change on retry (400, 403 from the API, 404, other 422s).
    #[error("rejected ({status}): {reason}")]
    Permanent { status: u16, reason: String },
    /// S3 said the presigned URL expired or its signature/headers do not match: presign again.
    #[error("upload refused by S3 ({status} {code}): {reason}; a new URL is needed")]
    UploadUrlRejected {
        status: u16,
        code: String,
        reason: String,
    },
    /// S3 said the body does not match the declared MD5 or size: hash again, presign again.
    #[error("upload refused by S3 ({status} {code}): {reason}; the file must be hashed again")]
    UploadContentMismatch {
        status: u16,
        code: String,
        reason: String,
    },
    /// Ticket 422 "attachment key not found": upload those attachments again.
    #[error("attachment key not found ({})", describe_keys(keys))]
    KeyNotFound { keys: Vec<String> },
    /// Ticket 422 "attachment belongs to another company": permanent.
    #[error(
        "attachment belongs to another company ({}): the credentials belong to a different company than the one the files were uploaded for",
        describe_keys(keys)
    )]
    OtherCompany { keys: Vec<String> },
    /// Ticket 422 "attachment already associated".
    #[error("attachment already associated ({})", describe_keys(keys))]
    AlreadyAssociated { keys: Vec<String> },
}

fn describe_keys(keys: &[String]) -> String {
    if keys.is_empty() {
        "key not named".to_string()
    } else {
        keys.join(", ")
    }
}

/// The three 422s of the vendor page, recognised by their text alone (case-insensitive) —
/// the vendor documents nothing else. `our_keys` that appear in the body are the offending
/// ones; when none appears the list is empty and the caller acts on all of its keys.
pub fn classify_ticket_422(body: &str, our_keys: &[String]) -> Option<ApiError> {
    let text = body.to_ascii_lowercase();
    let keys: Vec<String> = our_keys
        .iter()
        .filter(|k| body.contains(k.as_str()) || body.contains(&k.replace('/', "\\/")))
        .cloned()
        .collect();
    if text.contains("key not found") {
        Some(ApiError::KeyNotFound { keys })
    } else if text.contains("another company") {
        Some(ApiError::OtherCompany { keys })
    } else if text.contains("already associated") {
        Some(ApiError::AlreadyAssociated { keys })
    } else {
        None
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The `<Code>` of an S3 XML error body.
pub fn s3_error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let end = body[start..].find("</Code>")? + start;
    Some(&body[start..end])
}

/// A response body shortened for an error message.
pub fn snippet(body: &str) -> String {
    let trimmed = body.trim();
    match trimmed.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &trimmed[..i]),
        None => trimmed.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_422s_are_recognised_by_their_text_and_name_our_keys() {
        let keys = vec![
            "attachment/a/x.jpg".to_string(),
            "attachment/b/y.jpg".to_string(),
        ];
        let body = r#"{"error":{"message":"Attachment key not found","key":"attachment/b/y.jpg"}}"#;
        assert_eq!(
            classify_ticket_422(body, &keys),
            Some(ApiError::KeyNotFound {
                keys: vec!["attachment/b/y.jpg".into()]
            })
        );
        assert_eq!(
            classify_ticket_422("ATTACHMENT ALREADY ASSOCIATED", &keys),
            Some(ApiError::AlreadyAssociated { keys: vec![] })
        );
        assert!(matches!(
            classify_ticket_422("attachment belongs to another company", &keys),
            Some(ApiError::OtherCompany { .. })
        ));
        assert_eq!(
            classify_ticket_422(r#"{"error":"title is blank"}"#, &keys),
            None
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&later).unwrap();
        assert!(d > Duration::from_secs(25) && d <= Duration::from_secs(30));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn s3_error_codes_are_read_from_xml() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code></Error>";
        assert_eq!(s3_error_code(body), Some("SignatureDoesNotMatch"));
        assert_eq!(s3_error_code("nope"), None);
    }
}
