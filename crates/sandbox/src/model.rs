//! What the sandbox's API serves and records, as its views (`/sandbox/*`) and accessors show
//! it: tickets with their contact and attachments, stored objects, and request counters.

use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A ticket's priority, as the vendor's API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Medium,
    High,
}

/// A ticket the sandbox created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxTicket {
    pub id: Uuid,
    pub company: String,
    pub project_id: Uuid,
    pub title: String,
    pub priority: Option<Priority>,
    pub address: Option<String>,
    pub contact: Option<SandboxContact>,
    pub attachments: Vec<SandboxAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxContact {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// One attachment linked to a ticket, as uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxAttachment {
    pub key: String,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    /// Base64 MD5 of the stored bytes (equal to the presigned checksum).
    pub md5: String,
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxObject {
    pub key: String,
    pub company: String,
    pub size: u64,
    /// Base64 MD5.
    pub md5: String,
    pub ticket_id: Option<Uuid>,
}

/// What the sandbox has served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStats {
    /// `"POST /api/core/v1/tickets"` → status → count. S3 PUTs count as `"PUT /s3"`.
    /// A dropped response is counted in `responses_dropped` only.
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
    /// `429`s served.
    pub rate_limited: u64,
    /// The most API requests (OAuth included, refused ones too) that arrived within any one
    /// second: what a rate limit counting every arrival would have seen at its worst.
    pub api_peak_per_second: u64,
    /// The most S3 PUTs that arrived within any one second (refused ones too).
    pub upload_peak_per_second: u64,
    /// The most upload body bytes that arrived within any one second.
    pub upload_bytes_peak_per_second: u64,
    /// Random API 5xx served.
    pub faults_injected: u64,
    /// Tickets created whose response was never sent.
    pub responses_dropped: u64,
    /// Random S3 5xx served.
    pub s3_faults: u64,
}

impl SandboxStats {
    /// How many requests to `endpoint` (e.g. `"PUT /s3"`) were answered with `status`.
    pub fn count(&self, endpoint: &str, status: u16) -> u64 {
        self.requests
            .get(endpoint)
            .and_then(|by_status| by_status.get(&status))
            .copied()
            .unwrap_or_default()
    }
}
