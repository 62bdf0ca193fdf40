//! One retransmission engine for every request that waits for an answer over an
//! unreliable transport: STUN transactions (RFC 8489 §6.2.1), PCP requests (RFC 6887
//! §8.1.1) and NAT-PMP requests (RFC 6886 §3.1). Sans-IO like everything else here: a
//! [`Retransmit`] is told the time and says whether to send again or give up.
//!
//! All three RFCs schedule the same way: the first retransmission timeout (RTO) after the
//! first transmission, doubling after each retransmission (up to a ceiling, PCP's MRT),
//! for a number of transmissions (STUN's Rc; none for PCP, which retries for as long as
//! it wants the answer), then one last wait before giving up. Only that last wait differs:
//! Rm times the *initial* RTO for STUN, and simply the (doubled) RTO again for NAT-PMP.
//! A [`Schedule`] holds those parameters; its constructors give each RFC's figures.
//!
//! The next deadline is always counted from the moment the timeout is handled (`now`), as
//! the RFCs count from each transmission.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use pinhole::retransmit::{Due, Retransmit, Schedule};
//!
//! let t0 = Instant::now();
//! // RFC 8489 §6.2.1: RTO 500 ms, Rc 7, Rm 16.
//! let mut r = Retransmit::new(t0, Schedule::STUN);
//! assert_eq!(r.deadline(), t0 + Duration::from_millis(500));
//! assert_eq!(r.handle_timeout(t0), None); // not due yet
//! assert_eq!(r.handle_timeout(r.deadline()), Some(Due::Retransmit));
//! assert_eq!(r.deadline(), t0 + Duration::from_millis(1500));
//! ```

use std::time::{Duration, Instant};

/// How long to wait after the last transmission before giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LastWait {
    /// The RTO once more, doubled (and capped) as after every earlier transmission:
    /// RFC 6886 §3.1 (NAT-PMP's ninth attempt waits 64 s).
    Rto,
    /// This many times the *initial* RTO: RFC 8489 §6.2.1's Rm (16 by default: 8 s
    /// after the seventh transmission with an RTO of 500 ms).
    InitialRtoTimes(u32),
    /// A fixed time: RFC 8489 §6.2.2's Ti over a reliable transport, where nothing is
    /// retransmitted.
    Fixed(Duration),
}

/// A retransmission schedule: the RTO, its ceiling, how many transmissions and the last
/// wait. Build it with a constructor ([`Schedule::rfc8489`], [`Schedule::doubling`], …)
/// or use one of the RFCs' defaults ([`Schedule::STUN`], [`Schedule::NAT_PMP`],
/// [`Schedule::PCP`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Schedule {
    initial_rto: Duration,
    max_rto: Option<Duration>,
    max_transmits: Option<u32>,
    last_wait: LastWait,
}

impl Schedule {
    /// STUN over UDP with RFC 8489 §6.2.1's defaults: RTO 500 ms, Rc 7, Rm 16. The
    /// transmissions go at 0, 500, 1500, 3500, 7500, 15500 and 31500 ms, and the
    /// transaction fails at 39500 ms.
    pub const STUN: Schedule = Schedule::rfc8489(Duration::from_millis(500), 7, 16);

    /// NAT-PMP with RFC 6886 §3.1's figures: 250 ms, doubling, nine attempts, then 64 s
    /// more: the gateway is taken not to speak NAT-PMP 127.75 s after the first request.
    pub const NAT_PMP: Schedule = Schedule::doubling(Duration::from_millis(250), 9);

    /// PCP with RFC 6887 §8.1.1's figures: IRT 3 s, MRT 1024 s, MRC 0 and MRD 0 (no limit:
    /// the client retries for as long as it wants the mapping). The RFC's random factor
    /// (RAND, ±0.1) is left out: this schedule is deterministic.
    pub const PCP: Schedule = Schedule {
        initial_rto: Duration::from_secs(3),
        max_rto: Some(Duration::from_secs(1024)),
        max_transmits: None,
        last_wait: LastWait::Rto,
    };

    /// RFC 8489 §6.2.1 over UDP: `rto` first, doubling after each transmission, at most
    /// `rc` transmissions, and after the last a wait of `rm × rto`. `rc` 0 counts as 1.
    pub const fn rfc8489(rto: Duration, rc: u32, rm: u32) -> Self {
        Self {
            initial_rto: rto,
            max_rto: None,
            max_transmits: Some(if rc == 0 { 1 } else { rc }),
            last_wait: LastWait::InitialRtoTimes(rm),
        }
    }

    /// RFC 8489 §6.2.2 over a reliable transport: one transmission, an answer within `ti`.
    pub const fn reliable(ti: Duration) -> Self {
        Self {
            initial_rto: ti,
            max_rto: None,
            max_transmits: Some(1),
            last_wait: LastWait::Fixed(ti),
        }
    }

    /// RFC 6886 §3.1's shape: `rto` first, doubling after every transmission including
    /// the last, `transmits` transmissions (0 counts as 1).
    pub const fn doubling(rto: Duration, transmits: u32) -> Self {
        Self {
            initial_rto: rto,
            max_rto: None,
            max_transmits: Some(if transmits == 0 { 1 } else { transmits }),
            last_wait: LastWait::Rto,
        }
    }

    /// The same schedule with the RTO never above `max` (PCP's MRT).
    pub const fn with_max_rto(mut self, max: Duration) -> Self {
        self.max_rto = Some(max);
        self
    }

    /// The same schedule with at most `n` transmissions (0 counts as 1), or no limit
    /// (`None`: PCP's MRC 0).
    pub const fn with_max_transmits(mut self, n: Option<u32>) -> Self {
        self.max_transmits = match n {
            Some(0) => Some(1),
            n => n,
        };
        self
    }

    /// The first RTO.
    pub const fn initial_rto(&self) -> Duration {
        self.initial_rto
    }

    /// The most transmissions (`None`: no limit).
    pub const fn max_transmits(&self) -> Option<u32> {
        self.max_transmits
    }

    /// The wait after the last transmission.
    pub const fn last_wait(&self) -> LastWait {
        self.last_wait
    }

    fn is_last(&self, transmits: u32) -> bool {
        self.max_transmits.is_some_and(|max| transmits >= max)
    }

    /// The wait after transmission number `transmits`, whose RTO is `rto`.
    fn wait(&self, transmits: u32, rto: Duration) -> Duration {
        if !self.is_last(transmits) {
            return rto;
        }
        match self.last_wait {
            LastWait::Rto => rto,
            LastWait::InitialRtoTimes(rm) => self.initial_rto.saturating_mul(rm),
            LastWait::Fixed(d) => d,
        }
    }

    fn next_rto(&self, rto: Duration) -> Duration {
        let doubled = rto.saturating_mul(2);
        match self.max_rto {
            Some(max) => doubled.min(max),
            None => doubled,
        }
    }
}

/// What a due [`Retransmit`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Due {
    /// Send the request again now.
    Retransmit,
    /// The last wait is over: the request failed.
    GiveUp,
}

/// The retransmission state of one request, from its first transmission on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmit {
    schedule: Schedule,
    transmits: u32,
    rto: Duration,
    first_sent: Instant,
    deadline: Instant,
}

impl Retransmit {
    /// The request was first sent at `now`.
    pub fn new(now: Instant, schedule: Schedule) -> Self {
        let rto = match schedule.max_rto {
            Some(max) => schedule.initial_rto.min(max),
            None => schedule.initial_rto,
        };
        Self {
            schedule,
            transmits: 1,
            rto,
            first_sent: now,
            deadline: later(now, schedule.wait(1, rto)),
        }
    }

    /// When [`Retransmit::handle_timeout`] is next due.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// How many times the request has been sent.
    pub fn transmits(&self) -> u32 {
        self.transmits
    }

    /// When it was first sent.
    pub fn first_sent(&self) -> Instant {
        self.first_sent
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// `None` before the deadline; then [`Due::Retransmit`] (counted, and the next
    /// deadline set from `now`) or, once the last wait is over, [`Due::GiveUp`] (again at
    /// every later call).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Due> {
        if now < self.deadline {
            return None;
        }
        if self.schedule.is_last(self.transmits) {
            return Some(Due::GiveUp);
        }
        self.transmits = self.transmits.saturating_add(1);
        self.rto = self.schedule.next_rto(self.rto);
        self.deadline = later(now, self.schedule.wait(self.transmits, self.rto));
        Some(Due::Retransmit)
    }
}

/// `now + d`, or as late as the clock allows.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `s` with every timeout handled exactly at its deadline: the offsets of the
    /// transmissions and of the failure (at most `limit` transmissions looked at).
    fn timeline(s: Schedule, limit: u32) -> (Vec<Duration>, Option<Duration>) {
        let t0 = Instant::now();
        let mut r = Retransmit::new(t0, s);
        let mut sent = vec![Duration::ZERO];
        while sent.len() < limit as usize {
            let at = r.deadline();
            assert_eq!(r.handle_timeout(at - Duration::from_nanos(1)), None);
            match r.handle_timeout(at) {
                Some(Due::Retransmit) => sent.push(at - t0),
                Some(Due::GiveUp) => return (sent, Some(at - t0)),
                None => unreachable!("due at its deadline"),
            }
            assert_eq!(r.transmits() as usize, sent.len());
        }
        (sent, None)
    }

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn stun_follows_rfc8489_example() {
        // RFC 8489 §6.2.1: "with an RTO of 500 ms, requests would be sent at times 0 ms,
        // 500 ms, 1500 ms, 3500 ms, 7500 ms, 15500 ms, and 31500 ms. If the client has not
        // received a response after 39500 ms, the client will consider the transaction to
        // have timed out."
        let (sent, failed) = timeline(Schedule::STUN, 100);
        assert_eq!(sent, ms(&[0, 500, 1500, 3500, 7500, 15500, 31500]));
        assert_eq!(failed, Some(Duration::from_millis(39500)));
    }

    #[test]
    fn stun_over_a_reliable_transport_waits_ti_once() {
        // RFC 8489 §6.2.2: no retransmission; Ti = 39.5 s.
        let (sent, failed) = timeline(Schedule::reliable(Duration::from_millis(39_500)), 100);
        assert_eq!(sent, ms(&[0]));
        assert_eq!(failed, Some(Duration::from_millis(39_500)));
    }

    #[test]
    fn one_transmission_waits_rm_times_the_rto() {
        // RFC 8489 §6.2.1: after the last request (here the only one), Rm × RTO.
        let (sent, failed) = timeline(Schedule::rfc8489(Duration::from_millis(100), 1, 16), 10);
        assert_eq!(sent, ms(&[0]));
        assert_eq!(failed, Some(Duration::from_millis(1600)));
    }

    #[test]
    fn natpmp_follows_rfc6886() {
        // RFC 6886 §3.1: 250 ms, doubling, "after sending its ninth attempt (and then
        // waiting for 64 seconds)" the gateway does not support NAT-PMP.
        let (sent, failed) = timeline(Schedule::NAT_PMP, 100);
        assert_eq!(
            sent,
            ms(&[0, 250, 750, 1750, 3750, 7750, 15750, 31750, 63750])
        );
        assert_eq!(failed, Some(Duration::from_millis(63750 + 64_000)));
    }

    #[test]
    fn pcp_follows_rfc6887_without_rand() {
        // RFC 6887 §8.1.1: IRT 3 s, RT doubling, capped at MRT 1024 s, MRC 0: no limit.
        let (sent, failed) = timeline(Schedule::PCP, 12);
        let want: Vec<Duration> = [0u64, 3, 9, 21, 45, 93, 189, 381, 765, 1533, 2557, 3581]
            .iter()
            .map(|&s| Duration::from_secs(s))
            .collect();
        assert_eq!(sent, want);
        assert_eq!(failed, None);
    }

    #[test]
    fn cut_short_natpmp_is_the_mappers_schedule() {
        // The port mapper's requests: RFC 6886's schedule cut to three transmissions, at
        // 0, 250 and 750 ms, failing at 1750 ms (the third RTO, 1 s, after the last).
        use crate::portmap::{REQUEST_LAST_WAIT, REQUEST_RTO, REQUEST_SCHEDULE};
        let (sent, failed) = timeline(REQUEST_SCHEDULE, 10);
        assert_eq!(sent, ms(&[0, 250, 750]));
        assert_eq!(failed, Some(Duration::from_millis(1750)));
        assert_eq!(failed, Some(REQUEST_RTO * 3 + REQUEST_LAST_WAIT));
    }

    #[test]
    fn the_stun_clients_defaults_are_rfc8489s() {
        use crate::Protocol;
        use crate::stun::ClientConfig;
        let c = ClientConfig::default();
        assert_eq!(c.schedule(Protocol::Udp), Schedule::STUN);
        assert_eq!(
            c.schedule(Protocol::Tcp),
            Schedule::reliable(Duration::from_millis(39_500))
        );
    }

    #[test]
    fn deadlines_count_from_when_the_timeout_is_handled() {
        let t0 = Instant::now();
        let mut r = Retransmit::new(t0, Schedule::STUN);
        let late = t0 + Duration::from_millis(700);
        assert_eq!(r.handle_timeout(late), Some(Due::Retransmit));
        assert_eq!(r.deadline(), late + Duration::from_millis(1000));
        assert_eq!(r.first_sent(), t0);
    }

    #[test]
    fn giving_up_is_sticky_and_extremes_do_not_overflow() {
        let t0 = Instant::now();
        let mut r = Retransmit::new(t0, Schedule::doubling(Duration::from_millis(1), 1));
        let at = r.deadline();
        assert_eq!(r.handle_timeout(at), Some(Due::GiveUp));
        assert_eq!(
            r.handle_timeout(at + Duration::from_secs(1)),
            Some(Due::GiveUp)
        );
        assert_eq!(r.transmits(), 1);

        let huge = Schedule::rfc8489(Duration::MAX, 3, u32::MAX);
        let mut r = Retransmit::new(t0, huge);
        assert!(r.deadline() > t0);
        assert_eq!(r.handle_timeout(r.deadline()), Some(Due::Retransmit));
        let capped =
            Schedule::doubling(Duration::from_secs(10), 5).with_max_rto(Duration::from_secs(15));
        let (sent, failed) = timeline(capped, 10);
        assert_eq!(
            sent,
            [0u64, 10, 25, 40, 55].map(Duration::from_secs).to_vec()
        );
        assert_eq!(failed, Some(Duration::from_secs(70)));
    }
}
