//! A budget's arithmetic, with no store and no clock of its own: every function takes `now`
//! (microseconds on the store's clock), so it is tested against time the test moves.
//!
//! Pacing is GCRA with no burst: the *theoretical arrival time* (`tat`) is the earliest
//! moment the next call may start; a reservation takes slots from `max(tat, now, pause)`
//! onwards, one interval apart, and moves `tat` past them. Whoever reserves, from whichever
//! process, takes the next free slot, so the sum of all processes never beats the rate.
//!
//! The rate is adaptive (AIMD): it runs at the ceiling less a safety margin; a refusal (a
//! 429) pauses everyone for its `Retry-After`, cuts the rate multiplicatively and widens the
//! margin; after the pause the rate climbs back additively. The margin is learned: each
//! refusal widens it, and it relaxes back with a half-life while the server accepts.

/// Microseconds.
pub type Micros = i64;

/// A process's id in [`BudgetState::last_owner`]: a hash of its name, never `0`.
pub fn owner_id(member: &str) -> i64 {
    // FNV-1a: stable across builds and hosts, unlike the standard library's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in member.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash as i64).max(1)
}

const SECOND: f64 = 1_000_000.0;

/// How the budget adapts. The defaults suit a server that counts calls strictly (a token
/// bucket with no burst) and answers a refusal with a whole-second `Retry-After`: a refusal
/// costs every process at least that second, so the margin starts wide enough to absorb the
/// jitter of the path between slot and server, and each refusal widens it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// The margin below the ceiling a fresh budget runs at (a fraction of the ceiling).
    pub start_margin: f64,
    /// How much one refusal widens the margin.
    pub margin_step: f64,
    /// The widest margin.
    pub max_margin: f64,
    /// How long a widened margin takes to relax halfway back to `start_margin`.
    pub margin_half_life: Micros,
    /// A refusal multiplies the current rate by this.
    pub cut: f64,
    /// After a cut the rate climbs back by this fraction of the ceiling per second.
    pub climb: f64,
    /// The rate never falls below this fraction of the ceiling.
    pub floor: f64,
    /// Added between two slots that go to different processes (at most a tenth of the
    /// interval): one process cannot see how late another's call left, only its own.
    pub handover: Micros,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            start_margin: 0.03,
            margin_step: 0.02,
            max_margin: 0.3,
            margin_half_life: 600 * 1_000_000,
            cut: 0.8,
            climb: 0.1,
            floor: 0.05,
            handover: 3_000,
        }
    }
}

/// One budget's shared state, as its row holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetState {
    /// Calls per second: the lowest rate any live process sharing the budget was given.
    pub ceiling: f64,
    /// The earliest start of the next call.
    pub tat: Micros,
    /// No call starts before this (a refusal's `Retry-After`).
    pub paused_until: Micros,
    /// The rate right after the last cut (`0`: never cut).
    pub cut_rate: f64,
    /// When the climb back from the last cut starts (the end of its pause).
    pub cut_at: Micros,
    /// The margin as the last refusal left it (`0`: never widened).
    pub margin: f64,
    /// When the margin was last widened.
    pub margin_at: Micros,
    /// Who took the last slot (a process's [`owner_id`]; `0`: nobody yet).
    pub last_owner: i64,
}

/// What a reservation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// `count` slots: the first at `first`, then one every `interval`.
    Granted {
        first: Micros,
        interval: Micros,
        count: u32,
    },
    /// Nothing reserved: the next slot is further off than the horizon; ask again at this
    /// time. (A process never holds slots far ahead, so a pause stops everyone quickly.)
    NotBefore(Micros),
}

impl BudgetState {
    /// A budget nobody has used yet.
    pub fn fresh(ceiling: f64) -> Self {
        Self {
            ceiling,
            tat: 0,
            paused_until: 0,
            cut_rate: 0.0,
            cut_at: 0,
            margin: 0.0,
            margin_at: 0,
            last_owner: 0,
        }
    }

    /// The safety margin at `now`: the last refusal's, relaxing toward the start margin.
    pub fn margin_at(&self, now: Micros, tuning: &Tuning) -> f64 {
        if self.margin <= tuning.start_margin {
            return tuning.start_margin;
        }
        let age = (now - self.margin_at).max(0) as f64;
        let relaxed = 0.5f64.powf(age / tuning.margin_half_life as f64);
        tuning.start_margin + (self.margin - tuning.start_margin) * relaxed
    }

    /// The rate the budget hands out at `now`, in calls per second.
    pub fn rate_at(&self, now: Micros, tuning: &Tuning) -> f64 {
        let target = self.ceiling * (1.0 - self.margin_at(now, tuning));
        let rate = if self.cut_rate <= 0.0 {
            target
        } else {
            let climbing = (now - self.cut_at).max(0) as f64 / SECOND;
            target.min(self.cut_rate + tuning.climb * self.ceiling * climbing)
        };
        rate.max(self.ceiling * tuning.floor).max(f64::MIN_POSITIVE)
    }

    /// Reserves up to `want` slots for `owner`, starting no later than `horizon` after
    /// `now`.
    pub fn reserve(
        &mut self,
        now: Micros,
        (owner, want): (i64, u32),
        horizon: Micros,
        tuning: &Tuning,
    ) -> Reservation {
        let interval = (SECOND / self.rate_at(now, tuning)).ceil() as Micros;
        let handover = if self.last_owner != 0 && self.last_owner != owner {
            tuning.handover.min(interval / 10)
        } else {
            0
        };
        let start = (self.tat + handover).max(now).max(self.paused_until);
        if start - now > horizon {
            return Reservation::NotBefore(start - horizon);
        }
        // Never more slots than fit in the horizon: a batch is for high rates only.
        let fits = u32::try_from(horizon / interval.max(1)).unwrap_or(u32::MAX);
        let count = want.clamp(1, fits.max(1));
        self.tat = start + interval * i64::from(count);
        self.last_owner = owner;
        Reservation::Granted {
            first: start,
            interval,
            count,
        }
    }

    /// The server refused a call at `now` and asked for `retry_after`: every process pauses
    /// that long. The first refusal of a pause also cuts the rate and widens the margin;
    /// refusals of calls already on their way when the pause began only lengthen it.
    pub fn refuse(&mut self, now: Micros, retry_after: Micros, tuning: &Tuning) {
        let until = now + retry_after.max(0);
        if now < self.paused_until {
            self.paused_until = self.paused_until.max(until);
            return;
        }
        let rate = self.rate_at(now, tuning);
        let margin = self.margin_at(now, tuning);
        self.margin = (margin + tuning.margin_step).min(tuning.max_margin);
        self.margin_at = now;
        self.cut_rate = (rate * tuning.cut).max(self.ceiling * tuning.floor);
        self.cut_at = until;
        self.paused_until = until;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Micros = 1_000;
    const S: Micros = 1_000_000;

    fn slots(r: Reservation) -> (Micros, Micros, u32) {
        match r {
            Reservation::Granted {
                first,
                interval,
                count,
            } => (first, interval, count),
            other => panic!("expected slots, got {other:?}"),
        }
    }

    /// Every slot `n` reservations hand out, in order.
    fn take(state: &mut BudgetState, now: &mut Micros, n: usize, t: &Tuning) -> Vec<Micros> {
        let mut starts = Vec::new();
        while starts.len() < n {
            match state.reserve(*now, (1, 1), 100 * MS, t) {
                Reservation::Granted { first, .. } => starts.push(first),
                Reservation::NotBefore(at) => *now = at,
            }
        }
        starts
    }

    #[test]
    fn slots_are_one_interval_apart_at_the_ceiling_less_the_margin() {
        let t = Tuning::default();
        let mut b = BudgetState::fresh(20.0);
        let mut now = 10 * S;
        let starts = take(&mut b, &mut now, 100, &t);
        let interval = (SECOND / (20.0 * (1.0 - t.start_margin))).ceil() as Micros;
        assert_eq!(starts[0], 10 * S, "an idle budget starts at once");
        for pair in starts.windows(2) {
            assert_eq!(pair[1] - pair[0], interval);
        }
        // Never more than the ceiling in any second.
        for (i, s) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().take_while(|x| **x < s + S).count();
            assert!(in_window <= 20, "{in_window} slots in the second from {s}");
        }
    }

    #[test]
    fn an_idle_budget_saves_no_burst() {
        let t = Tuning::default();
        let mut b = BudgetState::fresh(10.0);
        slots(b.reserve(0, (1, 1), 100 * MS, &t));
        // A minute later, two calls at once are still an interval apart.
        let (a, _, _) = slots(b.reserve(60 * S, (1, 1), 100 * MS, &t));
        let (c, _, _) = slots(b.reserve(60 * S, (1, 1), 200 * MS, &t));
        assert_eq!(a, 60 * S);
        assert!(c - a >= S / 10);
    }

    #[test]
    fn a_process_never_holds_slots_beyond_the_horizon() {
        let t = Tuning::default();
        let mut b = BudgetState::fresh(10.0);
        let now = 5 * S;
        slots(b.reserve(now, (1, 1), 150 * MS, &t));
        slots(b.reserve(now, (1, 1), 150 * MS, &t));
        match b.reserve(now, (1, 1), 150 * MS, &t) {
            Reservation::NotBefore(at) => assert_eq!(at, b.tat - 150 * MS),
            other => panic!("expected a refusal to reserve so far ahead, got {other:?}"),
        }
    }

    #[test]
    fn high_rates_hand_out_several_slots_at_once_still_spaced() {
        let t = Tuning::default();
        let mut b = BudgetState::fresh(1000.0);
        let (first, interval, count) = slots(b.reserve(0, (1, 64), 20 * MS, &t));
        assert!(count > 1 && count <= 21, "{count}");
        assert!(interval >= 1000);
        let (next, _, _) = slots(b.reserve(0, (1, 1), 50 * MS, &t));
        assert_eq!(next, first + interval * i64::from(count));
    }

    #[test]
    fn a_refusal_pauses_everyone_cuts_the_rate_and_it_climbs_back() {
        let t = Tuning::default();
        let mut b = BudgetState::fresh(20.0);
        let steady = b.rate_at(0, &t);
        b.refuse(3 * S, S, &t);
        // Nobody starts during the pause.
        let mut now = 3 * S;
        let (first, _, _) = slots({
            let mut r = b.reserve(now, (1, 1), 100 * MS, &t);
            while let Reservation::NotBefore(at) = r {
                now = at;
                r = b.reserve(now, (1, 1), 100 * MS, &t);
            }
            r
        });
        assert_eq!(first, 4 * S);
        // Cut multiplicatively...
        let cut = b.rate_at(4 * S, &t);
        assert!((cut - steady * t.cut).abs() < 1e-9, "{cut} vs {steady}");
        // ...climbing additively: halfway up after a second...
        let later = b.rate_at(5 * S, &t);
        assert!((later - (cut + t.climb * 20.0)).abs() < 1e-9);
        // ...and back under the (now wider) margin after a few seconds.
        let back = b.rate_at(10 * S, &t);
        let wider = 20.0 * (1.0 - b.margin_at(10 * S, &t));
        assert!((back - wider).abs() < 1e-9);
        assert!(back < steady, "a refusal widens the margin");
    }

    #[test]
    fn refusals_of_calls_already_sent_lengthen_the_pause_without_cutting_again() {
        let t = Tuning::default();
        let mut b = BudgetState::fresh(20.0);
        b.refuse(10 * S, S, &t);
        let after_one = b;
        b.refuse(10 * S + 30 * MS, S, &t);
        assert_eq!(b.paused_until, 11 * S + 30 * MS);
        assert_eq!(b.cut_rate, after_one.cut_rate);
        assert_eq!(b.margin, after_one.margin);
    }

    #[test]
    fn the_margin_is_learned_and_relaxes_while_the_server_accepts() {
        let t = Tuning::default();
        let mut b = BudgetState::fresh(20.0);
        let mut now = 0;
        for _ in 0..3 {
            now += 10 * S;
            b.refuse(now, S, &t);
        }
        let widened = b.margin_at(now, &t);
        assert!((widened - (t.start_margin + 3.0 * t.margin_step)).abs() < 1e-3);
        let half = b.margin_at(now + t.margin_half_life, &t);
        assert!((half - (t.start_margin + (widened - t.start_margin) / 2.0)).abs() < 1e-9);
        assert!((b.margin_at(now + 100 * t.margin_half_life, &t) - t.start_margin).abs() < 1e-6);
        for _ in 0..100 {
            now += 10 * S;
            b.refuse(now, S, &t);
        }
        assert!((b.margin_at(now, &t) - t.max_margin).abs() < 1e-9);
        assert!(b.rate_at(now + S, &t) >= 20.0 * t.floor);
    }

    #[test]
    fn a_slot_that_changes_hands_leaves_a_guard_gap() {
        let t = Tuning::default();
        let mut b = BudgetState::fresh(20.0);
        let (a1, interval, _) = slots(b.reserve(0, (7, 1), S, &t));
        let (a2, _, _) = slots(b.reserve(0, (7, 1), S, &t));
        assert_eq!(a2 - a1, interval, "one process's slots: an interval apart");
        let (b1, _, _) = slots(b.reserve(0, (9, 1), S, &t));
        assert_eq!(
            b1 - a2,
            interval + t.handover,
            "another's: a guard gap more"
        );
        // Never more than a tenth of the interval.
        let mut fast = BudgetState::fresh(1000.0);
        let (x, interval, _) = slots(fast.reserve(0, (7, 1), S, &t));
        let (y, _, _) = slots(fast.reserve(0, (9, 1), S, &t));
        assert_eq!(y - x, interval + interval / 10);
        assert_ne!(owner_id("host:1"), owner_id("host:2"));
        assert_ne!(owner_id(""), 0);
    }

    #[test]
    fn a_lower_ceiling_takes_effect_at_once() {
        let t = Tuning::default();
        let mut b = BudgetState::fresh(20.0);
        b.refuse(0, S, &t);
        b.ceiling = 5.0;
        assert!(b.rate_at(60 * S, &t) <= 5.0);
        let (_, interval, _) = slots(b.reserve(60 * S, (1, 1), S, &t));
        assert!(interval >= S / 5);
    }
}
