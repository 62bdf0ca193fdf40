//! Keepalive policies and the adaptive keepalive interval of an idle path (issue 14).
//!
//! An app on a phone pays for every packet it sends while idle: each one wakes the radio.
//! RFC 7675's consent checks every 5 s (and TURN's 5 s liveness check) are right while the
//! app is in front of its user, and wasteful in the background, where the only job is to
//! keep the NAT bindings of the path in use from expiring. So the agent runs under a
//! [`KeepalivePolicy`]:
//!
//! - [`KeepalivePolicy::Foreground`] (the default): RFC 7675, checks every 4–6 s on
//!   the selected pair and consent lost after 30 s without an answer; a path that stops
//!   answering is probed and given up within seconds
//!   ([`super::agent::UNANSWERED_CHECK`]).
//! - [`KeepalivePolicy::Background`]: one round (a check and its answer) per keepalive
//!   interval on the selected pair, an interval that adapts to the NATs
//!   ([`AdaptiveInterval`]). One round refreshes both NATs' bindings (the request leaves
//!   one NAT and enters the other, the answer does the opposite), so one side keeps the
//!   path: the controlling agent (the *keeper*) sends its check at 95–100 % of its
//!   interval; the controlled agent (the *watcher*) answers, and checks by itself only
//!   when the keeper's round is late (1.45 times the keeper's last pace: the keeper's
//!   check was lost to a binding that expired on the watcher's side, which only the
//!   watcher's own packet can make again), or when it has not seen the keeper's pace yet
//!   (a little after its own interval). Any check from the peer postpones one's own. A
//!   peer that checks more often (a foreground one, another stack's consent) keeps the
//!   path by itself and this side only answers. The path is given up when nothing was
//!   heard on it (an answer, or the peer's authenticated check) for two intervals and a
//!   margin (at least RFC 7675's 30 s). That departs from RFC 7675 §5.1 on purpose, and
//!   only while the app asked for it: consent protects a peer from traffic it no longer
//!   wants, and a peer whose authenticated checks arrive on the pair wants it.
//! - [`KeepalivePolicy::Suspended`]: nothing at all; no consent deadline runs (a suspended
//!   app sends nothing to anyone, so nobody's consent is at stake).
//!
//! Leaving `Suspended` (or `Background` for `Foreground`) is a resume: a check goes at once
//! on the selected pair and on every other valid pair, and a pair that neither answers nor
//! is checked by the peer within [`RESUME_PROBE`] is given up: the agent moves to one that
//! answered, or, with none left, stays disconnected while the peer connection restarts
//! ICE. In the background a round's check goes three times (0, 250 and 750 ms by default)
//! before the round counts as failed: the watcher's own check repairs it.
//!
//! **How the interval adapts.** It starts at [`INITIAL_INTERVAL`] (25 s, under the 30 s
//! that the shortest common NAT UDP timeouts give). The peer's check arriving after a
//! silence of `g` on the path proves that our NAT kept the binding through `g`; the
//! keeper's own check answered at the first try is weaker proof (its NAT may have made
//! the binding afresh on the same port, and the watcher may have sent what never reached
//! it), which may grow the interval but not lift a ceiling that a failure set. Each round
//! proven near the interval grows it to [`GROWTH`] (1.3) times the silence proven, up to
//! [`MAX_INTERVAL`]. A round of ours that needed a retransmission or got no answer after
//! a silence of `g` means a binding expired within `g`: the interval drops to [`MARGIN`]
//! (80 %) of `g` and does not grow past that again unless the peer's check proves a
//! longer silence. With a 120 s NAT this settles after a failure or two at about 100 s,
//! reached in about 7 minutes: 0.6 rounds a minute. What was learned belongs to the
//! selected pair; another pair starts again from 25 s.

use std::time::Duration;

/// How hard the connection works to keep an idle path alive. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeepalivePolicy {
    /// The app is in front of its user: RFC 7675 consent every 4–6 s (a dead path is
    /// noticed within 30 s), TURN allocations checked every 5 s.
    #[default]
    Foreground,
    /// The app is in the background: the fewest packets that keep the path's NAT
    /// bindings alive (one check per adapted interval, shared with the peer); no TURN
    /// liveness checks, a keepalive indication to a TURN server once per interval.
    Background,
    /// The app is suspended: no keepalives, no consent deadline. On resume (any other
    /// policy) the path is probed and, when it is gone, ICE restarts.
    Suspended,
}

/// The first keepalive interval in the background: RFC 4787 REQ-5 asks NATs for at least
/// 2 min, but 30 s is common in deployed ones; 25 s stays under it.
pub const INITIAL_INTERVAL: Duration = Duration::from_secs(25);
/// The shortest interval the adaptation goes down to (RFC 8445 §11's Tr floor is 15 s; a
/// NAT that forgets faster than this is kept by these 10 s checks all the same).
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
/// The longest interval: 80 % of the 5 min that RFC 4787 REQ-5 recommends as a NAT's UDP
/// mapping timeout.
pub const MAX_INTERVAL: Duration = Duration::from_secs(240);
/// How much each proven round grows the interval (of the silence proven). Small steps
/// keep the controlling agent's rounds predictable for the controlled one, which checks
/// by itself only when a round is late.
pub const GROWTH: f64 = 1.3;
/// The interval after a failure, of the silence that a binding did not survive.
pub const MARGIN: f64 = 0.8;
/// How long a resumed path has to answer before it is given up.
pub const RESUME_PROBE: Duration = Duration::from_secs(4);

/// The keepalive interval that adapts to what the path's NATs keep. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdaptiveInterval {
    fixed: Option<Duration>,
    interval: Duration,
    /// The longest silence the path was seen to survive.
    proven: Duration,
    /// The shortest silence after which a round needed a retransmission or failed.
    failed: Option<Duration>,
}

impl AdaptiveInterval {
    /// Starting at [`INITIAL_INTERVAL`]; `fixed` pins it (no adaptation), within 1 s and
    /// 1 h (a shorter one would flood the path, a longer one outlives any NAT binding).
    #[must_use]
    pub fn new(fixed: Option<Duration>) -> Self {
        let fixed = fixed.map(|f| f.clamp(Duration::from_secs(1), Duration::from_secs(3600)));
        Self {
            fixed,
            interval: fixed.unwrap_or(INITIAL_INTERVAL),
            proven: Duration::ZERO,
            failed: None,
        }
    }

    /// The interval now.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The longest silence proven survivable so far.
    #[must_use]
    pub fn proven(&self) -> Duration {
        self.proven
    }

    /// The shortest silence that a binding did not survive, if one was seen.
    #[must_use]
    pub fn failed(&self) -> Option<Duration> {
        self.failed
    }

    /// A new path: what was learned was about another one.
    pub fn reset(&mut self) {
        *self = Self::new(self.fixed);
    }

    fn ceiling(&self) -> Duration {
        self.failed
            .map_or(MAX_INTERVAL, |f| f.mul_f64(MARGIN))
            .clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    /// A round went through at the first try after `silence` on the path. Returns whether
    /// the interval changed.
    pub fn survived(&mut self, silence: Duration) -> bool {
        self.proven = self.proven.max(silence);
        if self.failed.is_some_and(|f| silence >= f) {
            // That failure was a loss, not an expiry: the binding outlives it.
            self.failed = None;
        }
        if self.fixed.is_some() || silence < self.interval.mul_f64(0.75) {
            // Not an idle round near the interval: it proves nothing about a longer one.
            return false;
        }
        // Half again what was proven (not of the interval: a side whose peer keeps the
        // path with shorter rounds must not grow past what those rounds prove).
        let next = silence.mul_f64(GROWTH).min(self.ceiling());
        let changed = next > self.interval;
        self.interval = self.interval.max(next);
        changed
    }

    /// Our check was answered at the first try after `silence`: weaker proof than
    /// [`Self::survived`] (see the module docs), so it grows the interval but never lifts
    /// the ceiling a failure set. Returns whether the interval changed.
    pub fn answered(&mut self, silence: Duration) -> bool {
        if self.failed.is_some_and(|f| silence >= f) {
            return false;
        }
        let failed = self.failed;
        let changed = self.survived(silence);
        self.failed = failed;
        changed
    }

    /// A round of ours needed a retransmission or got no answer after `silence` on the
    /// path: a binding expired within it. Returns whether the interval changed.
    pub fn expired(&mut self, silence: Duration) -> bool {
        if self.fixed.is_some() || silence < MIN_INTERVAL.mul_f64(0.75) {
            // Not an idle round: a loss while the path was busy says nothing of the NATs.
            return false;
        }
        self.failed = Some(self.failed.map_or(silence, |f| f.min(silence)));
        let next = self.ceiling().min(self.interval);
        let changed = next != self.interval;
        self.interval = next;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Rounds at the interval against a NAT that forgets after `timeout`: the interval
    /// the adaptation settles on, and how many rounds failed on the way.
    fn settle(timeout: Duration, rounds: usize) -> (Duration, usize) {
        let mut a = AdaptiveInterval::new(None);
        let mut failures = 0;
        for _ in 0..rounds {
            let silence = a.interval();
            if silence < timeout {
                a.survived(silence);
            } else {
                failures += 1;
                a.expired(silence);
            }
        }
        (a.interval(), failures)
    }

    #[test]
    fn settles_under_the_nat_timeout_after_a_failure_or_two() {
        for (timeout, lo, most) in [(120, 90, 1), (30, 20, 2), (300, 200, 0), (65, 48, 2)] {
            let (interval, failures) = settle(s(timeout), 40);
            assert!(interval < s(timeout), "{timeout}: {interval:?}");
            assert!(interval >= s(lo), "{timeout}: {interval:?}");
            assert!(failures <= most, "{timeout}: {failures}");
        }
        assert_eq!(settle(s(120), 40).1, 1);
    }

    #[test]
    fn without_a_nat_it_grows_to_the_cap_and_stays() {
        let (interval, failures) = settle(s(100_000), 40);
        assert_eq!(interval, MAX_INTERVAL);
        assert_eq!(failures, 0);
    }

    #[test]
    fn a_nat_shorter_than_the_start_brings_it_down_to_the_floor_at_most() {
        let (interval, _) = settle(s(12), 10);
        assert!(interval < s(12) && interval >= MIN_INTERVAL, "{interval:?}");
        let (interval, _) = settle(s(5), 10);
        assert_eq!(interval, MIN_INTERVAL);
    }

    #[test]
    fn busy_rounds_teach_nothing() {
        let mut a = AdaptiveInterval::new(None);
        assert!(!a.survived(s(1)));
        assert!(!a.expired(s(2)));
        assert_eq!(a.interval(), INITIAL_INTERVAL);
        assert_eq!(a.failed(), None);
    }

    #[test]
    fn a_loss_disproved_later_lifts_the_ceiling() {
        let mut a = AdaptiveInterval::new(None);
        a.survived(s(25));
        a.expired(s(37));
        assert_eq!(a.failed(), Some(s(37)));
        let capped = a.interval();
        assert!(capped < s(30));
        a.survived(s(40));
        assert_eq!(a.failed(), None);
        a.survived(a.interval());
        assert!(a.interval() > capped);
    }

    #[test]
    fn our_own_answered_rounds_grow_it_but_never_lift_a_failure() {
        let mut a = AdaptiveInterval::new(None);
        assert!(a.answered(s(25)));
        assert_eq!(a.interval(), s(32) + Duration::from_millis(500));
        a.expired(s(37));
        let capped = a.interval();
        assert!(!a.answered(s(40)));
        assert_eq!(a.failed(), Some(s(37)));
        assert_eq!(a.interval(), capped);
        // The peer's check is proof enough.
        a.survived(s(40));
        assert_eq!(a.failed(), None);
    }

    #[test]
    fn a_fixed_interval_never_moves() {
        let mut a = AdaptiveInterval::new(Some(s(15)));
        assert!(!a.survived(s(15)));
        assert!(!a.expired(s(15)));
        assert_eq!(a.interval(), s(15));
        a.reset();
        assert_eq!(a.interval(), s(15));
        assert_eq!(AdaptiveInterval::new(Some(Duration::ZERO)).interval(), s(1));
    }
}
