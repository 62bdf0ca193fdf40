//! Per-source token buckets for the servers: a bounded table keyed by IP address, sans-IO
//! (time is passed in).
//!
//! Both development servers use it: the STUN server to bound what any one source can make
//! it send (a Binding response is larger than its request, and RESPONSE-PORT lets a
//! spoofer pick the port it goes to), the TURN server to bound unauthenticated answers and
//! failed authentication attempts. Keys are IP addresses, not transport addresses: a
//! source that changes its port is the same source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A rate: `per_second` tokens refill every second, up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: u32,
    /// The most tokens a source can hold: what it may spend at once after a pause.
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` with a burst of twice that (at least 1).
    pub const fn per_second(per_second: u32) -> Self {
        Self {
            per_second,
            burst: if per_second == 0 {
                1
            } else {
                per_second.saturating_mul(2)
            },
        }
    }
}

/// At most this many sources are tracked at once. When the table is full, sources whose
/// bucket has refilled (equivalent to not being tracked) are forgotten; if none has, a
/// new source shares one overflow bucket, so a flood from many addresses is still bounded.
pub const DEFAULT_MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in millionths (integer arithmetic: no float drift, no NaN).
    micro_tokens: u64,
    last: Instant,
}

/// Token buckets per source IP. See the module docs.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    max_sources: usize,
    table: HashMap<IpAddr, Bucket>,
    overflow: Option<Bucket>,
    /// When the full table was last swept: at most once a second, so that a flood of new
    /// (spoofed) sources cannot make every datagram pay for a scan of the table.
    last_sweep: Option<Instant>,
}

const MICRO: u64 = 1_000_000;

/// The key of a source: its IPv4 address, or its IPv6 /64 (one host commonly holds a whole
/// /64, so per-address keys would let it take the table).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

impl RateLimiter {
    /// A limiter tracking at most [`DEFAULT_MAX_SOURCES`] sources.
    pub fn new(limit: RateLimit) -> Self {
        Self::with_max_sources(limit, DEFAULT_MAX_SOURCES)
    }

    /// A limiter tracking at most `max_sources` sources (at least 1).
    pub fn with_max_sources(limit: RateLimit, max_sources: usize) -> Self {
        Self {
            limit,
            max_sources: max_sources.max(1),
            table: HashMap::new(),
            overflow: None,
            last_sweep: None,
        }
    }

    /// The configured rate.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// How many sources are tracked.
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    fn capacity(&self) -> u64 {
        u64::from(self.limit.burst.max(1)) * MICRO
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.last);
        let add = elapsed
            .as_micros()
            .saturating_mul(u128::from(self.limit.per_second));
        let add = u64::try_from(add).unwrap_or(u64::MAX);
        b.micro_tokens = b.micro_tokens.saturating_add(add).min(self.capacity());
        b.last = b.last.max(now);
    }

    /// Whether `source` may do one more thing now; if so, it is counted.
    pub fn allow(&mut self, now: Instant, source: IpAddr) -> bool {
        self.take(now, source, true)
    }

    /// Whether `source` has a token now, without spending it.
    pub fn check(&mut self, now: Instant, source: IpAddr) -> bool {
        self.take(now, source, false)
    }

    /// Spends a token of `source` if it has one (for counting failures after the fact).
    pub fn spend(&mut self, now: Instant, source: IpAddr) {
        let _ = self.take(now, source, true);
    }

    fn take(&mut self, now: Instant, source: IpAddr, spend: bool) -> bool {
        let source = key(source);
        let full = Bucket {
            micro_tokens: self.capacity(),
            last: now,
        };
        if !self.table.contains_key(&source)
            && self.table.len() >= self.max_sources
            && self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.last_sweep = Some(now);
            self.forget_refilled(now);
        }
        let mut bucket = match self.table.get(&source) {
            Some(b) => *b,
            None if self.table.len() < self.max_sources => full,
            None => self.overflow.unwrap_or(full),
        };
        self.refill(&mut bucket, now);
        let ok = bucket.micro_tokens >= MICRO;
        if ok && spend {
            bucket.micro_tokens -= MICRO;
        }
        if self.table.contains_key(&source) || self.table.len() < self.max_sources {
            self.table.insert(source, bucket);
        } else {
            self.overflow = Some(bucket);
        }
        ok
    }

    /// Drops sources whose bucket is full again: they behave exactly like new ones.
    fn forget_refilled(&mut self, now: Instant) {
        let cap = self.capacity();
        let per_second = u64::from(self.limit.per_second);
        self.table.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last);
            let refill_needed = cap.saturating_sub(b.micro_tokens);
            // Seconds × per_second × MICRO tokens accrue; keep what is not full yet.
            let accrued = u64::try_from(elapsed.as_micros())
                .unwrap_or(u64::MAX)
                .saturating_mul(per_second);
            accrued < refill_needed
        });
    }

    /// How long until `source` has a token again (zero when it has one).
    pub fn wait(&self, now: Instant, source: IpAddr) -> Duration {
        let Some(mut b) = self.table.get(&key(source)).copied() else {
            return Duration::ZERO;
        };
        self.refill(&mut b, now);
        if b.micro_tokens >= MICRO || self.limit.per_second == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros((MICRO - b.micro_tokens).div_ceil(u64::from(self.limit.per_second)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(RateLimit {
            per_second: 10,
            burst: 5,
        });
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(r.allow(t0, a));
        }
        assert!(!r.allow(t0, a));
        assert!(!r.check(t0, a));
        // Another source has its own bucket.
        assert!(r.allow(t0, ip("192.0.2.2")));
        // 100 ms later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(r.allow(t1, a));
        assert!(!r.allow(t1, a));
        assert_eq!(r.wait(t1, a), Duration::from_millis(100));
        // A long pause refills up to the burst, no more.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(r.allow(t2, a));
        }
        assert!(!r.allow(t2, a));
    }

    #[test]
    fn table_is_bounded_and_overflow_is_limited() {
        let t0 = Instant::now();
        let mut r = RateLimiter::with_max_sources(
            RateLimit {
                per_second: 1,
                burst: 2,
            },
            16,
        );
        // 1 000 sources, each spending its burst: the table never exceeds 16, and the
        // sources beyond it share one bucket, so they get 2 tokens between them, not 2 000.
        let mut allowed = 0;
        for i in 0..1000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..2 {
                if r.allow(t0, a) {
                    allowed += 1;
                }
            }
            assert!(r.tracked() <= 16);
        }
        assert_eq!(allowed, 16 * 2 + 2);
        // Once their buckets are full again they are forgotten and new sources fit.
        let later = t0 + Duration::from_secs(10);
        assert!(r.allow(later, ip("198.51.100.1")));
        assert!(r.tracked() <= 16);
    }

    #[test]
    fn an_ipv6_host_is_its_64() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(RateLimit {
            per_second: 1,
            burst: 3,
        });
        let mut allowed = 0;
        for i in 0..100u16 {
            let a = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
            allowed += usize::from(r.allow(t0, a));
        }
        assert_eq!(allowed, 3);
        assert_eq!(r.tracked(), 1);
        assert!(r.allow(t0, ip("2001:db8:0:2::1")));
    }
}
