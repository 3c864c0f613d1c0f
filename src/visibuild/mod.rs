//! The Visibuild client: presign an attachment, PUT it to S3 with exactly the returned
//! headers, create a ticket; every failure classified by what to do next ([`ApiError`]).

pub mod auth;
pub mod error;

use crate::domain::{Priority, ProjectId};
use crate::outage::{Down, Outages};
use crate::rate::{RateGate, Turn};
use crate::secret::{PresignedUrl, Secret};
pub use auth::{Credentials, TokenSource};
pub use error::ApiError;
use error::{
    ServerError, classify_ticket_422, parse_retry_after, readable, s3_error_code, snippet,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bytes read from disk per chunk when streaming an upload.
pub const UPLOAD_CHUNK: usize = 256 * 1024;

/// How long a call may wait for an answer (an API call for its response, an upload for its
/// next chunk to be taken or, once sent, for S3's response) before the service counts as
/// not answering: an outage, not a failure.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The Visibuild regions and their origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Region {
    Au,
    Eu,
    Us,
}

impl Region {
    pub fn origin(self) -> &'static str {
        match self {
            Region::Au => "https://app.visibuild.com.au",
            Region::Eu => "https://app.visibuild.co.uk",
            Region::Us => "https://app.us.visibuild.com",
        }
    }
}

/// Everything the client needs, injected (so tests point it at a sandbox on port 0).
pub struct ClientConfig {
    /// The origin only, e.g. `https://app.visibuild.com.au`.
    pub api_url: String,
    pub credentials: Credentials,
    pub api_gate: Arc<RateGate>,
    pub upload_gate: Arc<RateGate>,
    /// Upload bytes (`--bwlimit`), in [`crate::bandwidth::UNIT`]s; `None`: unlimited.
    pub bytes_gate: Option<Arc<RateGate>>,
    /// Per-request timeout for API calls (uploads get no overall timeout, only a stall one).
    pub timeout: Duration,
    /// How long a call waits for an answer (or an upload for progress): [`ANSWER_TIMEOUT`].
    pub answer_timeout: Duration,
    /// Where the client notes that Visibuild's API or S3 is down, shared with the pool.
    pub outages: Arc<Outages>,
}

/// Request counters, for the summary and (flushed per minute to the store) the dashboard.
#[derive(Debug, Default)]
pub struct Counters {
    pub presigns: AtomicU64,
    pub uploads: AtomicU64,
    pub creates: AtomicU64,
    pub rate_limited: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    /// Answers by endpoint and HTTP status (0: no answer), with the bytes uploaded.
    answers: std::sync::Mutex<BTreeMap<(Endpoint, u16), Answered>>,
}

/// What a counted request was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `POST /api/core/v1/attachments`.
    Presign,
    /// The `PUT` to S3.
    Upload,
    /// `POST /api/core/v1/tickets`.
    Create,
    /// The check that the origin serves the API, and the probe while it does not answer.
    Probe,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Presign => "presign",
            Endpoint::Upload => "upload",
            Endpoint::Create => "create",
            Endpoint::Probe => "probe",
        }
    }
}

/// Requests that got one answer, and the bytes they carried (successful uploads only).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub requests: u64,
    pub bytes: u64,
}

impl Counters {
    /// Count a request to `endpoint` that got `status` (0: no answer came).
    pub fn answered(&self, endpoint: Endpoint, status: u16, bytes: u64) {
        let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let entry = answers.entry((endpoint, status)).or_default();
        entry.requests += 1;
        entry.bytes += bytes;
    }

    /// Every request counted so far, by endpoint and status; totals since the client began.
    pub fn answers(&self) -> BTreeMap<(Endpoint, u16), Answered> {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What to presign.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresignRequest {
    pub filename: String,
    pub content_type: String,
    pub file_size: u64,
    pub checksum: String,
}

/// A presigned upload: the key to reference, and where and how to PUT the bytes.
#[derive(Debug, Clone)]
pub struct Upload {
    pub key: String,
    pub url: PresignedUrl,
    pub headers: Vec<(String, String)>,
}

/// A ticket to create.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTicket {
    pub title: String,
    pub project_id: ProjectId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachment_keys: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<Contact>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Contact {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Deserialize)]
struct PresignResponse {
    data: PresignData,
}
#[derive(Deserialize)]
struct PresignData {
    upload: UploadBody,
}
#[derive(Deserialize)]
struct UploadBody {
    key: String,
    url: String,
    #[serde(default)]
    headers: serde_json::Map<String, serde_json::Value>,
}

/// What an upload sends: an open file (streamed from its start), or bytes kept in the
/// queue (a receipt).
#[derive(Debug)]
pub enum Body {
    File(std::fs::File),
    Bytes(bytes::Bytes),
}

/// A turn at the API rate gate (waited for) with a valid token, from [`Client::create_turn`].
pub struct CreateTurn {
    token: Secret,
    turn: Turn,
    /// When the caller got it, to learn how long its note takes.
    granted: tokio::time::Instant,
}

/// The longest a create wakes before its turn to write its note: a process killed in that
/// stretch has noted a create that never left, which asks for a check.
const MAX_NOTE_LEAD: Duration = Duration::from_millis(5);

/// The Visibuild API and its S3 uploads.
pub struct Client {
    http: reqwest::Client,
    uploads: reqwest::Client,
    api_url: String,
    tokens: TokenSource,
    api_gate: Arc<RateGate>,
    upload_gate: Arc<RateGate>,
    bytes_gate: Option<Arc<RateGate>>,
    pub counters: Counters,
    answer_timeout: Duration,
    /// Where a call that got no connection or no answer notes its service down, and an
    /// answer notes it up again.
    outages: Arc<Outages>,
    /// How long a create's note takes, from its turn to its request leaving (a running
    /// mean, in microseconds): a create wakes this much before its turn, so that it
    /// leaves on time.
    note_lead: AtomicU64,
}

/// Makes ring the process's rustls crypto provider (reqwest is built without one, so that
/// the tree holds one provider, the one sqlx uses). Idempotent; every `Client` calls it, and
/// so must code that builds its own `reqwest::Client` (tests, benches).
pub fn use_ring_for_tls() {
    // An error only says a provider is already installed: whichever it is, TLS works.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, reqwest::Error> {
        use_ring_for_tls();
        let api_url = config.api_url.trim_end_matches('/').to_string();
        // An answer that does not start within the answer timeout is no answer (a read that
        // waits that long); one that starts but never ends is cut by the overall timeout.
        let http = reqwest::Client::builder()
            .timeout(config.timeout.max(config.answer_timeout))
            .read_timeout(config.answer_timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("visibuild-import/", env!("CARGO_PKG_VERSION")))
            .build()?;
        // Uploads have no overall timeout: a large file is judged by its progress.
        let uploads = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(config.answer_timeout)
            .user_agent(concat!("visibuild-import/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            tokens: TokenSource::new(config.credentials, format!("{api_url}/oauth/token")),
            http,
            uploads,
            api_url,
            api_gate: config.api_gate,
            upload_gate: config.upload_gate,
            bytes_gate: config.bytes_gate,
            counters: Counters::default(),
            answer_timeout: config.answer_timeout,
            outages: config.outages,
            note_lead: AtomicU64::new(0),
        })
    }

    /// The outages this client notes (shared with the pool that reads them).
    pub fn outages(&self) -> &Arc<Outages> {
        &self.outages
    }

    /// The gate of Visibuild API calls (presigns, creates, token fetches).
    /// The API's origin, as calls are made to it.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    pub fn api_gate(&self) -> &RateGate {
        &self.api_gate
    }

    /// The gate of upload bytes (`--bwlimit`), if there is a limit.
    pub fn bytes_gate(&self) -> Option<&RateGate> {
        self.bytes_gate.as_deref()
    }

    /// The gate of S3 uploads.
    pub fn upload_gate(&self) -> &RateGate {
        &self.upload_gate
    }

    /// `POST /api/core/v1/attachments`: a presigned URL for one file.
    pub async fn presign(&self, request: &PresignRequest) -> Result<Upload, ApiError> {
        self.counters.presigns.fetch_add(1, Ordering::Relaxed);
        let (status, body) = self
            .api_post(
                (Endpoint::Presign, "/api/core/v1/attachments"),
                request,
                false,
                None,
            )
            .await?;
        if !status.is_success() {
            return Err(api_failure(status, &body));
        }
        let parsed: PresignResponse =
            serde_json::from_str(&body).map_err(|e| ApiError::Permanent {
                status: status.as_u16(),
                reason: format!("presign answer not understood: {e}"),
            })?;
        let u = parsed.data.upload;
        let headers = u
            .headers
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
            .collect();
        Ok(Upload {
            key: u.key,
            url: PresignedUrl::new(u.url),
            headers,
        })
    }

    /// A turn of the upload rate, reserved *before* presigning (so that a URL is used the
    /// moment it is made: a throttled upload never sits on a URL that expires while it
    /// waits) and waited for with [`put_file`](Self::put_file), just before the PUT leaves:
    /// a presign that took long does not send its PUT late into the next uploads' slots (a
    /// slot that passed meanwhile is exchanged for a fresh one), so the PUTs of every process
    /// never exceed the upload rate in any second.
    pub async fn upload_turn(&self) -> crate::rate::Turn {
        self.upload_gate.reserve().await
    }

    /// `PUT` the file to the presigned URL: streamed, with exactly the returned headers and
    /// an explicit `Content-Length` (S3 refuses chunked bodies), from the open handle the
    /// file was hashed from (so what goes up is what was hashed), once `turn` (an
    /// [`upload_turn`](Self::upload_turn) taken before presigning) has come.
    pub async fn put_file(
        &self,
        upload: &Upload,
        body: Body,
        size: u64,
        turn: crate::rate::Turn,
    ) -> Result<(), ApiError> {
        use std::io::Seek as _;
        let turn = self.upload_gate.wait(turn).await;
        self.upload_gate.depart(turn).await;
        self.counters.uploads.fetch_add(1, Ordering::Relaxed);
        // Chunks taken by the connection so far: an upload is judged by its progress.
        let progress = Arc::new(AtomicU64::new(0));
        let body = match body {
            Body::File(mut file) => {
                // The handle the bytes were hashed from, read again from its start.
                file.seek(std::io::SeekFrom::Start(0))
                    .map_err(|e| ApiError::Permanent {
                        status: 0,
                        reason: format!("cannot read the file to upload: {e}"),
                    })?;
                let file = tokio::fs::File::from_std(file);
                let progress = progress.clone();
                let counted = move |_: &_| {
                    progress.fetch_add(1, Ordering::Relaxed);
                };
                match &self.bytes_gate {
                    // Read in units, each let through when the byte budget allows.
                    Some(gate) => {
                        let unit = crate::bandwidth::UNIT as usize;
                        let stream = tokio_util::io::ReaderStream::with_capacity(file, unit);
                        let paced = crate::bandwidth::paced(stream, gate.clone());
                        reqwest::Body::wrap_stream(futures_util::StreamExt::inspect(paced, counted))
                    }
                    None => {
                        let stream =
                            tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_CHUNK);
                        reqwest::Body::wrap_stream(futures_util::StreamExt::inspect(
                            stream, counted,
                        ))
                    }
                }
            }
            Body::Bytes(bytes) => {
                if let Some(gate) = &self.bytes_gate {
                    crate::bandwidth::take(gate, bytes.len() as u64).await;
                }
                reqwest::Body::from(bytes)
            }
        };
        let mut request = self
            .uploads
            .put(upload.url.expose())
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body);
        for (name, value) in &upload.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let sent = self.watch_progress(request.send(), &progress).await;
        let response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                self.counters.answered(Endpoint::Upload, 0, 0);
                let service = service_or_descriptors(Down::Uploads, &e);
                let error =
                    transport_failure(&format!("upload to {} failed", upload.url), e, false);
                self.note(service, Some(&error));
                return Err(error);
            }
            Err(stalled) => {
                self.counters.answered(Endpoint::Upload, 0, 0);
                let error = ApiError::NoAnswer {
                    reason: format!("upload to {}: {stalled}", upload.url.redacted()),
                };
                self.note(Down::Uploads, Some(&error));
                return Err(error);
            }
        };
        self.note(Down::Uploads, None);
        let status = response.status();
        let sent = if status.is_success() { size } else { 0 };
        self.counters
            .answered(Endpoint::Upload, status.as_u16(), sent);
        if status.is_success() {
            self.counters
                .bytes_uploaded
                .fetch_add(size, Ordering::Relaxed);
            return Ok(());
        }
        let retry_after = retry_after_of(&response);
        let body = response.text().await.unwrap_or_default();
        let code = s3_error_code(&body).unwrap_or("").to_string();
        let reason = format!("{} {}", upload.url.redacted(), snippet_xml_message(&body));
        Err(match (status.as_u16(), code.as_str()) {
            (403, _) => ApiError::UploadUrlRejected {
                status: 403,
                code,
                reason,
            },
            (
                400,
                "BadDigest" | "InvalidDigest" | "IncompleteBody" | "EntityTooSmall"
                | "EntityTooLarge",
            ) => ApiError::UploadContentMismatch {
                status: 400,
                code,
                reason,
            },
            (429, _) => {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                let delay = retry_after.unwrap_or(Duration::from_secs(1));
                self.upload_gate.pause(delay).await;
                ApiError::RateLimited {
                    retry_after: Some(delay),
                }
            }
            (s, _) if s >= 500 || code == "SlowDown" || code == "RequestTimeout" => {
                ApiError::Transient {
                    reason: format!("S3 answered {status} {code}"),
                    retry_after,
                }
            }
            (s, _) => ApiError::Permanent {
                status: s,
                reason: format!("S3 answered {status} {code}: {reason}"),
            },
        })
    }

    /// `POST /api/core/v1/tickets`. A request that left without an answer is
    /// [`ApiError::OutcomeUnknown`]: the ticket may exist.
    pub async fn create_ticket(&self, ticket: &NewTicket) -> Result<Option<String>, ApiError> {
        self.create_ticket_inner(ticket, None).await
    }

    /// A valid token and an API turn granted: everything a create waits for before its
    /// request leaves. A caller that must durably note "a create is about to leave" takes
    /// the turn first, notes, then calls [`create_ticket_in_turn`](Self::create_ticket_in_turn),
    /// which sends when the turn comes: a process killed while it waits for the rate
    /// (however low) has noted nothing, so a create that never left is never taken for one
    /// that may have landed. The turn is granted the note's usual time early (at most
    /// [`MAX_NOTE_LEAD`]), so that the request still leaves on it.
    pub async fn create_turn(&self) -> Result<CreateTurn, ApiError> {
        let lead = Duration::from_micros(self.note_lead.load(Ordering::Relaxed));
        let (token, turn) = self.token_and_turn(lead.min(MAX_NOTE_LEAD)).await?;
        Ok(CreateTurn {
            token,
            turn,
            granted: tokio::time::Instant::now(),
        })
    }

    /// Learns how long the note between a create's turn and its request took.
    fn noted(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mean = self.note_lead.load(Ordering::Relaxed);
        let mean = if mean == 0 {
            took
        } else {
            (mean * 7 + took) / 8
        };
        self.note_lead.store(mean, Ordering::Relaxed);
    }

    /// A token, then an API turn. In that order: fetching a token is itself an API call that
    /// takes a turn, and the call must not follow it without one of its own. A token that
    /// came due for refresh while we waited for the turn (a short-lived OAuth token, a long
    /// 429 pause) is not sent: the turn is spent and both are taken again.
    /// The turn is waited for (up to `lead` before it), not yet departed on (see
    /// [`RateGate::depart`]).
    async fn token_and_turn(&self, lead: Duration) -> Result<(Secret, Turn), ApiError> {
        loop {
            let token = self.token().await?;
            let turn = self.api_gate.reserve().await;
            let turn = self.api_gate.wait_ahead(turn, lead).await;
            if self.tokens.is_current(&token).await {
                return Ok((token, turn));
            }
        }
    }

    /// [`create_ticket`](Self::create_ticket) on a turn already taken: the request leaves at once.
    pub async fn create_ticket_in_turn(
        &self,
        ticket: &NewTicket,
        turn: CreateTurn,
    ) -> Result<Option<String>, ApiError> {
        self.create_ticket_inner(ticket, Some(turn)).await
    }

    async fn create_ticket_inner(
        &self,
        ticket: &NewTicket,
        turn: Option<CreateTurn>,
    ) -> Result<Option<String>, ApiError> {
        self.counters.creates.fetch_add(1, Ordering::Relaxed);
        let (status, body) = self
            .api_post(
                (Endpoint::Create, "/api/core/v1/tickets"),
                ticket,
                true,
                turn,
            )
            .await?;
        if status.is_success() {
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let id = ["/data/ticket/id", "/data/id", "/id"]
                .iter()
                .find_map(|p| value.pointer(p))
                .map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            return Ok(id);
        }
        if status.as_u16() == 422
            && let Some(err) = classify_ticket_422(&body, &ticket.attachment_keys)
        {
            return Err(err);
        }
        Err(api_failure(status, &body))
    }

    /// POST JSON with the bearer token, through the API rate gate (unless the first try's
    /// `turn` was taken already). A 401 gets one retry with a fresh token where the
    /// credentials allow it.
    async fn api_post<T: Serialize>(
        &self,
        (endpoint, path): (Endpoint, &str),
        body: &T,
        outcome_matters: bool,
        mut turn: Option<CreateTurn>,
    ) -> Result<(reqwest::StatusCode, String), ApiError> {
        let url = format!("{}{}", self.api_url, path);
        let mut refreshed = false;
        loop {
            let (token, waited) = match turn.take() {
                // Granted before the caller's note: the request leaves now.
                Some(turn) => {
                    self.noted(turn.granted.elapsed());
                    if self.tokens.is_current(&turn.token).await {
                        (turn.token, turn.turn)
                    } else {
                        // Came due for refresh meanwhile (a short-lived token): a fresh
                        // one, and a turn after it.
                        self.token_and_turn(Duration::ZERO).await?
                    }
                }
                None => self.token_and_turn(Duration::ZERO).await?,
            };
            // Last before the request: a turn that passed meanwhile (a slow note) is not
            // used late, where it would land on the next call's heels.
            self.api_gate.depart(waited).await;
            let sent_at = tokio::time::Instant::now();
            let sent = self
                .http
                .post(&url)
                .bearer_auth(token.expose())
                .json(body)
                .send()
                .await;
            if sent.is_ok() {
                self.api_gate.answered(sent_at, tokio::time::Instant::now());
            }
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.counters.answered(endpoint, 0, 0);
                    let service = service_or_descriptors(Down::Api, &e);
                    let error = transport_failure(path, e, outcome_matters);
                    self.note(service, Some(&error));
                    return Err(error);
                }
            };
            self.note(Down::Api, None);
            let status = response.status();
            self.counters.answered(endpoint, status.as_u16(), 0);
            let retry_after = retry_after_of(&response);
            // A 2xx whose body was cut off still says it worked (the id is then unknown).
            let text = response.text().await.unwrap_or_default();
            match status.as_u16() {
                401 if !refreshed && self.tokens.can_refresh() => {
                    self.tokens.invalidate(&token).await;
                    refreshed = true;
                }
                401 => {
                    return Err(ApiError::Unauthorized {
                        reason: format!("{path}: {}", readable(&text)),
                    });
                }
                429 => {
                    self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let delay = retry_after.unwrap_or(Duration::from_secs(1));
                    self.api_gate.pause_sent(delay, sent_at).await;
                    return Err(ApiError::RateLimited {
                        retry_after: Some(delay),
                    });
                }
                // A 500, or a gateway's 502/504 or a 408, may come after the server acted:
                // where the outcome matters (ticket create) it is unknown. A 503 says the
                // request was not taken in.
                500 | 502 | 504 | 408 if outcome_matters => {
                    return Err(ApiError::OutcomeUnknown {
                        reason: format!("{path} answered {status}"),
                    });
                }
                s if s >= 500 || s == 408 => {
                    return Err(ApiError::Transient {
                        reason: format!("{path} answered {status}"),
                        retry_after,
                    });
                }
                _ => return Ok((status, text)),
            }
        }
    }

    /// Fetch a token now (client credentials), so refused credentials stop a run before
    /// any work is claimed. A long-lived token is only checked by its first call.
    pub async fn authenticate(&self) -> Result<(), ApiError> {
        self.token().await?;
        // A token fetched (or one we hold) after a failed try: the API is back.
        self.note(Down::Api, None);
        Ok(())
    }

    async fn token(&self) -> Result<Secret, ApiError> {
        let token = self.tokens.token(&self.http, &self.api_gate).await;
        // A token fetch that could not connect is an outage; a cached token says nothing
        // about whether Visibuild answers.
        if let Err(e @ ApiError::Unreachable { .. }) = &token {
            self.note(Down::Api, Some(e));
        }
        token
    }

    /// Ask the API whether it is there, with a request that changes nothing: a presign
    /// with an empty body, which Visibuild refuses as invalid (400/422). Any answer but a
    /// 404 says the origin serves the API (and ends an API outage); a 404 says it does not.
    /// Takes an API turn like any call.
    pub async fn probe_api(&self) -> Result<Probe, ApiError> {
        let answer = self
            .api_post(
                (Endpoint::Probe, "/api/core/v1/attachments"),
                &serde_json::json!({}),
                false,
                None,
            )
            .await;
        let status = match answer {
            Ok((status, _)) => status,
            // A 5xx or a 429 is an answer too: the API is there.
            Err(ApiError::Transient { .. } | ApiError::RateLimited { .. }) => {
                return Ok(Probe::Answered);
            }
            Err(e) => return Err(e),
        };
        Ok(if status.as_u16() == 404 {
            Probe::NotServed
        } else {
            Probe::Answered
        })
    }

    /// Wait for `send` while the upload makes progress: no chunk taken by the connection for
    /// the answer timeout (or, once all is sent, no answer for as long) stops it.
    async fn watch_progress<F: std::future::Future>(
        &self,
        send: F,
        progress: &AtomicU64,
    ) -> Result<F::Output, String> {
        tokio::pin!(send);
        let mut seen = progress.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                out = &mut send => return Ok(out),
                _ = tokio::time::sleep(self.answer_timeout) => {
                    let now = progress.load(Ordering::Relaxed);
                    if now == seen {
                        return Err(format!(
                            "no progress for {}s (S3 took no bytes and gave no answer)",
                            self.answer_timeout.as_secs()
                        ));
                    }
                    seen = now;
                }
            }
        }
    }

    /// Note how a call to `service` ended: no connection or no answer starts (or continues)
    /// its outage, any answer ends it.
    fn note(&self, service: Down, error: Option<&ApiError>) {
        match error {
            Some(e @ (ApiError::Unreachable { .. } | ApiError::NoAnswer { .. })) => {
                self.outages.begin(service, e.to_string())
            }
            _ => {
                self.outages.end(service);
            }
        }
    }
}

/// What [`Client::probe_api`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The API answered (any status but 404).
    Answered,
    /// 404 on the API's own path: this origin does not serve the Visibuild API.
    NotServed,
}

/// Visibuild's origin from what the operator gave: `http(s)://host[:port]`, a trailing `/`
/// allowed, nothing else (the program appends `/api/core/v1/...` and `/oauth/token`).
pub fn parse_origin(text: &str) -> Result<String, String> {
    let hint = "give the origin only, e.g. https://app.visibuild.com.au (the program appends /api/core/v1/... itself), or use --region";
    let url = url::Url::parse(text.trim())
        .map_err(|e| format!("--api-url {text:?} is not a URL ({e}): {hint}"))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(format!(
            "--api-url {text:?} is not an http(s) origin: {hint}"
        ));
    }
    if url.path() != "/" {
        return Err(format!(
            "--api-url {text:?} has a path ({}): {hint}",
            url.path()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "--api-url {text:?} has a query or fragment: {hint}"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "--api-url must not carry credentials; set VISIBUILD_TOKEN or VISIBUILD_CLIENT_ID/VISIBUILD_CLIENT_SECRET: {hint}"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// The service a failed request counts against: `service`, unless the process ran out of
/// file descriptors (then no service is to blame).
fn service_or_descriptors(service: Down, e: &reqwest::Error) -> Down {
    if crate::outage::chain_is_out_of_descriptors(e) {
        Down::Descriptors
    } else {
        service
    }
}

/// A non-2xx API answer that is not a 401, 429 or 5xx: the server's own words when it
/// sent a JSON error, else a snippet of the body.
fn api_failure(status: reqwest::StatusCode, body: &str) -> ApiError {
    match ServerError::parse(body) {
        Some(error) => ApiError::Refused {
            status: status.as_u16(),
            error,
        },
        None => ApiError::Permanent {
            status: status.as_u16(),
            reason: snippet(body),
        },
    }
}

/// A request that failed in transport. No connection: Visibuild is unreachable, nothing was
/// sent. A request that could not even be built was never sent either: a permanent error,
/// never "outcome unknown". When the request may have reached the server and its outcome
/// matters (ticket create), the outcome is unknown; otherwise it is transient.
pub(crate) fn transport_failure(path: &str, e: reqwest::Error, outcome_matters: bool) -> ApiError {
    let (connect, builder, timeout) = (e.is_connect(), e.is_builder(), e.is_timeout());
    let reason = format!("{path}: {}", describe_reqwest(e));
    if connect {
        return ApiError::Unreachable { reason };
    }
    if timeout {
        // Sent (for all we know) and not answered: an outage of the service; where the
        // outcome matters the caller keeps the request's "may have landed" mark.
        return ApiError::NoAnswer { reason };
    }
    if builder {
        return ApiError::Permanent {
            status: 0,
            reason: format!("the request could not be built: {reason}"),
        };
    }
    if outcome_matters {
        ApiError::OutcomeUnknown { reason }
    } else {
        ApiError::Transient {
            reason,
            retry_after: None,
        }
    }
}

/// A reqwest error with its cause chain, without the URL (which may carry a signature).
/// A cause whose text the previous one already says is left out.
fn describe_reqwest(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut last = text.clone();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let next = s.to_string();
        if !last.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        last = next;
        source = s.source();
    }
    text
}

pub(crate) fn retry_after_of(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()
        .and_then(parse_retry_after)
}

/// The `<Message>` of an S3 XML error, or a snippet of the body.
fn snippet_xml_message(body: &str) -> String {
    let start = body.find("<Message>").map(|i| i + "<Message>".len());
    let end = body.find("</Message>");
    match (start, end) {
        (Some(s), Some(e)) if e > s => body[s..e].to_string(),
        _ => snippet(body),
    }
}
