//! The time delivery decides by. Arrival, lifetimes, retry schedules, delay notices and
//! destination backoff all read it, so tests can run ten days of queue life in seconds
//! by advancing a [`ManualClock`]; the engine runs on the [`SystemClock`].

use std::cell::Cell;
use std::time::{Duration, Instant};

pub trait Clock {
    /// Seconds since the Unix epoch (what the spool records and the queue shows).
    fn unix(&self) -> u64;
    /// A monotonic instant (timers, backoff).
    fn now(&self) -> Instant;
}

/// The machine's clocks.
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix(&self) -> u64 {
        crate::queue::unix_now()
    }
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that follows the machine's from where it was made, plus however far it has
/// been advanced.
pub struct ManualClock {
    unix: u64,
    start: Instant,
    ahead: Cell<Duration>,
}

impl ManualClock {
    /// A clock at `unix` seconds now.
    pub fn at(unix: u64) -> ManualClock {
        ManualClock {
            unix,
            start: Instant::now(),
            ahead: Cell::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.ahead.set(self.ahead.get() + by);
    }
}

impl Clock for ManualClock {
    fn unix(&self) -> u64 {
        self.unix + (self.start.elapsed() + self.ahead.get()).as_secs()
    }
    fn now(&self) -> Instant {
        Instant::now() + self.ahead.get()
    }
}
