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
    let views = budget::view_all_at(db, now, &Tuning::default()).await?;
    Ok(views
        .into_iter()
        .map(|v| BudgetStatus {
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
