//! `/metrics` in Prometheus text (OpenMetrics) format, read from the store at each scrape,
//! so every worker process sharing the database is counted, whichever one serves it.

use super::{AppState, UiError};
use crate::domain::{JobKind, JobState, TicketState};
use crate::store::budgets::{self, BudgetStatus};
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
    /// The store's shared rate budgets.
    pub budgets: Vec<BudgetStatus>,
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
        budgets: budgets::status(&state.db).await?,
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

    let gauge_family = |registry: &mut Registry, name: &str, help: &str| {
        let family = Family::<LimitLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(name, help, family.clone());
        family
    };
    let ceilings = gauge_family(
        &mut registry,
        "rate_budget_per_second",
        "The rate a shared budget may not exceed: the lowest any live process sharing the store was given (api: presign, create, token; upload: S3 PUTs)",
    );
    let current = gauge_family(
        &mut registry,
        "rate_budget_current_per_second",
        "What the shared budget hands out now: the ceiling less a learned margin, less after a 429, climbing back",
    );
    let processes = Family::<LimitLabel, Gauge>::default();
    registry.register(
        "rate_budget_processes",
        "Live worker processes sharing the budget",
        processes.clone(),
    );
    let refused = Family::<LimitLabel, Gauge>::default();
    registry.register(
        "rate_budget_rate_limited_last_minute",
        "429s any process sharing the budget was answered in the last minute",
        refused.clone(),
    );
    let learned = gauge_family(
        &mut registry,
        "rate_budget_learned_per_second",
        "The server's limit a budget learned (--api-rate auto): it runs a margin below it; climbing while no 429 comes, set by one",
    );
    let last_refused = gauge_family(
        &mut registry,
        "rate_budget_last_429_per_second",
        "The rate a learning budget handed out when the last 429 came (what taught it its limit)",
    );
    let last_refused_age = gauge_family(
        &mut registry,
        "rate_budget_last_429_age_seconds",
        "How long ago that 429 came",
    );
    for b in &s.budgets {
        let label = LimitLabel {
            limit: b.name.clone(),
        };
        if let Some(l) = &b.learning {
            learned.get_or_create(&label).set(l.limit_per_sec);
            if let (Some(rate), Some(ago)) = (l.last_429_per_sec, l.last_429_secs_ago) {
                last_refused.get_or_create(&label).set(rate);
                last_refused_age.get_or_create(&label).set(ago);
            }
        }
        ceilings.get_or_create(&label).set(b.ceiling_per_sec);
        current.get_or_create(&label).set(b.rate_per_sec);
        processes
            .get_or_create(&label)
            .set(i64::try_from(b.processes.len()).unwrap_or(i64::MAX));
        refused
            .get_or_create(&label)
            .set(b.rate_limited_last_minute);
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
    use crate::store::budgets::BudgetMember;

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
            budgets: vec![BudgetStatus {
                name: "api".into(),
                rate_per_sec: 9.7,
                ceiling_per_sec: 10.0,
                margin: 0.03,
                paused_for_secs: 0.0,
                rate_limited_last_minute: 1,
                processes: vec![BudgetMember {
                    process: "worker-1 pid 7".into(),
                    ceiling_per_sec: 10.0,
                }],
                learning: Some(crate::store::budgets::Learning {
                    origin: "https://app.visibuild.com.au".into(),
                    active: true,
                    limit_per_sec: 36.5,
                    phase: "holding",
                    last_429_per_sec: Some(37.5),
                    last_429_secs_ago: Some(12.0),
                }),
            }],
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
            r#"visibuild_rate_budget_current_per_second{limit="api"} 9.7"#,
            r#"visibuild_rate_budget_processes{limit="api"} 1"#,
            r#"visibuild_rate_budget_rate_limited_last_minute{limit="api"} 1"#,
            r#"visibuild_rate_budget_learned_per_second{limit="api"} 36.5"#,
            r#"visibuild_rate_budget_last_429_per_second{limit="api"} 37.5"#,
            r#"visibuild_rate_budget_last_429_age_seconds{limit="api"} 12.0"#,
            "visibuild_last_ticket_created_timestamp_seconds 1796126400",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
