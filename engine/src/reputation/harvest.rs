//! Directory-harvest protection across cores, by message passing only.
//!
//! A client address has a *home core* (a hash of the address over the cores). Every
//! unknown recipient it tries is reported to its home core, which counts them in a
//! window; past the limit the home core blocks the address for a while and tells every
//! core. Each core keeps its own replica of the blocks, so the check at connect and
//! after each command is a local map lookup: no lock, no shared memory. Messages cross
//! cores only for unknown recipients and new blocks, both rare in legitimate traffic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Receivers, Senders};
use tracing::{info, warn};

use crate::policy::CorePolicy;

/// What cores tell each other.
#[derive(Debug, Clone, Copy)]
pub enum Message {
    /// An unknown recipient from this address (sent to its home core).
    Unknown(IpAddr),
    /// This address is refused until then (sent by its home core to all others).
    Block(IpAddr, Instant),
}

/// Maps kept per core are pruned past this many entries.
const PRUNE_AT: usize = 100_000;

pub struct Guard {
    me: usize,
    peers: usize,
    senders: Senders<Message>,
    policy: Rc<CorePolicy>,
    /// Unknown recipients per address (home core only): count and window start.
    counts: RefCell<HashMap<IpAddr, (u32, Instant)>>,
    /// Replica of every block in force.
    blocked: RefCell<HashMap<IpAddr, Instant>>,
}

fn home(ip: IpAddr, peers: usize) -> usize {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    // FNV-1a: every core computes the same home for an address.
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    (h % peers.max(1) as u64) as usize
}

impl Guard {
    /// Starts the guard of one core; `receivers` carry the other cores' messages.
    pub fn start(
        senders: Senders<Message>,
        mut receivers: Receivers<Message>,
        policy: Rc<CorePolicy>,
    ) -> Rc<Guard> {
        let g = Rc::new(Guard {
            me: senders.peer_id(),
            peers: senders.nr_consumers().max(1),
            senders,
            policy,
            counts: RefCell::new(HashMap::new()),
            blocked: RefCell::new(HashMap::new()),
        });
        for (_, stream) in receivers.streams() {
            let g = g.clone();
            glommio::spawn_local(async move {
                while let Some(m) = stream.recv().await {
                    match m {
                        Message::Unknown(ip) => g.count(ip),
                        Message::Block(ip, until) => g.insert_block(ip, until),
                    }
                }
            })
            .detach();
        }
        g
    }

    /// Is this address refused now?
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let mut blocked = self.blocked.borrow_mut();
        match blocked.get(&ip) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                blocked.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Reports one unknown recipient from `ip`.
    pub fn unknown(&self, ip: IpAddr) {
        let h = home(ip, self.peers);
        if h == self.me {
            self.count(ip);
        } else if self.senders.try_send_to(h, Message::Unknown(ip)).is_err() {
            // The home core is far behind; count here rather than lose the event.
            self.count(ip);
        }
    }

    fn count(&self, ip: IpAddr) {
        let snap = self.policy.current();
        let h = &snap.policy().harvest;
        let max = h.max_unknown.to_native();
        if max == 0 {
            return;
        }
        let window = Duration::from_secs(h.window_secs.to_native() as u64);
        let block = Duration::from_secs(h.block_secs.to_native() as u64);
        let now = Instant::now();
        let over = {
            let mut counts = self.counts.borrow_mut();
            if counts.len() >= PRUNE_AT {
                counts.retain(|_, (_, start)| now.duration_since(*start) < window);
            }
            let e = counts.entry(ip).or_insert((0, now));
            if now.duration_since(e.1) >= window {
                *e = (0, now);
            }
            e.0 += 1;
            if e.0 > max {
                counts.remove(&ip);
                true
            } else {
                false
            }
        };
        if over {
            let until = now + block;
            info!(%ip, max, window_secs = window.as_secs(), block_secs = block.as_secs(), "directory harvest: address blocked");
            self.insert_block(ip, until);
            for peer in 0..self.peers {
                if peer != self.me
                    && self
                        .senders
                        .try_send_to(peer, Message::Block(ip, until))
                        .is_err()
                {
                    warn!(%ip, peer, "could not pass a harvest block to a core");
                }
            }
        }
    }

    fn insert_block(&self, ip: IpAddr, until: Instant) {
        let mut blocked = self.blocked.borrow_mut();
        if blocked.len() >= PRUNE_AT {
            let now = Instant::now();
            blocked.retain(|_, u| *u > now);
        }
        blocked.insert(ip, until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_agrees_on_the_home() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(home(ip, 8), home(ip, 8));
        assert_eq!(
            home(ip, 8),
            home(v6, 8),
            "an IPv4 address and its mapped form share a home"
        );
        assert_eq!(home(ip, 1), 0);
        let spread: std::collections::HashSet<usize> = (0..64u8)
            .map(|i| home(IpAddr::from([10, 0, 0, i]), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
