//! The sandbox's memory: tokens, presigned uploads, stored objects, tickets and counters,
//! behind one lock so that multi-key checks (a ticket's attachment keys) are atomic.

use crate::clock::Clock;
use crate::model::{SandboxAttachment, SandboxObject, SandboxStats, SandboxTicket};
use crate::secret::Secret;
use crate::sigv4::Signer;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use uuid::Uuid;

/// The knobs that shape every response, fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct Behaviour {
    pub fail_rate: f64,
    pub drop_rate: f64,
    pub s3_fail_rate: f64,
    pub latency: Duration,
    pub url_ttl: Duration,
    pub token_ttl: Duration,
}

/// The API's rate limiter, on the sandbox's clock.
pub(crate) type Limiter =
    RateLimiter<NotKeyed, InMemoryState, LimiterClock, NoOpMiddleware<Duration>>;

/// The sandbox's clock as `governor` reads it: time since the Unix epoch.
#[derive(Debug, Clone)]
pub(crate) struct LimiterClock(Clock);

impl governor::clock::Clock for LimiterClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        // Before 1970 only on a broken clock; governor then sees time stand still.
        let now = self.0.now();
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// Everything the handlers share.
pub(crate) struct Shared {
    pub behaviour: Behaviour,
    /// Every expiry and the rate limit read it.
    pub clock: Clock,
    pub signer: Signer,
    pub limiter: Option<Limiter>,
    /// Where finished objects live, one file per upload id.
    pub objects_dir: PathBuf,
    /// Where bodies stream while they are hashed, before they are known to be valid.
    pub incoming_dir: PathBuf,
    /// Fallback `host[:port]` for presigned URLs when a request carries no `Host`.
    pub authority: String,
    /// `(client id, client secret, company)`.
    pub clients: Vec<(String, Secret, String)>,
    pub projects: Vec<Uuid>,
    inner: Mutex<Inner>,
}

/// A bearer token and the company it acts for.
pub(crate) struct TokenGrant {
    pub company: String,
    /// `None` for configured long-lived tokens.
    pub expires_at: Option<SystemTime>,
}

/// One presigned upload: what the client promised, and what it delivered.
pub(crate) struct Upload {
    /// Names the object file under `objects_dir`.
    pub id: String,
    pub company: String,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    /// Base64, as presigned.
    pub md5: String,
    /// Set by the first successful PUT; the key exists for tickets only then.
    pub stored: bool,
    /// The stored bytes hold the EICAR test string: the "malware scan" quarantined it.
    pub quarantined: bool,
    pub linked_to: Option<Uuid>,
}

pub(crate) struct Inner {
    pub rng: StdRng,
    pub tokens: HashMap<String, TokenGrant>,
    pub uploads: HashMap<String, Upload>,
    pub tickets: Vec<SandboxTicket>,
    pub stats: SandboxStats,
    /// When the API requests of the last second arrived (for the busiest second).
    pub api_arrivals: std::collections::VecDeque<SystemTime>,
    pub upload_arrivals: std::collections::VecDeque<SystemTime>,
    /// Upload body bytes of the last second, as they arrived, and their sum.
    pub byte_arrivals: std::collections::VecDeque<(SystemTime, u64)>,
    pub bytes_in_window: u64,
    /// Projects whose tickets are refused (`422` on `projectId`), changeable while running.
    pub refused_projects: std::collections::HashSet<Uuid>,
    /// Every token and OAuth client refused (revoked credentials), while set.
    pub revoked: bool,
}

/// Why a ticket's attachment key is refused; the message is the API's own wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyRefusal {
    #[error("attachment key not found")]
    NotFound,
    #[error("attachment belongs to another company")]
    OtherCompany,
    #[error("attachment already associated")]
    AlreadyAssociated,
    /// Not the vendor's words (it publishes none): the sandbox's assumption.
    #[error("attachment quarantined")]
    Quarantined,
}

pub(crate) struct SharedParts {
    pub behaviour: Behaviour,
    pub clock: Clock,
    pub rate: Option<u32>,
    pub rate_burst: Option<u32>,
    pub seed: Option<u64>,
    pub objects_dir: PathBuf,
    pub incoming_dir: PathBuf,
    pub authority: String,
    pub tokens: Vec<(String, String)>,
    pub clients: Vec<(String, Secret, String)>,
    pub projects: Vec<Uuid>,
    pub refused_projects: Vec<Uuid>,
}

impl Shared {
    pub fn new(parts: SharedParts) -> Self {
        let mut rng = match parts.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let signer = Signer::new(Alphanumeric.sample_string(&mut rng, 40));
        let limiter = parts.rate.and_then(NonZeroU32::new).map(|n| {
            let clock = LimiterClock(parts.clock.clone());
            let burst = parts.rate_burst.and_then(NonZeroU32::new).unwrap_or(n);
            RateLimiter::direct_with_clock(Quota::per_second(n).allow_burst(burst), clock)
        });
        let tokens = parts
            .tokens
            .into_iter()
            .map(|(token, company)| {
                let grant = TokenGrant {
                    company,
                    expires_at: None,
                };
                (token, grant)
            })
            .collect();
        Self {
            behaviour: parts.behaviour,
            clock: parts.clock,
            signer,
            limiter,
            objects_dir: parts.objects_dir,
            incoming_dir: parts.incoming_dir,
            authority: parts.authority,
            clients: parts.clients,
            projects: parts.projects,
            inner: Mutex::new(Inner {
                rng,
                tokens,
                uploads: HashMap::new(),
                tickets: Vec::new(),
                stats: SandboxStats::default(),
                api_arrivals: std::collections::VecDeque::new(),
                upload_arrivals: std::collections::VecDeque::new(),
                byte_arrivals: std::collections::VecDeque::new(),
                bytes_in_window: 0,
                refused_projects: parts.refused_projects.into_iter().collect(),
                revoked: false,
            }),
        }
    }

    /// The lock. A handler that panicked mid-update cannot leave a half-linked ticket
    /// (links are written after every check), so a poisoned lock is still usable.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// True with probability `p` (0 never rolls the dice, so a seed's sequence is unchanged).
    pub fn roll(&self, p: f64) -> bool {
        p > 0.0 && self.lock().rng.random::<f64>() < p
    }

    /// An API request arrived now: counted toward the busiest second.
    pub fn arrived(&self) {
        let now = self.clock.now();
        let mut inner = self.lock();
        let in_window = count_in_last_second(&mut inner.api_arrivals, now);
        inner.stats.api_peak_per_second = inner.stats.api_peak_per_second.max(in_window);
    }

    /// An S3 PUT arrived now: counted toward the busiest second of uploads.
    pub fn upload_arrived(&self) {
        let now = self.clock.now();
        let mut inner = self.lock();
        let in_window = count_in_last_second(&mut inner.upload_arrivals, now);
        inner.stats.upload_peak_per_second = inner.stats.upload_peak_per_second.max(in_window);
    }

    /// `bytes` of an upload's body arrived now: counted toward the busiest second of bytes.
    pub fn bytes_arrived(&self, bytes: u64) {
        let now = self.clock.now();
        let window_start = now - Duration::from_secs(1);
        let mut inner = self.lock();
        while let Some(&(at, old)) = inner.byte_arrivals.front() {
            if at > window_start {
                break;
            }
            inner.byte_arrivals.pop_front();
            inner.bytes_in_window -= old;
        }
        inner.byte_arrivals.push_back((now, bytes));
        inner.bytes_in_window += bytes;
        inner.stats.upload_bytes_peak_per_second = inner
            .stats
            .upload_bytes_peak_per_second
            .max(inner.bytes_in_window);
    }

    pub fn record(&self, endpoint: String, status: u16) {
        let mut inner = self.lock();
        *inner
            .stats
            .requests
            .entry(endpoint)
            .or_default()
            .entry(status)
            .or_default() += 1;
    }

    /// The company a bearer token acts for, if it is known and not expired.
    pub fn company_for(&self, token: &str) -> Option<String> {
        let inner = self.lock();
        if inner.revoked {
            return None;
        }
        let grant = inner.tokens.get(token)?;
        match grant.expires_at {
            Some(at) if self.clock.now() >= at => None,
            _ => Some(grant.company.clone()),
        }
    }

    pub fn issue_token(&self, company: &str) -> String {
        let mut inner = self.lock();
        let token = format!("sbx_{}", Alphanumeric.sample_string(&mut inner.rng, 40));
        let grant = TokenGrant {
            company: company.to_string(),
            expires_at: Some(self.clock.now() + self.behaviour.token_ttl),
        };
        inner.tokens.insert(token.clone(), grant);
        token
    }

    pub fn tickets(&self) -> Vec<SandboxTicket> {
        self.lock().tickets.clone()
    }

    pub fn stats(&self) -> SandboxStats {
        self.lock().stats.clone()
    }

    pub fn objects(&self) -> Vec<SandboxObject> {
        let inner = self.lock();
        let mut objects: Vec<SandboxObject> = inner
            .uploads
            .iter()
            .filter(|(_, upload)| upload.stored)
            .map(|(key, upload)| SandboxObject {
                key: key.clone(),
                company: upload.company.clone(),
                size: upload.size,
                md5: upload.md5.clone(),
                ticket_id: upload.linked_to,
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects
    }

    pub fn object_path(&self, upload_id: &str) -> PathBuf {
        self.objects_dir.join(upload_id)
    }
}

impl Inner {
    pub fn random_id(&mut self) -> String {
        Alphanumeric
            .sample_string(&mut self.rng, 20)
            .to_ascii_lowercase()
    }

    pub fn random_uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    /// Checks every key, then links them all to a new ticket — or links nothing.
    pub fn create_ticket(
        &mut self,
        company: &str,
        mut ticket: SandboxTicket,
        keys: &[String],
    ) -> Result<SandboxTicket, (KeyRefusal, String)> {
        for (i, key) in keys.iter().enumerate() {
            let refusal = match self.uploads.get(key) {
                None => Some(KeyRefusal::NotFound),
                Some(upload) if !upload.stored => Some(KeyRefusal::NotFound),
                Some(upload) if upload.company != company => Some(KeyRefusal::OtherCompany),
                Some(upload) if upload.linked_to.is_some() => Some(KeyRefusal::AlreadyAssociated),
                Some(upload) if upload.quarantined => Some(KeyRefusal::Quarantined),
                // The same key twice in one request would link one file to the ticket twice.
                Some(_) if keys[..i].contains(key) => Some(KeyRefusal::AlreadyAssociated),
                Some(_) => None,
            };
            if let Some(refusal) = refusal {
                return Err((refusal, key.clone()));
            }
        }
        ticket.id = self.random_uuid();
        ticket.company = company.to_string();
        for key in keys {
            let upload = self
                .uploads
                .get_mut(key)
                .expect("every key was checked above under the same lock");
            upload.linked_to = Some(ticket.id);
            ticket.attachments.push(SandboxAttachment {
                key: key.clone(),
                filename: upload.filename.clone(),
                content_type: upload.content_type.clone(),
                size: upload.size,
                md5: upload.md5.clone(),
            });
        }
        self.tickets.push(ticket.clone());
        Ok(ticket)
    }
}

/// Adds an arrival at `now` and answers how many arrived within the second up to it.
fn count_in_last_second(
    arrivals: &mut std::collections::VecDeque<SystemTime>,
    now: SystemTime,
) -> u64 {
    let window_start = now - Duration::from_secs(1);
    while arrivals.front().is_some_and(|at| *at <= window_start) {
        arrivals.pop_front();
    }
    arrivals.push_back(now);
    arrivals.len() as u64
}
