//! Pregreet (early talker) test, as postscreen does it: an unknown client gets the
//! greeting only after a short wait, and a client that speaks before it is refused and
//! remembered. Clients that waited are remembered for a while, so the wait is paid once.
//! Each core keeps its own memory (bounded, least recently seen out).

use std::cell::RefCell;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// `[reputation]` settings of the test.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long an unknown client waits for the greeting; zero turns the test off.
    pub wait: Duration,
    /// How long a client that waited skips the test.
    pub pass_ttl: Duration,
    /// How long a client that talked early is refused at connect.
    pub block: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            wait: Duration::ZERO,
            pass_ttl: Duration::from_secs(86_400),
            block: Duration::from_secs(3600),
        }
    }
}

/// IPv4 by address, IPv6 by /64.
fn key(ip: IpAddr) -> u128 {
    match crate::reputation::dnsbl::canonical(ip) {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => (u128::from(v6) >> 64) << 64 | 1,
    }
}

/// Clients each core remembers, for each of the two lists.
const ENTRIES: usize = 100_000;

pub struct Pregreet {
    pub settings: Settings,
    passed: RefCell<lru::LruCache<u128, Instant>>,
    offenders: RefCell<lru::LruCache<u128, Instant>>,
}

impl Pregreet {
    pub fn new(settings: Settings) -> Pregreet {
        let cap = NonZeroUsize::new(ENTRIES).unwrap_or(NonZeroUsize::MIN);
        Pregreet {
            settings,
            passed: RefCell::new(lru::LruCache::new(cap)),
            offenders: RefCell::new(lru::LruCache::new(cap)),
        }
    }

    fn live(list: &RefCell<lru::LruCache<u128, Instant>>, ip: IpAddr) -> bool {
        let mut l = list.borrow_mut();
        match l.get(&key(ip)) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                l.pop(&key(ip));
                false
            }
            None => false,
        }
    }

    /// Whether the client talked early not long ago (refused at connect).
    pub fn is_offender(&self, ip: IpAddr) -> bool {
        Self::live(&self.offenders, ip)
    }

    /// Whether the client must wait for its greeting now.
    pub fn must_wait(&self, ip: IpAddr) -> bool {
        !self.settings.wait.is_zero() && !Self::live(&self.passed, ip)
    }

    pub fn passed(&self, ip: IpAddr) {
        self.passed
            .borrow_mut()
            .put(key(ip), Instant::now() + self.settings.pass_ttl);
    }

    pub fn offended(&self, ip: IpAddr) {
        self.offenders
            .borrow_mut()
            .put(key(ip), Instant::now() + self.settings.block);
        self.passed.borrow_mut().pop(&key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_remembered_by_address_or_slash_64() {
        let p = Pregreet::new(Settings {
            wait: Duration::from_millis(100),
            ..Default::default()
        });
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff".parse().unwrap();
        let c: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(p.must_wait(a));
        p.passed(a);
        assert!(!p.must_wait(b), "the same /64");
        assert!(p.must_wait(c));
        p.offended(c);
        assert!(p.is_offender("::ffff:192.0.2.1".parse().unwrap()));
        assert!(p.must_wait(c));
    }
}
