//! The engine's view of policy: each core holds the snapshot in force and answers the
//! session's envelope questions from it without copying or locking.

use std::cell::RefCell;
use std::rc::Rc;

use bulwark_policy::Snapshot;

use crate::smtp::{EnvelopePolicy, RcptVerdict};

/// One core's current snapshot. A transaction takes an `Rc` at its start and keeps it,
/// so a later swap never changes a decision half way.
pub struct CorePolicy {
    current: RefCell<Rc<Snapshot>>,
}

impl CorePolicy {
    pub fn new(snapshot: Snapshot) -> Self {
        CorePolicy {
            current: RefCell::new(Rc::new(snapshot)),
        }
    }

    pub fn current(&self) -> Rc<Snapshot> {
        self.current.borrow().clone()
    }
}

/// Where mail for an address goes, by its domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A managed domain's route: the customer's server.
    Route { host: String, port: u16 },
    /// Anywhere else (bounces, for now): the domain's MX hosts.
    Mx { domain: String },
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Route { host, port } => write!(f, "route:{host}:{port}"),
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
        },
        None => Destination::Mx {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        },
    }
}

/// Envelope decisions from a snapshot.
pub struct SnapshotPolicy<'a>(pub &'a Snapshot);

impl EnvelopePolicy for SnapshotPolicy<'_> {
    fn check_rcpt(&self, rcpt: &str) -> RcptVerdict {
        match self.0.policy().domain(domain_of(rcpt)) {
            Some(_) => RcptVerdict::Accept,
            None => RcptVerdict::RelayDenied,
        }
    }
}
