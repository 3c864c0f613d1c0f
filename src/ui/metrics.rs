//! `/metrics` in Prometheus text (OpenMetrics) format, read from the store at each scrape,
//! so every worker process sharing the database is counted, whichever one serves it.

use super::{AppState, UiError};
use crate::domain::{JobKind, JobState, TicketState};
use crate::store::status as stats;
use crate::store::{StoreError, dashboard};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: String,
}

/// What one scrape reports: the jobs of the importer's kinds (others sharing the queue are
/// left out).
pub struct Snapshot {
    pub jobs: Vec<(JobKind, JobState, i64)>,
    pub tickets: Vec<(TicketState, i64)>,
    pub requests: Vec<dashboard::RequestTotal>,
    pub last_created: Option<time::OffsetDateTime>,
    pub budget: Option<super::Budget>,
}

pub async fn metrics(State(state): State<AppState>) -> Result<Response, UiError> {
    let jobs = visibuild_queue::counts_by_state(&state.db, None)
        .await
        .map_err(StoreError::from)?
        .into_iter()
        .filter_map(|(kind, state, n)| Some((JobKind::parse(&kind)?, state, n)))
        .collect();
    let snapshot = Snapshot {
        jobs,
        tickets: stats::tickets_by_state(&state.db, None).await?,
        requests: dashboard::request_totals(&state.db).await?,
        last_created: dashboard::last_ticket_created_at(&state.db)
            .await?
            .map(|at| at.0),
        budget: state.config.budget,
    };
    let text = render(&snapshot).map_err(UiError::Metrics)?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// The exposition text of a snapshot. Every job kind and state and every ticket state is
/// there, zero or not, so that a missing series never means "nothing".
pub fn render(s: &Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("visibuild");

    let jobs = Family::<JobLabels, Gauge>::default();
    registry.register("jobs", "Queue jobs by kind and state", jobs.clone());
    for kind in JobKind::ALL {
        for state in JobState::ALL {
            let n = s
                .jobs
                .iter()
                .find(|(k, st, _)| k == kind && st == state)
                .map_or(0, |j| j.2);
            jobs.get_or_create(&JobLabels {
                kind: kind.to_string(),
                state: state.to_string(),
            })
            .set(n);
        }
    }

    let tickets = Family::<StateLabel, Gauge>::default();
    registry.register("tickets", "Manifest tickets by state", tickets.clone());
    for state in TicketState::ALL {
        let n = s
            .tickets
            .iter()
            .find(|(st, _)| st == state)
            .map_or(0, |t| t.1);
        tickets
            .get_or_create(&StateLabel {
                state: state.to_string(),
            })
            .set(n);
    }

    let requests = Family::<RequestLabels, Counter>::default();
    registry.register(
        "api_requests",
        "Requests to Visibuild and S3 by endpoint (presign, upload, create) and HTTP status (0: no answer), all workers",
        requests.clone(),
    );
    let rate_limited = Counter::<u64>::default();
    registry.register(
        "rate_limited",
        "Requests answered 429 Too Many Requests, all workers",
        rate_limited.clone(),
    );
    let bytes = Counter::<u64>::default();
    registry.register(
        "uploaded_bytes",
        "Bytes uploaded to S3 by successful PUTs, all workers",
        bytes.clone(),
    );
    for r in &s.requests {
        let n = u64::try_from(r.requests).unwrap_or(0);
        requests
            .get_or_create(&RequestLabels {
                endpoint: r.endpoint.clone(),
                status: r.status.to_string(),
            })
            .inc_by(n);
        if r.status == 429 {
            rate_limited.inc_by(n);
        }
        bytes.inc_by(u64::try_from(r.bytes).unwrap_or(0));
    }

    if let Some(budget) = s.budget {
        let rates = Family::<LimitLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "rate_budget_per_second",
            "The configured rate of this worker: api (presign and create, --api-rate) and upload (--upload-rate)",
            rates.clone(),
        );
        for (limit, value) in [
            ("api", budget.api_per_sec),
            ("upload", budget.upload_per_sec),
        ] {
            rates
                .get_or_create(&LimitLabel {
                    limit: limit.into(),
                })
                .set(value);
        }
    }

    if let Some(at) = s.last_created {
        let last = Gauge::<i64>::default();
        registry.register(
            "last_ticket_created_timestamp_seconds",
            "When the last ticket was created in Visibuild (unix seconds)",
            last.clone(),
        );
        last.set(at.unix_timestamp());
    }

    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_named_and_labelled_as_documented() {
        let text = render(&Snapshot {
            jobs: vec![(JobKind::Upload, JobState::Failed, 2)],
            tickets: vec![(TicketState::Created, 5)],
            requests: vec![
                dashboard::RequestTotal {
                    endpoint: "upload".into(),
                    status: 200,
                    requests: 7,
                    bytes: 7000,
                },
                dashboard::RequestTotal {
                    endpoint: "presign".into(),
                    status: 429,
                    requests: 3,
                    bytes: 0,
                },
            ],
            last_created: Some(time::macros::datetime!(2026-12-01 12:00 UTC)),
            budget: Some(super::super::Budget {
                api_per_sec: 10.0,
                upload_per_sec: 20.0,
            }),
        })
        .unwrap();
        for line in [
            r#"visibuild_jobs{kind="upload",state="failed"} 2"#,
            r#"visibuild_jobs{kind="create_ticket",state="running"} 0"#,
            r#"visibuild_tickets{state="created"} 5"#,
            r#"visibuild_tickets{state="needs_review"} 0"#,
            r#"visibuild_api_requests_total{endpoint="upload",status="200"} 7"#,
            r#"visibuild_api_requests_total{endpoint="presign",status="429"} 3"#,
            "visibuild_rate_limited_total 3",
            "visibuild_uploaded_bytes_total 7000",
            r#"visibuild_rate_budget_per_second{limit="api"} 10.0"#,
            r#"visibuild_rate_budget_per_second{limit="upload"} 20.0"#,
            "visibuild_last_ticket_created_timestamp_seconds 1796126400",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
