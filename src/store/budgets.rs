//! The store's shared rate budgets as people read them (`status`, the dashboard, `/metrics`):
//! what each hands out now, its ceiling, recent 429s and the processes sharing it.

use visibuild_queue::budget::{self, Tuning};

use super::{Store, StoreError};
use crate::domain::short_holder;

/// A budget as `status` and the dashboard show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BudgetStatus {
    /// `api` or `upload`.
    pub name: String,
    /// Calls per second the budget hands out now (the ceiling less the margin, or less
    /// after a 429, climbing back).
    pub rate_per_sec: f64,
    /// The lowest rate any live process sharing the budget was given.
    pub ceiling_per_sec: f64,
    /// The safety margin now, as a fraction of the ceiling (learned from 429s).
    pub margin: f64,
    /// Seconds every process still waits for a 429's `Retry-After`.
    pub paused_for_secs: f64,
    /// 429s reported in the last minute, by every process.
    pub rate_limited_last_minute: i64,
    /// The live processes sharing it.
    pub processes: Vec<BudgetMember>,
    /// What it learned of the server's limit (`--api-rate auto`), if it ever learned.
    pub learning: Option<Learning>,
}

/// A budget's learned limit and how it got there.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Learning {
    /// The API origin whose limit it is.
    pub origin: String,
    /// Whether a live process learns it now (`--api-rate auto`).
    pub active: bool,
    /// The learned limit now, in calls per second (the budget runs a margin below it).
    pub limit_per_sec: f64,
    /// `climbing` (no 429 yet: doubling while used to the full), `holding` (at what the
    /// last 429 taught) or `probing` (upwards again after a while with no 429).
    pub phase: &'static str,
    /// The rate handed out when the last 429 came.
    pub last_429_per_sec: Option<f64>,
    /// How long ago that was, in seconds.
    pub last_429_secs_ago: Option<f64>,
}

/// A process sharing a budget.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BudgetMember {
    /// `host pid N`.
    pub process: String,
    /// The rate it was given.
    pub ceiling_per_sec: f64,
}

/// The store's budgets now.
pub async fn status(db: &Store) -> Result<Vec<BudgetStatus>, StoreError> {
    let now = budget::store_now(db).await?;
    let tuning = Tuning::default();
    let views = budget::view_all_at(db, now, &tuning).await?;
    Ok(views
        .into_iter()
        .map(|v| BudgetStatus {
            learning: learning(&v, &tuning),
            rate_per_sec: v.rate_now,
            ceiling_per_sec: v.state.ceiling,
            margin: v.margin_now,
            paused_for_secs: (v.state.paused_until - v.now).max(0) as f64 / 1e6,
            rate_limited_last_minute: v.refusals_last_minute,
            processes: v
                .members
                .iter()
                .map(|m| BudgetMember {
                    process: short_holder(&m.member),
                    ceiling_per_sec: m.ceiling,
                })
                .collect(),
            name: v.name,
        })
        .collect())
}

fn learning(v: &budget::BudgetView, tuning: &Tuning) -> Option<Learning> {
    let phase = v.state.learn_phase_at(v.now, tuning)?;
    if v.origin.is_empty() {
        return None;
    }
    let mut learned = v.state;
    learned.learning = true;
    let refused = v.state.refused_rate > 0.0;
    Some(Learning {
        origin: v.origin.clone(),
        active: v.state.learning && !v.members.is_empty(),
        limit_per_sec: learned.limit_at(v.now, tuning),
        phase: phase.as_str(),
        last_429_per_sec: refused.then_some(v.state.refused_rate),
        last_429_secs_ago: refused.then(|| (v.now - v.state.refused_at).max(0) as f64 / 1e6),
    })
}

impl Learning {
    /// `learning 36.8/s for ORIGIN (holding; last 429 at 37.9/s, 12s ago)`.
    pub fn describe(&self) -> String {
        let l = self;
        let how = match (l.last_429_per_sec, l.last_429_secs_ago) {
            (Some(rate), Some(ago)) => format!(
                "{}; last 429 at {}, {} ago",
                l.phase,
                crate::human::rate(rate),
                crate::human::duration_secs(ago.round() as u64)
            ),
            _ => format!("{}; no 429 yet", l.phase),
        };
        let learned = if l.active { "learning" } else { "learned" };
        format!(
            "{learned} {} for {} ({how})",
            crate::human::rate(l.limit_per_sec),
            l.origin
        )
    }
}
