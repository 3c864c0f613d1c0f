//! A worker process's share of the store's rate budgets (API calls; S3 uploads): joined
//! before its first call, checked in every few seconds, left when it stops.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use visibuild_queue::budget::{Member, Tuning};
use visibuild_queue::{Budget, BudgetSettings, Joined};

use crate::bandwidth::ByteRate;
use crate::pipeline::identity;
use crate::rate::{ApiRate, Rate};
use crate::store::{self, Store};
use crate::visibuild::Client;

/// The budget of Visibuild API calls (presigns, ticket creates, token fetches).
pub const API: &str = "api";
/// The budget of S3 uploads.
pub const UPLOAD: &str = "upload";
/// The budget of upload bytes (`--bwlimit`), in [`crate::bandwidth::UNIT`]s per second.
pub const UPLOAD_BYTES: &str = "upload-bytes";

/// How often a process renews its membership and reads who else shares its budgets.
const CHECK_IN_EVERY: Duration = Duration::from_secs(5);

/// This process's budgets; [`leave`](Self::leave) them when the run ends.
pub struct SharedBudgets {
    budgets: Vec<Arc<Budget>>,
    stop: CancellationToken,
    checking_in: tokio::task::JoinHandle<()>,
}

/// Joins the API and upload budgets of `db` (and, with `--bwlimit`, the upload bytes one)
/// with this process's rates and hands them to `client`'s gates. Processes given other
/// rates are named in a warning: the lowest wins. With `--api-rate auto` the API budget
/// learns the limit of `client`'s origin (up to the cap, if one was given).
pub async fn share(
    db: &Store,
    client: &Client,
    (api_rate, upload_rate): (ApiRate, Rate),
    bwlimit: Option<ByteRate>,
    member: &str,
) -> Result<SharedBudgets, visibuild_queue::Error> {
    let mut budgets = Vec::new();
    let mut seen = Vec::new();
    let learn_api = api_rate.is_auto().then(|| client.api_url().to_string());
    let mut shares = vec![
        ((API, api_rate.ceiling(), learn_api), client.api_gate()),
        ((UPLOAD, upload_rate, None), client.upload_gate()),
    ];
    if let (Some(limit), Some(gate)) = (bwlimit, client.bytes_gate()) {
        shares.push(((UPLOAD_BYTES, limit.units(), None), gate));
    }
    for ((name, rate, learn), gate) in shares {
        let settings = BudgetSettings {
            name: name.to_string(),
            member: member.to_string(),
            ceiling: rate.per_sec_f64(),
            tuning: Tuning::default(),
        };
        let (budget, joined) = Budget::join_learning(db.clone(), settings, learn).await?;
        let joined = forget_the_dead(&budget, joined).await;
        warn_of_disagreement(&budget, &joined);
        seen.push(disagreement_key(&budget, &joined));
        let budget = Arc::new(budget);
        gate.share(budget.clone());
        budgets.push(budget);
    }
    let stop = CancellationToken::new();
    let checking_in = tokio::spawn(check_in(budgets.clone(), seen, stop.clone()));
    Ok(SharedBudgets {
        budgets,
        stop,
        checking_in,
    })
}

impl SharedBudgets {
    /// Stops checking in and leaves every budget, so the others' ceiling no longer counts
    /// this process's rate. (A process that dies leaves by silence.)
    pub async fn leave(self) {
        self.stop.cancel();
        let _ = self.checking_in.await;
        for budget in &self.budgets {
            if let Err(e) = budget.leave().await {
                tracing::debug!(budget = %budget.settings().name, error = %e,
                    "could not leave the shared rate budget; it forgets us shortly");
            }
        }
    }
}

async fn check_in(
    budgets: Vec<Arc<Budget>>,
    mut seen: Vec<Vec<(String, u64)>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(CHECK_IN_EVERY) => {}
        }
        for (budget, seen) in budgets.iter().zip(seen.iter_mut()) {
            match budget.check_in().await {
                Ok(joined) => {
                    let joined = forget_the_dead(budget, joined).await;
                    // Warn again only when the set of disagreeing processes changes.
                    let key = disagreement_key(budget, &joined);
                    if *seen != key {
                        warn_of_disagreement(budget, &joined);
                        *seen = key;
                    }
                }
                Err(e) => tracing::debug!(budget = %budget.settings().name, error = %e,
                    "cannot check in with the shared rate budget; trying again"),
            }
        }
    }
}

/// Members that are processes of this host found gone (`kill -9`, a crash) stop counting
/// at once: a dead process's low rate must not hold the survivors back until its
/// membership runs out.
async fn forget_the_dead(budget: &Budget, mut joined: Joined) -> Joined {
    let me = identity::Me::read();
    let dead: Vec<String> = joined
        .members
        .iter()
        .filter(|m| m.member != budget.settings().member && identity::is_dead(&m.member, &me))
        .map(|m| m.member.clone())
        .collect();
    for member in dead {
        match budget.evict(&member).await {
            Ok(now) => {
                tracing::info!(budget = %budget.settings().name, process = %member,
                    "a process sharing the rate budget is gone; its rate no longer counts");
                joined = now;
            }
            Err(e) => tracing::debug!(error = %e, "cannot forget a gone budget member yet"),
        }
    }
    joined
}

fn disagreement_key(budget: &Budget, joined: &Joined) -> Vec<(String, u64)> {
    joined
        .disagreeing(budget.settings().ceiling)
        .into_iter()
        .map(|m| (m.member.clone(), m.ceiling.to_bits()))
        .collect()
}

fn warn_of_disagreement(budget: &Budget, joined: &Joined) {
    let mine = budget.settings().ceiling;
    let others = joined.disagreeing(mine);
    if others.is_empty() {
        return;
    }
    let name = &budget.settings().name;
    let rate = |r: f64| rate_text(name, r);
    let named: Vec<String> = others.iter().map(|m| describe(name, m)).collect();
    tracing::warn!(
        budget = %name,
        configured_per_sec = mine,
        applied_per_sec = joined.ceiling,
        "processes sharing the {name} rate budget were given other rates ({}); this one was \
         given {}: the lowest, {}, applies to all",
        named.join(", "),
        rate(mine),
        rate(joined.ceiling),
    );
}

/// `host pid N at R/s` (at `R MiB/s` for the upload bytes budget).
pub fn describe(budget: &str, member: &Member) -> String {
    format!(
        "{} at {}",
        crate::domain::short_holder(&member.member),
        rate_text(budget, member.ceiling)
    )
}

/// A rate for people: whole numbers without decimals.
pub fn per_sec(rate: f64) -> String {
    if (rate - rate.round()).abs() < 1e-9 {
        format!("{rate:.0}")
    } else {
        format!("{rate:.2}")
    }
}

/// One line per budget, for `status`.
pub fn describe_status(b: &store::budgets::BudgetStatus) -> String {
    let rate = |r: f64| rate_text(&b.name, r);
    let mut line = format!(
        "{}: {} now (ceiling {}, margin {:.0}%); {} × 429 in the last minute",
        b.name,
        rate(b.rate_per_sec),
        rate(b.ceiling_per_sec),
        b.margin * 100.0,
        b.rate_limited_last_minute
    );
    if let Some(l) = &b.learning {
        line.push_str(&format!("; {}", l.describe()));
    }
    if b.paused_for_secs > 0.0 {
        line.push_str(&format!("; paused {:.1} s more", b.paused_for_secs));
    }
    if b.processes.is_empty() {
        line.push_str("; no process shares it now");
    } else {
        let named: Vec<String> = b
            .processes
            .iter()
            .map(|p| format!("{} at {}", p.process, rate(p.ceiling_per_sec)))
            .collect();
        line.push_str(&format!(
            "; shared by {}: {}",
            crate::human::count(b.processes.len() as u64, "process"),
            named.join(", ")
        ));
    }
    line
}

/// A budget's rate for people: calls per second, or for the upload bytes budget (counted
/// in units) bytes per second.
fn rate_text(budget: &str, rate: f64) -> String {
    if budget == UPLOAD_BYTES {
        let bytes = (rate * crate::bandwidth::UNIT as f64) as u64;
        format!("{}/s", bytesize::ByteSize(bytes).display().iec())
    } else {
        format!("{}/s", per_sec(rate))
    }
}
