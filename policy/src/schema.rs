//! The policy schema. Everything the engine decides with comes from these types.

use rkyv::{Archive, Deserialize, Serialize};

/// The whole policy at one generation.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Monotonic generation number; a reader only ever moves forward.
    pub generation: u64,
    /// Managed domains, sorted by lower-case name (the builder sorts them).
    pub domains: Vec<Domain>,
    pub limits: Limits,
}

/// A domain Bulwark accepts mail for, and where that mail goes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// Lower-case ASCII domain name.
    pub name: String,
    pub route: Route,
}

/// The customer's mail server for a domain.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// An IP address literal or a host name (resolved with A/AAAA, never MX).
    pub host: String,
    pub port: u16,
}

/// Envelope limits.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted, in octets.
    pub message_size: u64,
    /// Most recipients accepted in one transaction.
    pub recipients: u32,
}

impl Policy {
    /// Puts the policy in canonical form: lower-case domain names, sorted and unique.
    pub fn normalize(&mut self) {
        for d in &mut self.domains {
            d.name.make_ascii_lowercase();
        }
        self.domains.sort_by(|a, b| a.name.cmp(&b.name));
        self.domains.dedup_by(|a, b| a.name == b.name);
    }
}

impl ArchivedPolicy {
    /// The managed domain called `name` (compared without regard to ASCII case).
    /// Allocation-free: a binary search over the sorted archived list.
    pub fn domain(&self, name: &str) -> Option<&ArchivedDomain> {
        let name = name.strip_suffix('.').unwrap_or(name);
        self.domains
            .binary_search_by(|d| cmp_ignore_ascii_case(d.name.as_str(), name))
            .ok()
            .map(|i| &self.domains[i])
    }
}

/// Orders `stored` (already lower case) against `probe` of any case.
fn cmp_ignore_ascii_case(stored: &str, probe: &str) -> std::cmp::Ordering {
    let a = stored.as_bytes().iter().copied();
    let b = probe.as_bytes().iter().map(u8::to_ascii_lowercase);
    a.cmp(b)
}
