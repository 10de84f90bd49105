//! One destination's queue on one core: its jobs, its connections, its pace and its
//! health. A connection-level failure (no address, refused, timed out, a 4xx greeting,
//! TLS required but not available) puts the whole destination into backoff: nothing is
//! tried there until the backoff has passed, then one job probes it; when a probe
//! connects, the destination is up again and the mail parked behind it goes at once.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::{Job, Message};
use crate::policy::Destination;

/// Per-core limits of one destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Connections at once.
    pub connections: usize,
    /// Least time between two transactions; `None`: no rate limit.
    pub interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Health {
    Up,
    /// Backing off after `failures` failures in a row; `error` is the last one.
    Down {
        until: Instant,
        failures: u32,
        error: String,
    },
    /// One job is testing the destination after a backoff.
    Probing {
        failures: u32,
        error: String,
    },
}

/// What a new job for the destination may do.
#[derive(Debug, PartialEq)]
pub(super) enum Admit {
    Go,
    /// Go, as the probe of a destination in backoff.
    Probe,
    /// Wait: the destination is backing off; the text says why and for how long.
    Suspended(String),
}

/// The backoff after `failures` failures in a row: doubling from `min`, at most `max`.
pub(super) fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    min.saturating_mul(1 << shift).min(max)
}

impl Health {
    pub fn admit(&mut self, now: Instant) -> Admit {
        match self {
            Health::Up => Admit::Go,
            Health::Down {
                until,
                failures,
                error,
            } if now >= *until => {
                *self = Health::Probing {
                    failures: *failures,
                    error: std::mem::take(error),
                };
                Admit::Probe
            }
            Health::Down { until, error, .. } => Admit::Suspended(format!(
                "delivery suspended for {}s after: {error}",
                until.duration_since(now).as_secs().max(1)
            )),
            Health::Probing { error, .. } => Admit::Suspended(format!(
                "delivery suspended while the destination is tested after: {error}"
            )),
        }
    }

    /// A connection failed: back off. Returns when to probe, and whether the destination
    /// was up until now.
    pub fn failed(
        &mut self,
        now: Instant,
        error: &str,
        min: Duration,
        max: Duration,
    ) -> (Instant, bool) {
        let (failures, was_up) = match self {
            Health::Up => (1, true),
            Health::Down { failures, .. } | Health::Probing { failures, .. } => {
                (failures.saturating_add(1), false)
            }
        };
        let until = now + backoff(failures, min, max);
        *self = Health::Down {
            until,
            failures,
            error: error.to_string(),
        };
        (until, was_up)
    }

    /// A connection worked. Returns whether the destination was backing off.
    pub fn up(&mut self) -> bool {
        let was_down = *self != Health::Up;
        *self = Health::Up;
        was_down
    }

    /// The probe job went away without connecting (held, deleted, unreadable): the next
    /// job probes instead.
    pub fn probe_abandoned(&mut self, now: Instant) {
        if let Health::Probing { failures, error } = self {
            *self = Health::Down {
                until: now,
                failures: *failures,
                error: std::mem::take(error),
            };
        }
    }

    /// An operator flushed the queue: the backoff ends now, the next job probes.
    pub fn expedite(&mut self, now: Instant) {
        if let Health::Down { until, .. } = self {
            *until = now;
        }
    }

    pub fn is_up(&self) -> bool {
        *self == Health::Up
    }
}

pub(super) struct DestQueue {
    pub dest: Destination,
    pub limits: Limits,
    jobs: RefCell<VecDeque<Job>>,
    bell_tx: LocalSender<()>,
    bell_rx: LocalReceiver<()>,
    pub workers: Cell<usize>,
    idle: Cell<usize>,
    pub health: RefCell<Health>,
    /// Changes with every health transition, so a stale probe timer does nothing.
    pub epoch: Cell<u64>,
    next_slot: Cell<Instant>,
    /// Messages deferred because of this destination's backoff, by id: they are tried
    /// again as soon as it is up.
    pub parked: RefCell<HashMap<String, Rc<Message>>>,
}

impl DestQueue {
    pub fn new(dest: Destination, limits: Limits) -> DestQueue {
        let (bell_tx, bell_rx) = local_channel::new_unbounded();
        DestQueue {
            dest,
            limits,
            jobs: RefCell::new(VecDeque::new()),
            bell_tx,
            bell_rx,
            workers: Cell::new(0),
            idle: Cell::new(0),
            health: RefCell::new(Health::Up),
            epoch: Cell::new(0),
            next_slot: Cell::new(Instant::now()),
            parked: RefCell::new(HashMap::new()),
        }
    }

    pub fn push(&self, job: Job) {
        self.jobs.borrow_mut().push_back(job);
        let _ = self.bell_tx.try_send(());
    }

    /// Takes every queued job (the destination went down).
    pub fn drain(&self) -> Vec<Job> {
        self.jobs.borrow_mut().drain(..).collect()
    }

    pub fn queued(&self) -> usize {
        self.jobs.borrow().len()
    }

    /// True when another connection would help: more jobs than idle workers, and room
    /// under the connection limit.
    pub fn wants_worker(&self) -> bool {
        self.workers.get() < self.limits.connections && self.queued() > self.idle.get()
    }

    /// The next job, or `None` after `idle` without one.
    pub async fn next_job(&self, idle: Duration) -> Option<Job> {
        loop {
            if let Some(j) = self.jobs.borrow_mut().pop_front() {
                return Some(j);
            }
            self.idle.set(self.idle.get() + 1);
            let rang =
                futures_lite::future::or(async { self.bell_rx.recv().await.is_some() }, async {
                    glommio::timer::sleep(idle).await;
                    false
                })
                .await;
            self.idle.set(self.idle.get() - 1);
            if !rang && self.jobs.borrow().is_empty() {
                return None;
            }
        }
    }

    /// Waits for this destination's next transaction slot under its rate limit. Slots
    /// are handed out in order, so several connections share one rate.
    pub async fn pace(&self) {
        let Some(interval) = self.limits.interval else {
            return;
        };
        let now = Instant::now();
        let slot = self.next_slot.get().max(now);
        self.next_slot.set(slot + interval);
        if slot > now {
            glommio::timer::sleep(slot - now).await;
        }
    }

    /// Nothing queued, parked or running, and healthy: the queue can be forgotten.
    pub fn is_unused(&self) -> bool {
        self.workers.get() == 0
            && self.jobs.borrow().is_empty()
            && self.parked.borrow().is_empty()
            && self.health.borrow().is_up()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(10);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let b: Vec<u64> = (1..=8).map(|f| backoff(f, MIN, MAX).as_secs()).collect();
        assert_eq!(b, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX, MIN, MAX), MAX);
    }

    #[test]
    fn a_failure_suspends_then_one_probe_goes() {
        let t0 = Instant::now();
        let mut h = Health::Up;
        assert_eq!(h.admit(t0), Admit::Go);
        let (until, was_up) = h.failed(t0, "451 4.4.1 refused", MIN, MAX);
        assert!(was_up);
        assert_eq!(until, t0 + MIN);
        match h.admit(t0 + Duration::from_secs(3)) {
            Admit::Suspended(why) => {
                assert!(
                    why.contains("suspended for 7s after: 451 4.4.1 refused"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        // After the backoff exactly one job probes; the others keep waiting.
        assert_eq!(h.admit(until), Admit::Probe);
        assert!(matches!(h.admit(until), Admit::Suspended(_)));
        // The probe fails: twice as long.
        let (until2, was_up) = h.failed(until, "451 4.4.1 refused again", MIN, MAX);
        assert!(!was_up);
        assert_eq!(until2, until + 2 * MIN);
        assert_eq!(h.admit(until2), Admit::Probe);
        assert!(h.up());
        assert_eq!(h.admit(until2), Admit::Go);
        // Failures in a row start over after a success.
        let (until3, _) = h.failed(until2, "x", MIN, MAX);
        assert_eq!(until3, until2 + MIN);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_job_probe() {
        let t0 = Instant::now();
        let mut h = Health::Up;
        let (until, _) = h.failed(t0, "refused", MIN, MAX);
        assert_eq!(h.admit(until), Admit::Probe);
        h.probe_abandoned(until);
        assert_eq!(h.admit(until), Admit::Probe);
    }
}
