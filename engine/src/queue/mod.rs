//! The durable queue: spool records on disk and queue ids.

pub mod record;
pub mod spool;

pub use spool::{Location, Recovered, Spool, SpoolError};

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Issues queue ids: microseconds since the epoch (13 hex digits), the core (3: up to
/// 4096 cores, more than `[server] cores` allows), and a sequence within the microsecond
/// (3). Unique across cores and restarts as long as the clock does not go back; 19
/// upper-case hex digits, sortable by arrival.
pub struct QueueIds {
    core: u16,
    last_micros: Cell<u64>,
    seq: Cell<u16>,
}

impl QueueIds {
    pub fn new(core: usize) -> Self {
        QueueIds {
            core: (core & 0xfff) as u16,
            last_micros: Cell::new(0),
            seq: Cell::new(0),
        }
    }

    pub fn next(&self) -> String {
        let mut now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let last = self.last_micros.get();
        if now <= last {
            let seq = self.seq.get() + 1;
            if seq >= 0x1000 {
                now = last + 1;
                self.seq.set(0);
            } else {
                now = last;
                self.seq.set(seq);
            }
        } else {
            self.seq.set(0);
        }
        self.last_micros.set(now);
        format!("{now:013X}{:03X}{:03X}", self.core, self.seq.get())
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_ordered() {
        let ids = QueueIds::new(3);
        let v: Vec<String> = (0..10_000).map(|_| ids.next()).collect();
        let mut sorted = v.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), v.len());
        assert_eq!(sorted, v);
        assert!(v.iter().all(|id| id.len() == 19 && &id[13..16] == "003"));
        // Cores past 255 keep ids apart too.
        let a = QueueIds::new(1023).next();
        let b = QueueIds::new(767).next();
        assert_eq!((&a[13..16], &b[13..16]), ("3FF", "2FF"));
    }
}
