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
    /// The request went out (for all we know) and no answer came within the answer timeout,
    /// or an upload stopped making progress: the service is not answering. An outage, like
    /// `Unreachable`, but where the outcome matters (a create) it may have landed.
    #[error("no answer: {reason}")]
    NoAnswer { reason: String },
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
    /// A refusal the server explained in a JSON error body: read as its own words.
    #[error("{error}")]
    Refused { status: u16, error: ServerError },
    /// Ticket create refused for one of our keys with a reason other than the three the
    /// vendor documents (the sandbox: a quarantined file). Uploading again may not fix it.
    #[error("{error}")]
    KeyRefused {
        keys: Vec<String>,
        error: ServerError,
    },
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

/// An API error body in the server's own words: `{"error": {"code", "message", "field"?,
/// "key"?}}`, `{"error": "text"}`, OAuth's `{"error", "error_description"}`, or a bare
/// `{"message"}`. Shown as `message (field F)`; `--json` outputs keep the parts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl ServerError {
    /// The error a JSON body states, if it is one; `None` for anything else (HTML, text).
    pub fn parse(body: &str) -> Option<Self> {
        use serde_json::Value;
        let value: Value = serde_json::from_str(body.trim()).ok()?;
        let text = |v: Option<&Value>| -> Option<String> {
            match v? {
                Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let error = match value.get("error") {
            Some(Value::Array(items)) => items.first().cloned(),
            Some(e) => Some(e.clone()),
            None => match value.get("errors") {
                Some(Value::Array(items)) => items.first().cloned(),
                _ => None,
            },
        };
        let (code, message, field, key) = match &error {
            Some(e @ Value::Object(_)) => (
                text(e.get("code")),
                text(e.get("message")).or_else(|| text(e.get("detail"))),
                text(e.get("field")),
                text(e.get("key")),
            ),
            // OAuth (RFC 6749): `error` is the code, `error_description` the words.
            Some(Value::String(code)) => match text(value.get("error_description")) {
                Some(description) => (Some(code.clone()), Some(description), None, None),
                None => (None, Some(code.clone()), None, None),
            },
            _ => (
                text(value.get("code")),
                text(value.get("message")),
                text(value.get("field")),
                text(value.get("key")),
            ),
        };
        Some(Self {
            message: message.or_else(|| code.clone())?,
            code,
            field,
            key,
        })
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        match (&self.field, &self.key) {
            (Some(field), _) if !self.message.contains(&format!("(field {field})")) => {
                write!(f, " (field {field})")
            }
            (None, Some(key)) if !self.message.contains(key.as_str()) => write!(f, " (key {key})"),
            _ => Ok(()),
        }
    }
}

/// A response body as words for an error message: the server's own message when it sent a
/// JSON error, else a snippet.
pub fn readable(body: &str) -> String {
    match ServerError::parse(body) {
        Some(error) => error.to_string(),
        None => snippet(body),
    }
}

impl ApiError {
    /// The server's own error, when it explained the refusal in a JSON body.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ApiError::Refused { error, .. } | ApiError::KeyRefused { error, .. } => Some(error),
            _ => None,
        }
    }
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
    } else if !keys.is_empty() {
        // Refused for a key of ours, for a reason the vendor does not document.
        let error = ServerError::parse(body).unwrap_or_else(|| ServerError {
            code: None,
            message: snippet(body),
            field: None,
            key: None,
        });
        Some(ApiError::KeyRefused { keys, error })
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
    fn a_server_error_reads_as_its_message_and_field_never_as_json() {
        let body = r#"{"error": {"code": "invalid_field", "message": "projectId is not a project of this company", "field": "projectId"}}"#;
        let error = ServerError::parse(body).unwrap();
        assert_eq!(error.code.as_deref(), Some("invalid_field"));
        assert_eq!(error.field.as_deref(), Some("projectId"));
        assert_eq!(
            error.to_string(),
            "projectId is not a project of this company (field projectId)"
        );
        assert_eq!(
            readable(
                r#"{"error":{"message":"attachment key not found","key":"attachment/a/x.jpg"}}"#
            ),
            "attachment key not found (key attachment/a/x.jpg)"
        );
        assert_eq!(readable(r#"{"error":"title is blank"}"#), "title is blank");
        assert_eq!(
            readable(r#"{"error":"invalid_client","error_description":"unknown client"}"#),
            "unknown client"
        );
        assert_eq!(readable(r#"{"message":"Not Found"}"#), "Not Found");
        assert_eq!(
            readable("<html>bad gateway</html>"),
            "<html>bad gateway</html>"
        );
        assert_eq!(ServerError::parse(r#"{"data":1}"#), None);
    }

    #[test]
    fn a_422_naming_our_key_for_an_undocumented_reason_is_a_key_refusal() {
        let keys = vec!["attachment/a/x.jpg".to_string()];
        let body = r#"{"error":{"message":"attachment quarantined: attachment/a/x.jpg","key":"attachment/a/x.jpg"}}"#;
        match classify_ticket_422(body, &keys) {
            Some(ApiError::KeyRefused { keys, error }) => {
                assert_eq!(keys, vec!["attachment/a/x.jpg".to_string()]);
                assert_eq!(
                    error.to_string(),
                    "attachment quarantined: attachment/a/x.jpg"
                );
            }
            other => panic!("{other:?}"),
        }
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
