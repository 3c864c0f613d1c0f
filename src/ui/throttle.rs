//! Wrong dashboard tokens slowed down per client address: after a few failures in a row an
//! address must wait, twice as long after each further failure, before it may try again.
//!
//! Memory is bounded: the least recently seen addresses are forgotten past a fixed count.

use hashlink::LruCache;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens in a row an address may send before it has to wait.
pub const FREE_FAILURES: u32 = 5;
/// The longest wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// A failure this old is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at once.
const CLIENTS: usize = 4096;

/// Failures per client address.
pub struct Throttle {
    clients: Mutex<LruCache<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Wrong tokens in a row.
    count: u32,
    /// When the last one came.
    last: Instant,
}

impl Failures {
    /// When this address may try again.
    fn free_at(&self) -> Instant {
        match self.count.checked_sub(FREE_FAILURES) {
            None => self.last,
            Some(over) => {
                let secs = 1u64.checked_shl(over).unwrap_or(u64::MAX);
                self.last + Duration::from_secs(secs).min(MAX_WAIT)
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            clients: Mutex::new(LruCache::new(CLIENTS)),
        }
    }
}

impl Throttle {
    /// How long `client` must still wait before its token is looked at, if at all.
    pub fn wait(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let key = key(client);
        let mut clients = self.lock();
        let failures = *clients.get(&key)?;
        if now.saturating_duration_since(failures.last) > FORGET_AFTER {
            clients.remove(&key);
            return None;
        }
        let free_at = failures.free_at();
        (free_at > now).then(|| free_at - now)
    }

    /// `client` sent a wrong token.
    pub fn failed(&self, client: IpAddr, now: Instant) {
        let key = key(client);
        let mut clients = self.lock();
        let count = match clients.get(&key) {
            Some(f) if now.saturating_duration_since(f.last) <= FORGET_AFTER => f.count,
            _ => 0,
        };
        clients.insert(
            key,
            Failures {
                count: count.saturating_add(1),
                last: now,
            },
        );
    }

    /// `client` sent the right token: its failures are forgotten.
    pub fn succeeded(&self, client: IpAddr) {
        self.lock().remove(&key(client));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<IpAddr, Failures>> {
        // A panic while holding it leaves counts, which stay meaningful.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// IPv6 clients are counted per /64 (what one host usually holds); IPv4 per address.
fn key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn after_five_wrong_tokens_an_address_waits_twice_as_long_each_time_up_to_a_minute() {
        let throttle = Throttle::default();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            throttle.failed(A, t0);
            assert_eq!(throttle.wait(A, t0), None);
        }
        let mut now = t0;
        for expected in [1, 2, 4, 8, 16, 32, 60, 60] {
            throttle.failed(A, now);
            assert_eq!(
                throttle.wait(A, now),
                Some(Duration::from_secs(expected)),
                "{expected}"
            );
            assert_eq!(throttle.wait(B, now), None, "another address is not slowed");
            now += Duration::from_secs(expected);
            assert_eq!(throttle.wait(A, now), None, "free again after {expected}s");
        }
    }

    #[test]
    fn the_right_token_or_a_quiet_quarter_hour_forgets_the_failures() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            throttle.failed(A, now);
        }
        assert!(throttle.wait(A, now).is_some());
        throttle.succeeded(A);
        assert_eq!(throttle.wait(A, now), None);
        throttle.failed(A, now);
        assert_eq!(throttle.wait(A, now), None, "counting starts again");

        for _ in 0..FREE_FAILURES + 3 {
            throttle.failed(B, now);
        }
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(throttle.wait(B, later), None);
        throttle.failed(B, later);
        assert_eq!(
            throttle.wait(B, later),
            None,
            "the old failures no longer count"
        );
    }

    #[test]
    fn memory_is_bounded_and_ipv6_hosts_are_counted_per_slash_64() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for i in 0..(CLIENTS as u32 + 100) {
            throttle.failed(IpAddr::V4(i.into()), now);
        }
        assert_eq!(throttle.lock().len(), CLIENTS);
        let one: IpAddr = "2001:db8::1".parse().unwrap();
        let same_host: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            throttle.failed(one, now);
        }
        assert!(throttle.wait(same_host, now).is_some());
        assert_eq!(throttle.wait("2001:db8:0:1::1".parse().unwrap(), now), None);
    }
}
