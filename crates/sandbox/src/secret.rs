//! The sandbox's own secret: a configured bearer token or OAuth client secret. It has no
//! `Display`, its `Debug` prints `***`, and it is compared in constant time.

use std::fmt;
use subtle::ConstantTimeEq;

/// A secret string, read by name with [`Secret::expose`].
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this secret, compared in constant time (the length aside).
    pub fn matches(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.0)
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_debugs_as_stars_and_matches_only_itself() {
        let s = Secret::new("s3cret");
        assert_eq!(format!("{s:?}"), "***");
        assert!(s.matches("s3cret"));
        assert!(!s.matches("s3cre"));
        assert!(!s.matches("s3cret!"));
        assert_eq!(s, Secret::new("s3cret"));
        assert_ne!(s, Secret::new("other"));
    }
}
