//! Values that must never reach a log, an error or a report: tokens, client secrets,
//! presigned URLs. Redaction happens at the type level, so nobody has to remember it.

use std::fmt;

/// A secret string. `Debug` prints `***`; there is no `Display`, so a `format!("Bearer
/// {token}")` does not compile (it would send `***`): read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A presigned URL: printable only without its query string (where the signature is).
#[derive(Clone, PartialEq, Eq)]
pub struct PresignedUrl(String);

impl PresignedUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL byte for byte as the API returned it, for the PUT.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its query string: safe to log.
    pub fn redacted(&self) -> &str {
        self.0.split('?').next().unwrap_or_default()
    }
}

impl fmt::Debug for PresignedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}?***", self.redacted())
    }
}

impl fmt::Display for PresignedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}?***", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_as_stars() {
        let s = Secret::new("tok-123");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "tok-123");
    }

    #[test]
    fn presigned_urls_print_without_their_signature() {
        let u = PresignedUrl::new("http://h/b/k?X-Amz-Signature=abc");
        assert_eq!(u.to_string(), "http://h/b/k?***");
        assert!(!format!("{u:?}").contains("abc"));
    }
}
