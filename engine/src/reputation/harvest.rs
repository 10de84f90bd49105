//! Directory-harvest protection across cores, by message passing only.
//!
//! A client address has a *home core* (a hash of the address over the cores). Every
//! unknown recipient it tries is reported to its home core, which counts them in a
//! window; past the limit the home core blocks the address for a while and tells every
//! core. Each core keeps its own replica of the blocks, so the check at connect and
//! after each command is a local map lookup: no lock, no shared memory. Messages cross
//! cores only for unknown recipients and new blocks, both rare in legitimate traffic.
//!
//! A client is an IPv4 address or an IPv6 /64 (one customer's network: an attacker
//! rotating through the addresses of a /64 is still one client). What a core remembers
//! is bounded: counts and blocks live in LRU maps of [`TRACKED`] entries each, so a
//! flood of distinct sources evicts the least recently seen ones in constant time per
//! event instead of growing or being scanned.

use std::cell::RefCell;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::{Duration, Instant};

use lru::LruCache;

use tracing::{info, warn};

use crate::policy::CorePolicy;

/// A client as harvest protection counts it: an IPv4 address (in its IPv4-mapped IPv6
/// form) or the /64 of an IPv6 address, as a 128-bit number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(u128::from_be_bytes(v4.to_ipv6_mapped().octets())),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::of(IpAddr::V4(v4)),
                None => Source(u128::from_be_bytes(v6.octets()) & !((1u128 << 64) - 1)),
            },
        }
    }
}

/// What cores tell each other.
#[derive(Debug, Clone, Copy)]
pub enum Message {
    /// An unknown recipient from this client (sent to its home core).
    Unknown(Source),
    /// This client is refused until then (sent by its home core to all others).
    Block(Source, Instant),
}

/// Clients remembered per core, in each of the two maps.
pub const TRACKED: usize = 100_000;

/// One core's memory of clients: counts of unknown recipients in the window (for the
/// clients this core is home to) and the blocks in force. Bounded by [`TRACKED`] each.
pub struct Tracker {
    counts: LruCache<Source, (u32, Instant)>,
    blocked: LruCache<Source, Instant>,
}

impl Tracker {
    pub fn new(capacity: usize) -> Tracker {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Tracker {
            counts: LruCache::new(cap),
            blocked: LruCache::new(cap),
        }
    }

    /// Counts one unknown recipient; true when this one passed `max` in `window` (the
    /// count then starts over).
    pub fn count(&mut self, src: Source, now: Instant, max: u32, window: Duration) -> bool {
        let e = self.counts.get_or_insert_mut(src, || (0, now));
        if now.duration_since(e.1) >= window {
            *e = (0, now);
        }
        e.0 += 1;
        if e.0 > max {
            self.counts.pop(&src);
            return true;
        }
        false
    }

    pub fn block(&mut self, src: Source, until: Instant) {
        self.blocked.put(src, until);
    }

    pub fn is_blocked(&mut self, src: Source, now: Instant) -> bool {
        match self.blocked.get(&src) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.blocked.pop(&src);
                false
            }
            None => false,
        }
    }

    /// Entries held: (counts, blocks).
    pub fn len(&self) -> (usize, usize) {
        (self.counts.len(), self.blocked.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

/// One core's links to the others: a bounded inbox, and a sender into every core's
/// inbox. (Plain channels: glommio's channel mesh could hang while the cores joined it at
/// start-up.) Only harvest events travel here, never per-command traffic.
pub struct Links {
    me: usize,
    peers: Vec<flume::Sender<Message>>,
    inbox: flume::Receiver<Message>,
}

impl Links {
    /// The links of `cores` cores, in core order.
    pub fn new(cores: usize) -> Vec<Links> {
        let (senders, inboxes): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::bounded(1024)).unzip();
        inboxes
            .into_iter()
            .enumerate()
            .map(|(me, inbox)| Links {
                me,
                peers: senders.clone(),
                inbox,
            })
            .collect()
    }

    /// Hands `m` to core `to` without waiting; false when its inbox is full.
    fn try_send_to(&self, to: usize, m: Message) -> bool {
        self.peers.get(to).is_some_and(|p| p.try_send(m).is_ok())
    }
}

pub struct Guard {
    me: usize,
    peers: usize,
    links: Links,
    policy: Rc<CorePolicy>,
    tracker: RefCell<Tracker>,
}

fn home(src: Source, peers: usize) -> usize {
    // FNV-1a: every core computes the same home for a client.
    let h = src
        .0
        .to_be_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
        });
    (h % peers.max(1) as u64) as usize
}

impl Guard {
    /// Starts the guard of one core; its inbox carries the other cores' messages.
    pub fn start(links: Links, policy: Rc<CorePolicy>) -> Rc<Guard> {
        let inbox = links.inbox.clone();
        let g = Rc::new(Guard {
            me: links.me,
            peers: links.peers.len().max(1),
            links,
            policy,
            tracker: RefCell::new(Tracker::new(TRACKED)),
        });
        let guard = g.clone();
        glommio::spawn_local(async move {
            while let Ok(m) = inbox.recv_async().await {
                match m {
                    Message::Unknown(src) => guard.count(src),
                    Message::Block(src, until) => guard.tracker.borrow_mut().block(src, until),
                }
            }
        })
        .detach();
        g
    }

    /// Is this address (its client) refused now?
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.tracker
            .borrow_mut()
            .is_blocked(Source::of(ip), Instant::now())
    }

    /// Reports one unknown recipient from `ip`.
    pub fn unknown(&self, ip: IpAddr) {
        let src = Source::of(ip);
        let h = home(src, self.peers);
        if h == self.me {
            self.count(src);
        } else if !self.links.try_send_to(h, Message::Unknown(src)) {
            // The home core is far behind; count here rather than lose the event.
            self.count(src);
        }
    }

    fn count(&self, src: Source) {
        let snap = self.policy.current();
        let h = &snap.policy().harvest;
        let max = h.max_unknown.to_native();
        if max == 0 {
            return;
        }
        let window = Duration::from_secs(h.window_secs.to_native() as u64);
        let block = Duration::from_secs(h.block_secs.to_native() as u64);
        let now = Instant::now();
        let over = self.tracker.borrow_mut().count(src, now, max, window);
        if over {
            let until = now + block;
            let client = std::net::Ipv6Addr::from(src.0);
            info!(%client, max, window_secs = window.as_secs(), block_secs = block.as_secs(), "directory harvest: client blocked");
            self.tracker.borrow_mut().block(src, until);
            for peer in 0..self.peers {
                if peer != self.me && !self.links.try_send_to(peer, Message::Block(src, until)) {
                    warn!(%client, peer, "could not pass a harvest block to a core");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(s: &str) -> Source {
        Source::of(s.parse().unwrap())
    }

    #[test]
    fn every_core_agrees_on_the_home() {
        let ip = src("192.0.2.1");
        let v6 = src("::ffff:192.0.2.1");
        assert_eq!(ip, v6, "an IPv4 address and its mapped form are one client");
        assert_eq!(home(ip, 8), home(v6, 8));
        assert_eq!(home(ip, 1), 0);
        let spread: std::collections::HashSet<usize> = (0..64u8)
            .map(|i| home(Source::of(IpAddr::from([10, 0, 0, i])), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client() {
        assert_eq!(
            src("2001:db8:1:2::1"),
            src("2001:db8:1:2:ffff:eeee:dddd:cccc")
        );
        assert_ne!(src("2001:db8:1:2::1"), src("2001:db8:1:3::1"));
        let mut t = Tracker::new(100);
        let now = Instant::now();
        let w = Duration::from_secs(600);
        // Rotating through the hosts of one /64 does not reset the count.
        let over: Vec<bool> = (0..4u16)
            .map(|i| t.count(src(&format!("2001:db8:1:2::{i:x}")), now, 3, w))
            .collect();
        assert_eq!(over, [false, false, false, true]);
    }

    #[test]
    fn a_million_distinct_sources_stay_within_the_bound() {
        let mut t = Tracker::new(TRACKED);
        let now = Instant::now();
        let w = Duration::from_secs(600);
        for i in 0..1_000_000u64 {
            // A fresh /64 each time, and every 5th one blocked.
            let ip = std::net::Ipv6Addr::from(((0x2001_0db8u128 << 96) | ((i as u128) << 64)) | 1);
            let s = Source::of(IpAddr::V6(ip));
            assert!(!t.count(s, now, 20, w));
            if i % 5 == 0 {
                t.block(s, now + w);
            }
        }
        let (counts, blocks) = t.len();
        assert_eq!(counts, TRACKED);
        assert_eq!(blocks, TRACKED);
        // The most recent ones are remembered; the oldest were evicted.
        let last = std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (999_990u128 << 64));
        assert!(t.is_blocked(Source::of(IpAddr::V6(last)), now));
        let first = std::net::Ipv6Addr::from(0x2001_0db8u128 << 96);
        assert!(!t.is_blocked(Source::of(IpAddr::V6(first)), now));
    }
}
