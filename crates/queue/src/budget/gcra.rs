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
//!
//! A budget can also *learn* the server's limit (`--api-rate auto`): the ceiling is then a
//! learned limit, capped by the rates the processes were given. It starts low and doubles
//! while the budget is used to the full and no 429 comes (a slow start); a 429 sets it to
//! the rate that drew it. From there it holds for a plateau, then probes upwards, slowly at
//! first and faster the longer the server accepts, until the next 429 sets it again. Only
//! time the budget is used to the full counts: an idle budget learns nothing.

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
    // The top bit dropped, not the sign clamped: clamped, every name whose hash has the
    // top bit set (half of them) shared one id, and two such processes handed slots over
    // with no guard gap (measured: 429s at three processes, one run in two).
    ((hash >> 1) as i64).max(1)
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
    /// A learning budget with nothing learned starts at this many calls per second.
    pub learn_start: f64,
    /// ...and doubles its learned limit every this long while no 429 comes.
    pub learn_double: Micros,
    /// After a 429 the learned limit holds this long before it probes upwards.
    pub learn_plateau: Micros,
    /// Probing raises the learned limit by this fraction times the square of the seconds
    /// since the plateau ended.
    pub learn_probe: f64,
    /// The learned limit never falls below this many calls per second.
    pub learn_floor: f64,
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
            learn_start: 4.0,
            learn_double: 700_000,
            learn_plateau: 30 * 1_000_000,
            learn_probe: 0.001,
            learn_floor: 1.0,
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
    /// Whether a live process sharing the budget learns the server's limit: the rate then
    /// stays under [`learned_limit_at`](Self::learned_limit_at) too.
    pub learning: bool,
    /// The learned limit in calls per second: the rate that drew the last 429, or the
    /// start when none came yet (`0`: nothing learned).
    pub learned: f64,
    /// When the learned limit was set; only time the budget is used to the full since
    /// counts for its climb.
    pub learned_at: Micros,
    /// The rate handed out when the last 429 came (`0`: none yet, a slow start).
    pub refused_rate: f64,
    /// When that 429 came.
    pub refused_at: Micros,
}

/// Where a learning budget is in its learning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnPhase {
    /// No 429 yet: doubling while used to the full.
    Climbing,
    /// Holding the rate the last 429 taught, for the plateau.
    Holding,
    /// Past the plateau with no 429: raising it again.
    Probing,
}

impl LearnPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            LearnPhase::Climbing => "climbing",
            LearnPhase::Holding => "holding",
            LearnPhase::Probing => "probing",
        }
    }
}

/// What a reservation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// `count` slots: the first at `first`, then one every `interval`.
    Granted {
        first: Micros,
        interval: Micros,
        count: u32,
        /// The slot before `first` went to another process: the budget is shared now.
        after_another: bool,
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
            learning: false,
            learned: 0.0,
            learned_at: 0,
            refused_rate: 0.0,
            refused_at: 0,
        }
    }

    /// Starts learning at `now` from `learned` calls per second (`0`: the tuning's start),
    /// with the last 429 at `refused_rate` (`0`: none yet: a slow start).
    pub fn learn_from(
        &mut self,
        now: Micros,
        learned: f64,
        refused: (f64, Micros),
        tuning: &Tuning,
    ) {
        self.learning = true;
        self.learned = if learned > 0.0 {
            learned.max(tuning.learn_floor)
        } else {
            tuning.learn_start
        };
        self.learned_at = now;
        (self.refused_rate, self.refused_at) = refused;
        // What was cut for another limit does not apply to this one.
        self.cut_rate = 0.0;
    }

    /// The learned limit at `now` (calls per second, uncapped): rising from
    /// [`learned`](Self::learned) as described in the module's notes. `None` when the
    /// budget does not learn.
    pub fn learned_limit_at(&self, now: Micros, tuning: &Tuning) -> Option<f64> {
        if !self.learning || self.learned <= 0.0 {
            return None;
        }
        let since = (now - self.learned_at).max(0) as f64 / SECOND;
        let grown = if self.refused_rate <= 0.0 {
            let doublings = since / (tuning.learn_double.max(1) as f64 / SECOND);
            self.learned * 2f64.powf(doublings.min(60.0))
        } else {
            let probing = (since - tuning.learn_plateau as f64 / SECOND).max(0.0);
            self.learned * (1.0 + tuning.learn_probe * probing * probing)
        };
        Some(grown.max(tuning.learn_floor))
    }

    /// Where a learning budget is in its learning at `now` (`None`: it never learned).
    pub fn learn_phase_at(&self, now: Micros, tuning: &Tuning) -> Option<LearnPhase> {
        if self.learned <= 0.0 {
            return None;
        }
        let mut probe = *self;
        probe.learning = true;
        let limit = probe.learned_limit_at(now, tuning)?;
        Some(if self.refused_rate <= 0.0 {
            LearnPhase::Climbing
        } else if limit > self.learned * (1.0 + 1e-9) {
            LearnPhase::Probing
        } else {
            LearnPhase::Holding
        })
    }

    /// The limit the budget runs under at `now`: the ceiling, or the learned limit when
    /// that is lower.
    pub fn limit_at(&self, now: Micros, tuning: &Tuning) -> f64 {
        match self.learned_limit_at(now, tuning) {
            Some(learned) => learned.min(self.ceiling),
            None => self.ceiling,
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
        let limit = self.limit_at(now, tuning);
        let target = limit * (1.0 - self.margin_at(now, tuning));
        let rate = if self.cut_rate <= 0.0 {
            target
        } else {
            let climbing = (now - self.cut_at).max(0) as f64 / SECOND;
            target.min(self.cut_rate + tuning.climb * limit * climbing)
        };
        rate.max(limit * tuning.floor).max(f64::MIN_POSITIVE)
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
        if self.learning && self.tat < now && self.learned_at < now {
            // The budget was not used to the full since `tat`: that time teaches nothing.
            self.learned_at = (self.learned_at + (now - self.tat)).min(now);
        }
        let interval = (SECOND / self.rate_at(now, tuning)).ceil() as Micros;
        let after_another = self.last_owner != 0 && self.last_owner != owner;
        let handover = if after_another {
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
            after_another,
        }
    }

    /// The server refused a call at `now` and asked for `retry_after`: every process pauses
    /// that long. The first refusal of a pause also cuts the rate and widens the margin;
    /// refusals of calls already on their way when the pause began only lengthen it.
    pub fn refuse(&mut self, now: Micros, retry_after: Micros, tuning: &Tuning) {
        self.refuse_sent(now, now, retry_after, tuning);
    }

    /// As [`refuse`](Self::refuse), for a call that left at `sent`: a learning budget
    /// learns the rate the server last accepted before it, not the one it climbed to
    /// while the answer was on its way.
    pub fn refuse_sent(&mut self, now: Micros, sent: Micros, retry_after: Micros, tuning: &Tuning) {
        let until = now + retry_after.max(0);
        if now < self.paused_until {
            self.paused_until = self.paused_until.max(until);
            return;
        }
        let rate = self.rate_at(now, tuning);
        let margin = self.margin_at(now, tuning);
        let mut limit = self.limit_at(now, tuning);
        // A learning budget that was climbing (slow start or probing) found the server's
        // limit: that is news, not jitter, and widens no margin.
        let discovered = match self.learned_limit_at(now, tuning) {
            Some(learned) => self.refused_rate <= 0.0 || learned > self.learned * (1.0 + 1e-9),
            None => false,
        };
        if !discovered {
            self.margin = (margin + tuning.margin_step).min(tuning.max_margin);
            self.margin_at = now;
        }
        if self.learning {
            let sent = sent.min(now);
            let sent_rate = self.rate_at(sent, tuning);
            // Refused while holding: jitter (a burst of late calls, not the rate) as far as
            // the margin can absorb it; once the margin is as wide as it gets, the server's
            // limit dropped, and the learned limit steps down.
            if !discovered {
                if margin + tuning.margin_step > tuning.max_margin {
                    let lower = self.learned * (1.0 - tuning.margin_step);
                    self.learned = lower.max(tuning.learn_floor);
                }
            } else {
                // Its slot was reserved a little ahead, at a rate computed a slot earlier:
                // the rate of a few intervals back is the last the server took, less a step
                // for the calls that left late and bunched up.
                let back = (3.0 * SECOND / sent_rate) as Micros;
                let accepted = self.rate_at(sent - back, tuning).min(rate);
                self.learned = (accepted * (1.0 - tuning.margin_step)).max(tuning.learn_floor);
            }
            self.learned_at = until;
            self.refused_rate = sent_rate;
            self.refused_at = now;
            limit = self.limit_at(until, tuning);
        }
        self.cut_rate = (rate * tuning.cut).max(limit * tuning.floor);
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
                ..
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
    fn every_process_has_an_owner_id_of_its_own() {
        let ids: std::collections::HashSet<i64> = (1..=5_000)
            .map(|pid| owner_id(&format!("host:builder-7:pid:{pid}:run:3f2a")))
            .collect();
        assert_eq!(ids.len(), 5_000, "two processes share an id");
        assert!(ids.iter().all(|id| *id > 0));
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

    /// A budget that learns, used to the full against a strict server (a bucket of burst 1
    /// at `limit`, a second's `Retry-After`) for `secs`: (calls accepted, 429s, the rate
    /// handed out at the end).
    fn against_strict_server(
        b: &mut BudgetState,
        limit: f64,
        secs: i64,
        t: &Tuning,
    ) -> (u32, u32, f64) {
        let mut now = 100 * S;
        let end = now + secs * S;
        let mut server_tat = 0;
        let (mut accepted, mut refused) = (0, 0);
        let spacing = (SECOND / limit) as Micros;
        while now < end {
            match b.reserve(now, (1, 1), 100 * MS, t) {
                Reservation::NotBefore(at) => now = at,
                Reservation::Granted { first, .. } => {
                    now = first;
                    if first < server_tat {
                        refused += 1;
                        b.refuse_sent(first + 5 * MS, first, S, t);
                    } else {
                        accepted += 1;
                        server_tat = first + spacing;
                    }
                }
            }
        }
        (accepted, refused, b.rate_at(end, t))
    }

    fn learning(ceiling: f64, now: Micros, t: &Tuning) -> BudgetState {
        let mut b = BudgetState::fresh(ceiling);
        b.learn_from(now, 0.0, (0.0, 0), t);
        b
    }

    #[test]
    fn a_learning_budget_starts_low_and_doubles_while_used_to_the_full() {
        let t = Tuning::default();
        let b = learning(1000.0, 0, &t);
        assert_eq!(b.limit_at(0, &t), t.learn_start);
        let doubled = b.limit_at(t.learn_double, &t);
        assert!((doubled - 2.0 * t.learn_start).abs() < 1e-9, "{doubled}");
        // Capped by the ceiling it was given (`auto:N/s`).
        let capped = learning(30.0, 0, &t);
        assert_eq!(capped.limit_at(60 * S, &t), 30.0);
        // A budget that does not learn runs at its ceiling.
        assert_eq!(BudgetState::fresh(30.0).limit_at(0, &t), 30.0);
    }

    #[test]
    fn an_idle_learning_budget_learns_nothing() {
        let t = Tuning::default();
        let mut b = learning(1000.0, 0, &t);
        slots(b.reserve(0, (1, 1), 100 * MS, &t));
        // Nobody calls for a minute: the limit has not doubled 120 times meanwhile.
        slots(b.reserve(60 * S, (1, 1), 100 * MS, &t));
        assert!(
            b.limit_at(60 * S, &t) <= 2.0 * t.learn_start,
            "{}",
            b.limit_at(60 * S, &t)
        );
    }

    #[test]
    fn a_429_sets_the_learned_limit_to_the_rate_that_drew_it_then_it_holds_and_probes() {
        let t = Tuning::default();
        let mut b = learning(1000.0, 0, &t);
        let at = 2 * S;
        let rate = b.rate_at(at, &t);
        b.refuse(at, S, &t);
        // The rate a few slots before the 429 (the last the server is known to have taken),
        // less a step.
        assert!(
            b.learned < rate && b.learned > 0.75 * rate,
            "{} vs {rate}",
            b.learned
        );
        assert_eq!((b.refused_rate, b.refused_at), (rate, at));
        let rate = b.learned;
        // A discovery widens no margin...
        assert_eq!(b.margin_at(at, &t), t.start_margin);
        // ...it holds through the plateau...
        let plateau_end = at + S + t.learn_plateau;
        assert!((b.limit_at(plateau_end, &t) - rate).abs() < 1e-9);
        // ...then probes upwards, faster the longer the server accepts.
        let after10 = b.limit_at(plateau_end + 10 * S, &t) / rate - 1.0;
        let after20 = b.limit_at(plateau_end + 20 * S, &t) / rate - 1.0;
        assert!((after10 - 100.0 * t.learn_probe).abs() < 1e-9, "{after10}");
        assert!(after20 > 3.0 * after10, "{after20} vs {after10}");
        // Refused while probing: a discovery again, at the probed rate.
        let probed = b.rate_at(plateau_end + 20 * S, &t);
        b.refuse(plateau_end + 20 * S, S, &t);
        assert!(
            b.learned <= probed && b.learned > 0.97 * probed,
            "{} vs {probed}",
            b.learned
        );
        assert!(b.learned > rate);
        // Refused while holding: jitter, as far as the margin absorbs it: the margin widens,
        // the limit stays...
        let held = b.learned;
        let mut later = plateau_end + 25 * S;
        b.refuse(later, S, &t);
        assert_eq!(b.learned, held);
        assert!(b.margin_at(later, &t) > t.start_margin);
        // ...and only once the margin is as wide as it gets, the limit steps down.
        let mut margin = b.margin_at(later, &t);
        while b.learned == held {
            later += 5 * S;
            margin = b.margin_at(later, &t);
            b.refuse(later, S, &t);
        }
        assert!(
            margin + t.margin_step > t.max_margin,
            "stepped down at {margin}"
        );
        assert!((b.learned - held * (1.0 - t.margin_step)).abs() < 1e-9);
    }

    #[test]
    fn a_learning_budget_finds_a_strict_servers_limit_and_settles_just_under_it() {
        let t = Tuning::default();
        for limit in [20.0, 37.0] {
            let mut b = learning(1000.0, 0, &t);
            let (accepted, refused, _) = against_strict_server(&mut b, limit, 40, &t);
            let settled = b.learned * (1.0 - b.margin_at(b.learned_at, &t));
            assert!(
                settled <= limit && settled >= 0.93 * limit,
                "settled at {settled} under {limit}"
            );
            let efficiency = f64::from(accepted) / (40.0 * limit);
            assert!(
                efficiency >= 0.85,
                "{efficiency} of {limit}/s with {refused} 429s"
            );
            assert!(refused <= 3, "{refused} 429s finding {limit}/s");
            // What it learned, a second run starts from: no slow start, no 429.
            let mut next = BudgetState::fresh(1000.0);
            next.learn_from(0, b.learned, (b.refused_rate, b.refused_at), &t);
            let (accepted, refused, _) = against_strict_server(&mut next, limit, 20, &t);
            assert_eq!(refused, 0, "{limit}/s learned: {}", b.learned);
            assert!(
                f64::from(accepted) >= 0.93 * 20.0 * limit,
                "{accepted} at {limit}/s"
            );
        }
    }
}
