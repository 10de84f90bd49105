//! A core's memory budget for message content.
//!
//! Sessions and the delivery cache charge what they hold; a charge is released when it
//! is dropped. The budget is a soft ceiling checked where memory is about to be taken
//! on: a new transaction is refused (`452 4.3.1`) while it is spent, and content is not
//! cached for delivery when it would not fit. What a session holds is itself bounded
//! (large messages are streamed to the spool), so the budget caps the sum.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use crate::metrics::Metrics;

/// The most content one message keeps in memory: a session streams a larger message to
/// the spool in pieces of about this size, and delivery caches no larger content.
pub const IN_MEMORY_CONTENT: usize = 256 * 1024;

pub struct Budget {
    limit: usize,
    used: Cell<usize>,
    core: usize,
    metrics: Arc<Metrics>,
}

impl Budget {
    pub fn new(limit: usize, core: usize, metrics: Arc<Metrics>) -> Rc<Budget> {
        Rc::new(Budget {
            limit,
            used: Cell::new(0),
            core,
            metrics,
        })
    }

    /// The budget's size in octets.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Octets charged now.
    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Nothing more should be taken on.
    pub fn is_spent(&self) -> bool {
        self.used.get() >= self.limit
    }

    /// A charge of zero octets, to be resized with [`Charge::set`].
    pub fn charge(self: &Rc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            amount: Cell::new(0),
        }
    }

    /// A charge of `n` octets if they fit in what is left.
    pub fn try_charge(self: &Rc<Self>, n: usize) -> Option<Charge> {
        if self.used.get().saturating_add(n) > self.limit {
            return None;
        }
        let c = self.charge();
        c.set(n);
        Some(c)
    }

    fn adjust(&self, old: usize, new: usize) {
        let used = self.used.get() - old + new;
        self.used.set(used);
        self.metrics
            .shard(self.core)
            .content_memory
            .add(new as i64 - old as i64);
    }
}

/// Octets held against a [`Budget`] until dropped.
pub struct Charge {
    budget: Rc<Budget>,
    amount: Cell<usize>,
}

impl Charge {
    /// Changes the amount held.
    pub fn set(&self, n: usize) {
        let old = self.amount.replace(n);
        if old != n {
            self.budget.adjust(old, n);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_released_when_dropped_and_the_budget_refuses_what_does_not_fit() {
        let metrics = Metrics::new(1);
        let b = Budget::new(100, 0, metrics.clone());
        let a = b.charge();
        a.set(60);
        assert_eq!(b.used(), 60);
        assert!(!b.is_spent());
        assert!(b.try_charge(50).is_none());
        let c = b.try_charge(40).unwrap();
        assert!(b.is_spent());
        assert_eq!(metrics.shard(0).content_memory.get(), 100);
        drop(c);
        a.set(10);
        assert_eq!(b.used(), 10);
        drop(a);
        assert_eq!(b.used(), 0);
        assert_eq!(metrics.shard(0).content_memory.get(), 0);
    }
}
