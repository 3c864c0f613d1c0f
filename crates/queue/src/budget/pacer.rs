//! A process's handle on a shared budget: its workers wait here for a slot. One worker at a
//! time reserves for the process (as many slots as workers wait, within the horizon), and
//! each sleeps until its slot, mapped from the store's clock to this process's.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{
    Member, Micros, Reservation, Tuning, host_now, join_learning_at, keep_learned_at, leave_at,
    refuse_sent_at,
};
use crate::{Error, Store};

/// A slot that waited unused longer than this is dropped rather than used late (used late,
/// it could land right before the next process's slot).
const STALE: Micros = 2_000;

const SECOND: f64 = 1_000_000.0;

/// The last stretch before a slot that [`Budget::sleep_until`] yields through rather than
/// leaving to the timer (whose grain is a millisecond, rounded up).
const TIMER_GRAIN: Duration = Duration::from_micros(1_500);

/// Slots at least this far apart are waited for precisely (see [`Budget::sleep_until`]);
/// closer ones are too many to spin for.
const PRECISE_FROM: Micros = 10_000;

/// How one process shares a budget.
#[derive(Debug, Clone)]
pub struct BudgetSettings {
    /// The budget's name: one per limit (e.g. `api`, `upload`).
    pub name: String,
    /// This process's name, as other processes and `status` see it.
    pub member: String,
    /// The rate this process was given, in calls per second.
    pub ceiling: f64,
    pub tuning: Tuning,
}

/// Who shares the budget, as of joining or the last check-in.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// The budget's ceiling: the lowest any live member was given.
    pub ceiling: f64,
    /// The live members, lowest ceiling first (this process included).
    pub members: Vec<Member>,
}

impl Joined {
    /// The live members given another rate than `ceiling`.
    pub fn disagreeing(&self, ceiling: f64) -> Vec<&Member> {
        self.members
            .iter()
            .filter(|m| (m.ceiling - ceiling).abs() > 1e-9)
            .collect()
    }
}

/// A reserved start time, on the store's clock (see [`Budget::reserve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    at: Micros,
}

/// One process's handle on a shared budget.
pub struct Budget {
    store: Store,
    settings: BudgetSettings,
    /// The API origin whose limit this process learns (`--api-rate auto`), if it does.
    learn: Option<String>,
    /// No slot is reserved further ahead than this (a learning budget's follows its rate).
    horizon: AtomicI64,
    clock: StoreClock,
    /// Whether slots are waited for to the microsecond (low rates: see `sleep_until`).
    precise: AtomicBool,
    /// Slots reserved and not yet handed out, on the store's clock; the lock is held by the
    /// one worker reserving for the process.
    slots: tokio::sync::Mutex<VecDeque<Micros>>,
    /// Workers waiting for a slot: how many one reservation asks for.
    waiting: AtomicU32,
    /// The end of the latest pause this process was told of, on the store's clock.
    paused_until: Mutex<Micros>,
    /// No call of this process starts before this: a server-side interval after the
    /// latest answer (less the fastest round trip seen), so a call that reached the
    /// server late is not followed too closely by the next one. See [`Budget::answered`].
    not_before: Mutex<Option<Instant>>,
    /// The fastest round trip seen: the part of every answer's time that is not jitter.
    fastest: Mutex<Option<Duration>>,
    /// The least gap between two calls of this process as they leave, in microseconds
    /// (see `keep_spacing`).
    spacing: AtomicI64,
    /// When this process's latest call left, or is due to leave.
    last_departure: Mutex<Option<Instant>>,
    /// The budget's ceiling as of the last check-in.
    ceiling: Mutex<f64>,
    /// Whether another live process shares the budget: as of the last check-in, or a
    /// reservation since that followed another process's.
    shared: AtomicBool,
}

impl Budget {
    /// Joins (making it if need be) the budget of `settings.name`.
    pub async fn join(store: Store, settings: BudgetSettings) -> Result<(Budget, Joined), Error> {
        Self::join_learning(store, settings, None).await
    }

    /// As [`join`](Self::join); with `learn` (an API origin), this process learns the
    /// server's limit, up to `settings.ceiling`, sharing what it learns with every process
    /// of the store and keeping it for the next run (see [`super::gcra`]).
    pub async fn join_learning(
        store: Store,
        settings: BudgetSettings,
        learn: Option<String>,
    ) -> Result<(Budget, Joined), Error> {
        let clock = match store {
            Store::Postgres(_) => StoreClock::Sampled(Mutex::new(None)),
            Store::Sqlite(_) => StoreClock::Host,
        };
        let interval = (1_000_000.0 / settings.ceiling.max(f64::MIN_POSITIVE)).ceil() as Micros;
        let ceiling = settings.ceiling;
        let budget = Budget {
            store,
            // Room for a few slots in a row, so that consecutive calls are mostly one
            // process's (whose answers space them; see `answered`).
            horizon: AtomicI64::new(horizon_for(interval, learn.is_some())),
            precise: AtomicBool::new(interval >= PRECISE_FROM),
            learn,
            settings,
            clock,
            slots: tokio::sync::Mutex::new(VecDeque::new()),
            waiting: AtomicU32::new(0),
            paused_until: Mutex::new(0),
            not_before: Mutex::new(None),
            fastest: Mutex::new(None),
            spacing: AtomicI64::new(0),
            last_departure: Mutex::new(None),
            ceiling: Mutex::new(ceiling),
            shared: AtomicBool::new(false),
        };
        let joined = budget.check_in().await?;
        Ok((budget, joined))
    }

    pub fn settings(&self) -> &BudgetSettings {
        &self.settings
    }

    /// Renews this process's membership (call it every few seconds: a member unseen for
    /// [`super::MEMBER_TTL`] no longer counts) and reads who shares the budget now.
    pub async fn check_in(&self) -> Result<Joined, Error> {
        let now = self.clock.now(&self.store).await?;
        let s = &self.settings;
        let me = (s.member.as_str(), s.ceiling, self.learn.as_deref());
        let members = join_learning_at(&self.store, &s.name, me, now, &s.tuning).await?;
        if let Some(origin) = &self.learn {
            keep_learned_at(&self.store, &s.name, origin, now, &s.tuning).await?;
        }
        let ceiling = members.first().map_or(s.ceiling, |m| m.ceiling);
        *self.ceiling.lock().unwrap_or_else(|e| e.into_inner()) = ceiling;
        let others = members.iter().any(|m| m.member != s.member);
        self.shared.store(others, Ordering::Relaxed);
        Ok(Joined { ceiling, members })
    }

    /// Another member is known to be gone (its process died): it stops counting now, not
    /// when its membership runs out; then reads who shares the budget, as [`check_in`](Self::check_in).
    pub async fn evict(&self, member: &str) -> Result<Joined, Error> {
        let now = self.clock.now(&self.store).await?;
        leave_at(&self.store, &self.settings.name, member, now).await?;
        self.check_in().await
    }

    /// This process stops sharing the budget: the others' ceiling no longer counts its rate.
    pub async fn leave(&self) -> Result<(), Error> {
        let now = self.clock.now(&self.store).await?;
        if let Some(origin) = &self.learn {
            let s = &self.settings;
            keep_learned_at(&self.store, &s.name, origin, now, &s.tuning).await?;
        }
        leave_at(&self.store, &self.settings.name, &self.settings.member, now).await
    }

    /// Waits until one call may start, and it leaves at once.
    pub async fn acquire(&self) -> Result<(), Error> {
        loop {
            let slot = self.reserve().await?;
            if self.wait_for(slot).await && self.depart(slot).await {
                return Ok(());
            }
        }
    }

    /// A slot for one call, not yet waited for: it starts within the horizon. A caller with
    /// something to do just before its call (a durable note that it is about to leave) does
    /// it now and then [`wait_for`](Self::wait_for)s the slot, so that the note's time is
    /// not taken out of the gap to the previous call.
    pub async fn reserve(&self) -> Result<Slot, Error> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _left = DropGuard(&self.waiting);
        let mut slots = self.slots.lock().await;
        let at = self.next_slot(&mut slots).await?;
        Ok(Slot { at })
    }

    /// Sleeps until `slot` starts. `false` if it cannot be used after all: it had passed by
    /// more than a hair when asked for (the call would land right before the next one), or
    /// a 429 paused the budget meanwhile. The caller then reserves again. The call leaves
    /// after [`depart`](Self::depart).
    pub async fn wait_for(&self, slot: Slot) -> bool {
        self.wait_for_ahead(slot, Duration::ZERO).await
    }

    /// As [`wait_for`](Self::wait_for), waking `lead` before the slot: for a caller with
    /// something to do between waking and the call (a durable note that takes a store
    /// round trip), so that the call still leaves on time; [`depart`](Self::depart) waits
    /// out whatever is left.
    pub async fn wait_for_ahead(&self, slot: Slot, lead: Duration) -> bool {
        let at = self.clock.local(slot.at);
        if self.late(at) {
            return false;
        }
        self.sleep_until(at.checked_sub(lead).unwrap_or(at)).await;
        // A refusal while we slept pauses us too; otherwise the slot is ours.
        slot.at >= self.paused_until()
    }

    /// The call on `slot` (waited for) is about to leave: call it last, right before the
    /// request goes, after anything done since [`wait_for`](Self::wait_for) (a durable note
    /// that a create is about to leave takes a store round trip, and a busy store can take
    /// milliseconds). `false` if the call must not leave on this slot after all: a 429
    /// paused the budget, or (a given rate of at most 100 calls/s, shared with another
    /// process) the slot passed by more than a hair. Used that late, it would land right
    /// before the next slot's call, which may be another process's, where no answer of
    /// ours can hold it back (measured: most of the 429s of three processes). The caller
    /// then takes a fresh slot. Alone, the next slot is ours, and the answer holds it back (see
    /// [`answered`](Self::answered)); a learning budget's calls are held to each other
    /// instead. Either way, this process's calls leave spaced (see `keep_spacing`).
    pub async fn depart(&self, slot: Slot) -> bool {
        let at = self.clock.local(slot.at);
        self.sleep_until(at).await;
        self.hold().await;
        // At rates a strict server checks call by call (see `sleep_until`); faster slots
        // come in batches on the timer's millisecond grain, which spacing would only slow.
        let precise = self.precise.load(Ordering::Relaxed);
        if self.learn.is_some() || precise {
            self.keep_spacing().await;
        }
        if self.learn.is_none() && precise && self.shared.load(Ordering::Relaxed) && self.late(at) {
            return false;
        }
        slot.at >= self.paused_until()
    }

    /// Whether a call due at `at` is too late to leave on its slot.
    fn late(&self, at: Instant) -> bool {
        Instant::now().saturating_duration_since(at) > Duration::from_micros(STALE as u64)
    }

    /// Waits out the hold an answer set (see [`answered`](Self::answered)).
    async fn hold(&self) {
        loop {
            let not_before = *self.not_before.lock().unwrap_or_else(|e| e.into_inner());
            match not_before {
                Some(nb) if nb > Instant::now() => self.sleep_until(nb).await,
                _ => break,
            }
        }
    }

    /// The server refused a call and asked for `retry_after`: every worker of every process
    /// sharing the budget waits that long, and the budget adapts.
    pub async fn refused(&self, retry_after: Duration) -> Result<(), Error> {
        self.refused_sent(retry_after, Instant::now()).await
    }

    /// As [`refused`](Self::refused), for a call that left at `sent`: a budget that learns
    /// the limit learns the rate the server last took before it.
    pub async fn refused_sent(&self, retry_after: Duration, sent: Instant) -> Result<(), Error> {
        let now = self.clock.now(&self.store).await?;
        let sent = now - micros(Instant::now().saturating_duration_since(sent));
        let after = i64::try_from(retry_after.as_micros()).unwrap_or(i64::MAX / 2);
        {
            let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            *paused = (*paused).max(now + after);
        }
        let s = &self.settings;
        refuse_sent_at(&self.store, &s.name, (now, sent), after, &s.tuning).await
    }

    /// A call of this process left at `sent` and was answered at `answered`. Slots space
    /// calls as they leave; the server counts them as they arrive, and a call delayed on
    /// the way (a busy host, a slow hop) lands closer to the next one than its slot said.
    /// Where it arrived is unknown, but not after its answer less the fastest round trip:
    /// the next call of this process waits at least the ceiling's interval from there (a
    /// learning budget's: its spacing). An answer that took the usual time changes nothing
    /// (its slot successor is later).
    pub fn answered(&self, sent: Instant, answered: Instant) {
        let round_trip = answered.saturating_duration_since(sent);
        // The fastest of the round trips before this one: the first call (which also sets
        // up the connection) is measured against nothing, so from its answer.
        let fastest = {
            let mut fastest = self.fastest.lock().unwrap_or_else(|e| e.into_inner());
            let before = fastest.unwrap_or_default();
            *fastest = Some(fastest.map_or(round_trip, |f| f.min(round_trip)));
            before
        };
        let interval = if self.learn.is_some() {
            // A learning budget knows no server interval: it holds the next call to its own
            // spacing, which also holds every call after it (see `keep_spacing`); held
            // alone, the next slot's call would land too close behind the held one.
            Duration::from_micros(self.spacing.load(Ordering::Relaxed).max(0) as u64)
        } else {
            // The server's interval and a quarter of the start margin: held to the bare
            // interval, a call lands on it to within the jitter, either side (measured: a
            // 429 at 27.00 ms for 27.03). The rest lets a held call's delay fade over the
            // next slots (theirs are a whole margin apart) instead of adding up.
            let margin = 1.0 + self.settings.tuning.start_margin / 4.0;
            Duration::from_secs_f64(margin / self.ceiling_now().max(f64::MIN_POSITIVE))
        };
        let earliest = answered - fastest + interval;
        let mut not_before = self.not_before.lock().unwrap_or_else(|e| e.into_inner());
        if not_before.is_none_or(|nb| nb < earliest) {
            *not_before = Some(earliest);
        }
    }

    /// This process's calls leave at least its spacing apart. Its slots are further apart
    /// already, but a worker that woke late (a busy runtime, a slow note) leaves late, and
    /// the next one, on time, would land too close behind it: measured, a 429 every few
    /// seconds at four fifths of the limit when learning, and at a given limit right after
    /// the start (the answers' hold knows no fastest round trip yet). Each call takes the
    /// next departure time under the lock, race-free. A learning budget's spacing is its
    /// slots' interval less the start margin; a given rate's, the server's interval and
    /// half the margin (the delay fades over the next slots).
    async fn keep_spacing(&self) {
        let spacing = Duration::from_micros(self.spacing.load(Ordering::Relaxed).max(0) as u64);
        let depart = {
            let mut last = self
                .last_departure
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let depart = last.map_or(now, |l| (l + spacing).max(now));
            *last = Some(depart);
            depart
        };
        if depart > Instant::now() {
            self.sleep_until(depart).await;
        }
    }

    /// The budget's ceiling as last read from the store (this process's own until then).
    fn ceiling_now(&self) -> f64 {
        *self.ceiling.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next slot of ours: one reserved earlier, or a fresh reservation.
    async fn next_slot(&self, slots: &mut VecDeque<Micros>) -> Result<Micros, Error> {
        loop {
            let now = self.clock.now(&self.store).await?;
            let pause = self.paused_until();
            while let Some(slot) = slots.pop_front() {
                if slot >= now - STALE && slot >= pause {
                    return Ok(slot);
                }
            }
            let want = self.waiting.load(Ordering::Relaxed).max(1);
            let s = &self.settings;
            let me = (s.member.as_str(), want);
            let horizon = self.horizon.load(Ordering::Relaxed);
            let reserved =
                super::reserve_at(&self.store, &s.name, me, now, horizon, &s.tuning).await?;
            match reserved {
                Reservation::Granted {
                    first,
                    interval,
                    count,
                    after_another,
                } => {
                    if after_another {
                        // Another process draws on the budget (it may have joined since
                        // the last check-in, which clears this once it is gone).
                        self.shared.store(true, Ordering::Relaxed);
                    }
                    slots.extend((0..i64::from(count)).map(|i| first + interval * i));
                    let spacing = if self.learn.is_some() {
                        // A learned rate moves: the horizon and the waiting follow it.
                        self.horizon
                            .store(horizon_for(interval, true), Ordering::Relaxed);
                        self.precise
                            .store(interval >= PRECISE_FROM, Ordering::Relaxed);
                        interval as f64 * (1.0 - s.tuning.start_margin)
                    } else {
                        // The server's interval and half the margin: a call that left
                        // late is not followed closer than that (measured: 429s at 27.00
                        // ms for 27.03, a late call's successor on time).
                        SECOND * (1.0 + s.tuning.start_margin / 2.0)
                            / self.ceiling_now().max(f64::MIN_POSITIVE)
                    };
                    self.spacing.store(spacing as Micros, Ordering::Relaxed);
                }
                Reservation::NotBefore(at) => {
                    tokio::time::sleep_until(self.clock.local(at)).await;
                }
            }
        }
    }

    /// Sleeps until `at` (not at all if it passed). At rates a strict server checks call
    /// by call, the timer's millisecond grain is a jitter the margin would have to absorb:
    /// the last stretch is spent yielding to other tasks instead, so the call leaves within
    /// microseconds of its slot.
    async fn sleep_until(&self, at: Instant) {
        if at <= Instant::now() {
            return;
        }
        if !self.precise.load(Ordering::Relaxed) {
            tokio::time::sleep_until(at).await;
            return;
        }
        if let Some(coarse) = at.checked_sub(TIMER_GRAIN)
            && coarse > Instant::now()
        {
            tokio::time::sleep_until(coarse).await;
        }
        while Instant::now() < at {
            tokio::task::yield_now().await;
        }
    }

    fn paused_until(&self) -> Micros {
        *self.paused_until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How far ahead a process reserves at `interval`: room for a few slots in a row, so that
/// consecutive calls are mostly one process's (whose answers space them; see
/// [`Budget::answered`]). A learning budget reserves less far: a 429 tells it the rate of
/// a few slots back, and the nearer those were reserved, the closer that is to the truth.
fn horizon_for(interval: Micros, learning: bool) -> Micros {
    if learning {
        (2 * interval).clamp(20_000, 250_000)
    } else {
        (4 * interval).clamp(50_000, 250_000)
    }
}

struct DropGuard<'a>(&'a AtomicU32);

impl Drop for DropGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The store's clock as this process sees it.
enum StoreClock {
    /// This host's clock (SQLite: every process sharing the file reads it).
    Host,
    /// A server's clock, sampled: the sample with the shortest round trip of three, taken
    /// every [`SAMPLE_LIFE`], ties it to this process's monotonic clock, so every slot maps
    /// to its instant the same way, whatever a given round trip cost.
    Sampled(Mutex<Option<Sample>>),
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The server's time...
    store: Micros,
    /// ...at this local instant (the middle of the round trip that read it).
    local: Instant,
    round_trip: Duration,
    taken: Instant,
}

/// A sample older than this is replaced (clocks drift).
const SAMPLE_LIFE: Duration = Duration::from_secs(10);

impl StoreClock {
    /// The store's time now.
    async fn now(&self, store: &Store) -> Result<Micros, Error> {
        let StoreClock::Sampled(best) = self else {
            return Ok(host_now());
        };
        let fresh = best
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filter(|s| s.taken.elapsed() < SAMPLE_LIFE);
        let sample = match fresh {
            Some(sample) => sample,
            None => {
                let mut shortest: Option<Sample> = None;
                for _ in 0..3 {
                    let sample = Self::sample(store).await?;
                    if shortest.is_none_or(|s| sample.round_trip < s.round_trip) {
                        shortest = Some(sample);
                    }
                }
                let sample = shortest.expect("three samples were taken");
                *best.lock().unwrap_or_else(|e| e.into_inner()) = Some(sample);
                sample
            }
        };
        Ok(sample.store + micros(Instant::now().saturating_duration_since(sample.local)))
    }

    async fn sample(store: &Store) -> Result<Sample, Error> {
        let sent = Instant::now();
        let at = super::store_now(store).await?;
        let round_trip = sent.elapsed();
        Ok(Sample {
            store: at,
            local: sent + round_trip / 2,
            round_trip,
            taken: Instant::now(),
        })
    }

    /// The local instant of the store's time `at`.
    fn local(&self, at: Micros) -> Instant {
        let (anchor_store, anchor_local) = match self {
            StoreClock::Host => (host_now(), Instant::now()),
            StoreClock::Sampled(best) => match *best.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(s) => (s.store, s.local),
                None => (host_now(), Instant::now()),
            },
        };
        let offset = at - anchor_store;
        let magnitude = Duration::from_micros(offset.unsigned_abs());
        if offset >= 0 {
            anchor_local + magnitude
        } else {
            anchor_local
                .checked_sub(magnitude)
                .unwrap_or_else(Instant::now)
        }
    }
}

fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
