//! Credentials for the Visibuild API: a long-lived bearer token, or OAuth client
//! credentials fetched on demand and refreshed before expiry, one refresh for all workers.

use crate::rate::RateGate;
use crate::secret::Secret;
use crate::visibuild::error::ApiError;
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// What the operator gave us.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `VISIBUILD_TOKEN`: a legacy long-lived bearer token.
    Token(Secret),
    /// `VISIBUILD_CLIENT_ID` + `VISIBUILD_CLIENT_SECRET`: OAuth client credentials.
    Client { id: String, secret: Secret },
}

#[derive(Debug)]
struct Cached {
    token: Secret,
    refresh_at: Instant,
}

/// Hands out a bearer token; for client credentials, fetches and refreshes it.
#[derive(Debug)]
pub struct TokenSource {
    credentials: Credentials,
    token_url: String,
    cached: Mutex<Option<Cached>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

impl TokenSource {
    pub fn new(credentials: Credentials, token_url: String) -> Self {
        Self {
            credentials,
            token_url,
            cached: Mutex::new(None),
        }
    }

    /// Whether a 401 can be cured by fetching a new token.
    pub fn can_refresh(&self) -> bool {
        matches!(self.credentials, Credentials::Client { .. })
    }

    /// A valid token. Concurrent callers share one fetch (the lock is held across it); a
    /// fetch is an API call like any other, so it takes a turn from `gate` first (and a 429
    /// pauses the gate).
    pub async fn token(&self, http: &reqwest::Client, gate: &RateGate) -> Result<Secret, ApiError> {
        let (id, secret) = match &self.credentials {
            Credentials::Token(token) => return Ok(token.clone()),
            Credentials::Client { id, secret } => (id, secret),
        };
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        gate.acquire().await;
        let fetched = match fetch_token(http, &self.token_url, id, secret).await {
            Err(ApiError::RateLimited { retry_after }) => {
                gate.pause(retry_after.unwrap_or(Duration::from_secs(1)))
                    .await;
                return Err(ApiError::RateLimited { retry_after });
            }
            other => other?,
        };
        let token = fetched.0.clone();
        *cached = Some(Cached {
            token: fetched.0,
            refresh_at: Instant::now() + fetched.1,
        });
        Ok(token)
    }

    /// Whether `token` is still the one to use (not due for a refresh): a caller that
    /// waited for its turn after taking the token checks before sending it.
    pub async fn is_current(&self, token: &Secret) -> bool {
        match &self.credentials {
            Credentials::Token(_) => true,
            Credentials::Client { .. } => self
                .cached
                .lock()
                .await
                .as_ref()
                .is_some_and(|c| &c.token == token && Instant::now() < c.refresh_at),
        }
    }

    /// Forget `stale` (the token a 401 answered), so the next `token` fetches a new one.
    pub async fn invalidate(&self, stale: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == stale) {
            *cached = None;
        }
    }
}

/// Fetch a token; returns it with how long to use it before refreshing.
async fn fetch_token(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    secret: &Secret,
) -> Result<(Secret, Duration), ApiError> {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", secret.expose()),
        ("scope", "read write"),
    ];
    let response = http
        .post(url)
        .form(&form)
        .send()
        .await
        .map_err(|e| super::transport_failure("/oauth/token", e, false))?;
    let status = response.status();
    let retry_after = super::retry_after_of(&response);
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        let parsed: TokenResponse =
            serde_json::from_str(&body).map_err(|_| ApiError::Permanent {
                status: status.as_u16(),
                reason: "token endpoint answered without an access_token".into(),
            })?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600));
        // Refresh a minute early, or at 80% of a short lifetime.
        let use_for = lifetime
            .saturating_sub(Duration::from_secs(60))
            .max(lifetime.mul_f64(0.8));
        return Ok((Secret::new(parsed.access_token), use_for));
    }
    Err(match status.as_u16() {
        429 => ApiError::RateLimited { retry_after },
        400 | 401 | 403 => ApiError::Unauthorized {
            reason: format!(
                "the client credentials were refused ({status}): {}",
                super::error::readable(&body)
            ),
        },
        s if s >= 500 => ApiError::Transient {
            reason: format!("token endpoint answered {status}"),
            retry_after,
        },
        s => ApiError::Permanent {
            status: s,
            reason: format!("token endpoint: {}", super::error::readable(&body)),
        },
    })
}
