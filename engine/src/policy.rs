//! The engine's view of policy: each core holds the snapshot in force and answers the
//! session's envelope questions from it without copying or locking.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use bulwark_policy::shm::Follower;
use bulwark_policy::{SenderVerdict, Snapshot, TlsPolicy};
use tracing::{error, info};

use crate::metrics::Metrics;

use crate::smtp::{EnvelopePolicy, RcptVerdict};

/// One core's current snapshot. A transaction takes an `Rc` at its start and keeps it,
/// so a later swap never changes a decision half way. With a follower, the core checks
/// the published generation (one atomic load) and loads and validates a new snapshot
/// once; a snapshot that fails validation is refused and the last good one stays.
pub struct CorePolicy {
    current: RefCell<Rc<Snapshot>>,
    follower: RefCell<Option<Follower>>,
    /// The last published generation examined, applied or refused.
    seen: Cell<u64>,
    core: usize,
    metrics: Arc<Metrics>,
}

impl CorePolicy {
    pub fn new(
        snapshot: Snapshot,
        follower: Option<Follower>,
        core: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics
            .shard(core)
            .policy_generation
            .set(snapshot.generation() as i64);
        let p = CorePolicy {
            current: RefCell::new(Rc::new(snapshot)),
            follower: RefCell::new(follower),
            seen: Cell::new(0),
            core,
            metrics,
        };
        p.refresh();
        p
    }

    pub fn current(&self) -> Rc<Snapshot> {
        self.current.borrow().clone()
    }

    /// Maps the published header again if its file was truncated, replaced or removed
    /// and a valid one is back (meanwhile the core keeps the policy it has). Costs a
    /// `stat`: called now and then from the idle timer, never per transaction.
    pub fn check_header(&self) {
        let fresh = match self.follower.borrow().as_ref() {
            Some(f) => f.reopen_if_replaced(),
            None => return,
        };
        if let Some(f) = fresh {
            info!(
                core = self.core,
                "policy header mapped again (it had been replaced)"
            );
            *self.follower.borrow_mut() = Some(f);
            self.refresh();
        }
    }

    /// Applies a newly published generation, if any. True when the snapshot changed.
    pub fn refresh(&self) -> bool {
        let follower = self.follower.borrow();
        let Some(f) = follower.as_ref() else {
            return false;
        };
        let generation = f.generation();
        if generation == self.seen.get() || generation == 0 {
            return false;
        }
        self.seen.set(generation);
        let shard = self.metrics.shard(self.core);
        match f.load(generation) {
            Ok(snap) => {
                info!(core = self.core, generation, "policy snapshot applied");
                shard.policy_generation.set(generation as i64);
                *self.current.borrow_mut() = Rc::new(snap);
                true
            }
            Err(e) => {
                shard.policy_refused.inc();
                error!(
                    core = self.core,
                    "policy snapshot refused, keeping generation {}: {e}",
                    self.current.borrow().generation()
                );
                false
            }
        }
    }
}

/// Where mail for an address goes, by its domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A managed domain's route: the customer's server, with its TLS policy.
    Route {
        host: String,
        port: u16,
        tls: TlsPolicy,
        tls_ca: String,
    },
    /// Anywhere else (bounces, for now): the domain's MX hosts.
    Mx { domain: String },
}

impl Destination {
    /// The name limits are configured by: the route host, or the recipient domain.
    pub fn name(&self) -> &str {
        match self {
            Destination::Route { host, .. } => host,
            Destination::Mx { domain } => domain,
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Route { host, port, .. } => write!(f, "route:{host}:{port}"),
            Destination::Mx { domain } => write!(f, "mx:{domain}"),
        }
    }
}

pub fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// The destination for a recipient under `snap`.
pub fn destination(snap: &Snapshot, rcpt: &str) -> Destination {
    let domain = domain_of(rcpt);
    match snap.policy().domain(domain) {
        Some(d) => Destination::Route {
            host: d.route.host.as_str().to_string(),
            port: d.route.port.to_native(),
            tls: d.route.tls.to_native(),
            tls_ca: d.route.tls_ca.as_str().to_string(),
        },
        None => Destination::Mx {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        },
    }
}

/// Envelope decisions from a snapshot.
pub struct SnapshotPolicy<'a>(pub &'a Snapshot);

impl EnvelopePolicy for SnapshotPolicy<'_> {
    /// Order: managed domain; then the sender lists (the domain's own, then the global
    /// ones; approval wins over a block at the same level); then the directory; then
    /// the recipient's own approved senders (a block by the lists above still wins). An
    /// approved sender still cannot reach an address that does not exist.
    fn check_rcpt(&self, sender: &str, rcpt: &str) -> RcptVerdict {
        let policy = self.0.policy();
        let Some(domain) = policy.domain(domain_of(rcpt)) else {
            return RcptVerdict::RelayDenied;
        };
        let senders = domain
            .senders
            .verdict(sender)
            .or_else(|| policy.senders.verdict(sender));
        if senders == Some(SenderVerdict::Blocked) {
            return RcptVerdict::SenderBlocked;
        }
        if domain.knows(rcpt) == Some(false) {
            return RcptVerdict::UnknownUser;
        }
        match senders {
            Some(SenderVerdict::Approved) => RcptVerdict::Approved,
            _ if domain.personally_approved(rcpt, sender) => RcptVerdict::Approved,
            _ => RcptVerdict::Accept,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_policy::{Domain, PersonalList, Policy, SenderLists};

    #[test]
    fn personal_approvals_apply_to_their_recipient_and_never_beat_a_block() {
        let p = Policy {
            domains: vec![Domain {
                name: "example.test".into(),
                has_directory: true,
                directory: vec!["alice@example.test".into(), "bob@example.test".into()],
                senders: SenderLists {
                    blocked: vec!["bad.test".into()],
                    ..Default::default()
                },
                personal: vec![PersonalList {
                    address: "alice@example.test".into(),
                    approved: vec!["bad.test".into(), "news.test".into()],
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let snap = Snapshot::from_policy(&p).unwrap();
        let policy = SnapshotPolicy(&snap);
        let check = |from: &str, to: &str| policy.check_rcpt(from, to);
        assert_eq!(
            check("x@news.test", "alice@example.test"),
            RcptVerdict::Approved
        );
        assert_eq!(
            check("x@news.test", "bob@example.test"),
            RcptVerdict::Accept
        );
        assert_eq!(
            check("x@bad.test", "alice@example.test"),
            RcptVerdict::SenderBlocked
        );
        assert_eq!(
            check("x@news.test", "carol@example.test"),
            RcptVerdict::UnknownUser
        );
    }
}
