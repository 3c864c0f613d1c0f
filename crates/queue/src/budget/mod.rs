//! Rate budgets shared through the store: one row per limit, read and written by every
//! process that shares the store, so several processes on several hosts share one rate.
//!
//! The arithmetic is in [`gcra`] (pure, on an injected clock); this module keeps the rows:
//! a reservation reads the budget and writes it back only if nobody wrote in between (a
//! version check: one short statement, no lock held across a round trip), on the store's
//! clock, so the hosts' clocks do not matter. [`Budget`] is a process's handle on one.

pub mod gcra;
mod pacer;

pub use gcra::{BudgetState, LearnPhase, Micros, Reservation, Tuning};
pub use pacer::{Budget, BudgetSettings, Joined, Slot};

use crate::{Error, Store, on, sql};

/// A process that shares a budget stops counting (for the ceiling and for status) when it
/// has not been seen for this long; a live one checks in far more often.
pub const MEMBER_TTL: Micros = 20_000_000;

/// How far back [`BudgetView::refusals_last_minute`] counts.
const MINUTE: Micros = 60_000_000;

/// A process sharing a budget.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Member {
    /// Its name (as it holds jobs: `host:…:pid:…`).
    pub member: String,
    /// The rate it was given, in calls per second.
    pub ceiling: f64,
    /// When it last checked in (store clock).
    pub seen_us: Micros,
}

/// A budget as `status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetView {
    pub name: String,
    pub state: BudgetState,
    /// The store's time the view was read at.
    pub now: Micros,
    /// Calls per second the budget hands out now.
    pub rate_now: f64,
    /// The safety margin now (a fraction of the ceiling).
    pub margin_now: f64,
    /// Refusals (429s) reported in the last minute.
    pub refusals_last_minute: i64,
    /// Live processes sharing it.
    pub members: Vec<Member>,
    /// The limit it runs under now: the ceiling, or the learned limit when lower.
    pub limit_now: f64,
    /// The API origin its learned limit was learned for (empty: it never learned).
    pub origin: String,
}

/// What a budget learned of one origin's limit, kept for the next run.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Learned {
    pub budget: String,
    pub origin: String,
    /// The learned limit, in calls per second.
    pub learned: f64,
    /// The rate handed out when the last 429 came (`0`: none came).
    pub refused_rate: f64,
    /// When it came (store clock).
    pub refused_at_us: Micros,
    /// When this was last written (store clock).
    pub updated_at_us: Micros,
}

/// The store's time, in microseconds since the Unix epoch. Postgres's clock (every host
/// sharing the server reads the same one); for SQLite, whose file is shared by processes
/// of one host only, that host's clock, which is what SQLite itself reads.
pub async fn store_now(store: &Store) -> Result<Micros, Error> {
    match store {
        Store::Postgres(pool) => Ok(sqlx::query_scalar(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
        )
        .fetch_one(pool)
        .await?),
        Store::Sqlite(_) => Ok(host_now()),
    }
}

/// The host's clock in microseconds since the Unix epoch.
pub(crate) fn host_now() -> Micros {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// Makes the budget `name` if it does not exist and records `member` as sharing it with
/// `ceiling` calls per second; the budget's ceiling becomes the lowest of its live members'.
/// The live members, this one included.
pub async fn join_at(
    store: &Store,
    name: &str,
    member: &str,
    ceiling: f64,
    now: Micros,
) -> Result<Vec<Member>, Error> {
    join_learning_at(
        store,
        name,
        (member, ceiling, None),
        now,
        &Tuning::default(),
    )
    .await
}

/// As [`join_at`]; with `learn` (an API origin), `member` learns the server's limit up to
/// `ceiling`: the budget starts from what the store learned for that origin before (or
/// low, when nothing), unless it is learning for that origin already.
pub async fn join_learning_at(
    store: &Store,
    name: &str,
    (member, ceiling, learn): (&str, f64, Option<&str>),
    now: Micros,
    tuning: &Tuning,
) -> Result<Vec<Member>, Error> {
    on!(
        store,
        sql!(
            "INSERT INTO rate_budgets (name, ceiling) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
        ),
        |c, q| sqlx::query(q)
            .bind(name)
            .bind(ceiling)
            .execute(c)
            .await
            .map(|_| ())
    )?;
    on!(
        store,
        sql!(
            "INSERT INTO rate_budget_members (budget, member, ceiling, seen_us, learning)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (budget, member)
             DO UPDATE SET ceiling = excluded.ceiling, seen_us = excluded.seen_us,
                           learning = excluded.learning"
        ),
        |c, q| sqlx::query(q)
            .bind(name)
            .bind(member)
            .bind(ceiling)
            .bind(now)
            .bind(i64::from(learn.is_some()))
            .execute(c)
            .await
            .map(|_| ())
    )?;
    settle_ceiling(store, name, now).await?;
    if let Some(origin) = learn {
        start_learning(store, name, origin, now, tuning).await?;
    }
    members_at(store, name, now).await
}

/// Makes `name` learn `origin`'s limit, from what the store kept of it, unless it does
/// already.
async fn start_learning(
    store: &Store,
    name: &str,
    origin: &str,
    now: Micros,
    tuning: &Tuning,
) -> Result<(), Error> {
    let current: Option<(String, f64)> = on!(
        store,
        sql!("SELECT origin, learned FROM rate_budgets WHERE name = $1"),
        |c, q| sqlx::query_as(q).bind(name).fetch_optional(c).await
    )?;
    if current.is_some_and(|(o, learned)| o == origin && learned > 0.0) {
        return Ok(());
    }
    let kept = learned_for(store, name, origin).await?;
    let (learned, refused) = kept.map_or((0.0, (0.0, 0)), |k| {
        (k.learned, (k.refused_rate, k.refused_at_us))
    });
    update(store, name, |state| {
        state.learn_from(now, learned, refused, tuning)
    })
    .await?;
    on!(
        store,
        sql!("UPDATE rate_budgets SET origin = $2 WHERE name = $1"),
        |c, q| sqlx::query(q)
            .bind(name)
            .bind(origin)
            .execute(c)
            .await
            .map(|_| ())
    )?;
    Ok(())
}

/// What the store kept of `origin`'s limit for the budget `name`.
pub async fn learned_for(
    store: &Store,
    name: &str,
    origin: &str,
) -> Result<Option<Learned>, Error> {
    Ok(on!(
        store,
        sql!(
            "SELECT budget, origin, learned, refused_rate, refused_at_us, updated_at_us
               FROM rate_learned WHERE budget = $1 AND origin = $2"
        ),
        |c, q| sqlx::query_as(q)
            .bind(name)
            .bind(origin)
            .fetch_optional(c)
            .await
    )?)
}

/// Every limit the store learned, newest first.
pub async fn learned_all(store: &Store) -> Result<Vec<Learned>, Error> {
    Ok(on!(
        store,
        sql!(
            "SELECT budget, origin, learned, refused_rate, refused_at_us, updated_at_us
               FROM rate_learned ORDER BY updated_at_us DESC, budget, origin"
        ),
        |c, q| sqlx::query_as(q).fetch_all(c).await
    )?)
}

/// Keeps what `name` learned of `origin`'s limit as at `now`, for every process and the
/// next run (nothing when it learns for another origin now).
pub async fn keep_learned_at(
    store: &Store,
    name: &str,
    origin: &str,
    now: Micros,
    tuning: &Tuning,
) -> Result<(), Error> {
    let Some((state, _, learning_for)) = load(store, name).await? else {
        return Ok(());
    };
    if learning_for != origin || state.learned <= 0.0 {
        return Ok(());
    }
    // The limit as climbed so far: the server took it (a 429 would have set it).
    let Some(learned) = state.learned_limit_at(now, tuning) else {
        return Ok(());
    };
    let learned = learned.min(state.ceiling);
    on!(
        store,
        sql!(
            "INSERT INTO rate_learned
                    (budget, origin, learned, refused_rate, refused_at_us, updated_at_us)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (budget, origin)
             DO UPDATE SET learned = excluded.learned, refused_rate = excluded.refused_rate,
                           refused_at_us = excluded.refused_at_us,
                           updated_at_us = excluded.updated_at_us"
        ),
        |c, q| sqlx::query(q)
            .bind(name)
            .bind(origin)
            .bind(learned)
            .bind(state.refused_rate)
            .bind(state.refused_at)
            .bind(now)
            .execute(c)
            .await
            .map(|_| ())
    )?;
    Ok(())
}

/// `member` no longer shares the budget (it is stopping); the ceiling follows the others.
pub async fn leave_at(store: &Store, name: &str, member: &str, now: Micros) -> Result<(), Error> {
    on!(
        store,
        sql!("DELETE FROM rate_budget_members WHERE budget = $1 AND member = $2"),
        |c, q| sqlx::query(q)
            .bind(name)
            .bind(member)
            .execute(c)
            .await
            .map(|_| ())
    )?;
    settle_ceiling(store, name, now).await
}

/// Sets the budget's ceiling to the lowest of its live members' (unchanged when none is
/// live), and forgets members long gone. A change bumps the version, so a reservation
/// computed on the old ceiling is made again.
async fn settle_ceiling(store: &Store, name: &str, now: Micros) -> Result<(), Error> {
    on!(
        store,
        sql!(
            "DELETE FROM rate_budget_members
              WHERE budget = $1 AND seen_us < $2 - 3600000000"
        ),
        |c, q| sqlx::query(q)
            .bind(name)
            .bind(now)
            .execute(c)
            .await
            .map(|_| ())
    )?;
    on!(
        store,
        sql!(
            "UPDATE rate_budgets
                SET ceiling = m.lowest, learning = m.learns, version = version + 1
               FROM (SELECT min(ceiling) AS lowest, max(learning) AS learns
                       FROM rate_budget_members
                      WHERE budget = $1 AND seen_us >= $2) AS m
              WHERE name = $1 AND m.lowest IS NOT NULL
                AND (ceiling <> m.lowest OR learning <> m.learns)"
        ),
        |c, q| sqlx::query(q)
            .bind(name)
            .bind(now - MEMBER_TTL)
            .execute(c)
            .await
            .map(|_| ())
    )?;
    Ok(())
}

/// The live members of `name`, lowest ceiling first.
pub async fn members_at(store: &Store, name: &str, now: Micros) -> Result<Vec<Member>, Error> {
    Ok(on!(
        store,
        sql!(
            "SELECT member, ceiling, seen_us FROM rate_budget_members
              WHERE budget = $1 AND seen_us >= $2 ORDER BY ceiling, member"
        ),
        |c, q| sqlx::query_as(q)
            .bind(name)
            .bind(now - MEMBER_TTL)
            .fetch_all(c)
            .await
    )?)
}

/// Reserves up to `want` slots of `name` for `member` at `now` (see
/// [`BudgetState::reserve`]).
pub async fn reserve_at(
    store: &Store,
    name: &str,
    (member, want): (&str, u32),
    now: Micros,
    horizon: Micros,
    tuning: &Tuning,
) -> Result<Reservation, Error> {
    let owner = gcra::owner_id(member);
    update(store, name, |state| {
        state.reserve(now, (owner, want), horizon, tuning)
    })
    .await
}

/// Tells `name` that the server refused a call at `now`, asking for `retry_after` (see
/// [`BudgetState::refuse`]), and records the refusal for status.
pub async fn refuse_at(
    store: &Store,
    name: &str,
    now: Micros,
    retry_after: Micros,
    tuning: &Tuning,
) -> Result<(), Error> {
    refuse_sent_at(store, name, (now, now), retry_after, tuning).await
}

/// As [`refuse_at`], for a call that left at `sent` and was refused at `now` (see
/// [`BudgetState::refuse_sent`]).
pub async fn refuse_sent_at(
    store: &Store,
    name: &str,
    (now, sent): (Micros, Micros),
    retry_after: Micros,
    tuning: &Tuning,
) -> Result<(), Error> {
    update(store, name, |state| {
        state.refuse_sent(now, sent, retry_after, tuning)
    })
    .await?;
    on!(
        store,
        sql!("DELETE FROM rate_budget_refusals WHERE budget = $1 AND at_us < $2 - 3600000000"),
        |c, q| sqlx::query(q)
            .bind(name)
            .bind(now)
            .execute(c)
            .await
            .map(|_| ())
    )?;
    on!(
        store,
        sql!("INSERT INTO rate_budget_refusals (budget, at_us) VALUES ($1, $2)"),
        |c, q| sqlx::query(q)
            .bind(name)
            .bind(now)
            .execute(c)
            .await
            .map(|_| ())
    )?;
    Ok(())
}

/// Reads `name`, changes it with `change` and writes it back if nobody wrote in between;
/// otherwise reads again. `change`'s result for the write that held.
async fn update<T>(
    store: &Store,
    name: &str,
    mut change: impl FnMut(&mut BudgetState) -> T,
) -> Result<T, Error> {
    loop {
        let (mut state, version, _) = load(store, name)
            .await?
            .ok_or_else(|| Error::NoBudget(name.to_string()))?;
        let out = change(&mut state);
        if store_if_unchanged(store, name, &state, version).await? {
            return Ok(out);
        }
    }
}

/// A budget's row.
#[derive(sqlx::FromRow)]
struct Row {
    ceiling: f64,
    tat_us: i64,
    paused_until_us: i64,
    cut_rate: f64,
    cut_at_us: i64,
    margin: f64,
    margin_at_us: i64,
    last_owner: i64,
    learning: i64,
    learned: f64,
    learned_at_us: i64,
    refused_rate: f64,
    refused_at_us: i64,
}

impl Row {
    fn state(&self) -> BudgetState {
        BudgetState {
            ceiling: self.ceiling,
            tat: self.tat_us,
            paused_until: self.paused_until_us,
            cut_rate: self.cut_rate,
            cut_at: self.cut_at_us,
            margin: self.margin,
            margin_at: self.margin_at_us,
            last_owner: self.last_owner,
            learning: self.learning != 0,
            learned: self.learned,
            learned_at: self.learned_at_us,
            refused_rate: self.refused_rate,
            refused_at: self.refused_at_us,
        }
    }
}

/// The budget's state, version and the origin it learns for, if it exists.
async fn load(store: &Store, name: &str) -> Result<Option<(BudgetState, i64, String)>, Error> {
    #[derive(sqlx::FromRow)]
    struct Versioned {
        #[sqlx(flatten)]
        row: Row,
        version: i64,
        origin: String,
    }
    let row: Option<Versioned> = on!(
        store,
        sql!(
            "SELECT ceiling, tat_us, paused_until_us, cut_rate, cut_at_us, margin, margin_at_us,
                    last_owner, learning, learned, learned_at_us, refused_rate, refused_at_us,
                    version, origin
               FROM rate_budgets WHERE name = $1"
        ),
        |c, q| sqlx::query_as(q).bind(name).fetch_optional(c).await
    )?;
    Ok(row.map(|v| (v.row.state(), v.version, v.origin)))
}

/// Writes `state` (all but the ceiling, which only the members set) if the row is still
/// at `version`.
async fn store_if_unchanged(
    store: &Store,
    name: &str,
    state: &BudgetState,
    version: i64,
) -> Result<bool, Error> {
    let done = on!(
        store,
        sql!(
            "UPDATE rate_budgets
                SET tat_us = $3, paused_until_us = $4, cut_rate = $5, cut_at_us = $6,
                    margin = $7, margin_at_us = $8, last_owner = $9, learned = $10,
                    learned_at_us = $11, refused_rate = $12, refused_at_us = $13,
                    version = version + 1
              WHERE name = $1 AND version = $2"
        ),
        |c, q| sqlx::query(q)
            .bind(name)
            .bind(version)
            .bind(state.tat)
            .bind(state.paused_until)
            .bind(state.cut_rate)
            .bind(state.cut_at)
            .bind(state.margin)
            .bind(state.margin_at)
            .bind(state.last_owner)
            .bind(state.learned)
            .bind(state.learned_at)
            .bind(state.refused_rate)
            .bind(state.refused_at)
            .execute(c)
            .await
            .map(|done| done.rows_affected())
    )?;
    Ok(done == 1)
}

/// Every budget of the store, as at `now`.
pub async fn view_all_at(
    store: &Store,
    now: Micros,
    tuning: &Tuning,
) -> Result<Vec<BudgetView>, Error> {
    #[derive(sqlx::FromRow)]
    struct Viewed {
        name: String,
        #[sqlx(flatten)]
        row: Row,
        origin: String,
        refusals: i64,
    }
    let rows: Vec<Viewed> = on!(
        store,
        sql!(
            "SELECT b.name, b.ceiling, b.tat_us, b.paused_until_us, b.cut_rate, b.cut_at_us,
                    b.margin, b.margin_at_us, b.last_owner, b.learning, b.learned,
                    b.learned_at_us, b.refused_rate, b.refused_at_us, b.origin,
                    (SELECT count(*) FROM rate_budget_refusals r
                      WHERE r.budget = b.name AND r.at_us >= $1) AS refusals
               FROM rate_budgets b ORDER BY b.name"
        ),
        |c, q| sqlx::query_as(q).bind(now - MINUTE).fetch_all(c).await
    )?;
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        let members = members_at(store, &row.name, now).await?;
        let state = row.row.state();
        views.push(BudgetView {
            name: row.name,
            rate_now: state.rate_at(now, tuning),
            margin_now: state.margin_at(now, tuning),
            limit_now: state.limit_at(now, tuning),
            state,
            now,
            refusals_last_minute: row.refusals,
            members,
            origin: row.origin,
        });
    }
    Ok(views)
}
