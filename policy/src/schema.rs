//! The policy schema. Everything the engine decides with comes from these types.

use rkyv::{Archive, Deserialize, Serialize};

use crate::filtering::{PolicyRule, VerdictPolicy};

/// The whole policy at one generation.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// Monotonic generation number; a reader only ever moves forward.
    pub generation: u64,
    /// Managed domains, sorted by lower-case name (the builder sorts them).
    pub domains: Vec<Domain>,
    pub limits: Limits,
    /// Approved and blocked senders for every domain.
    pub senders: SenderLists,
    /// Client addresses always allowed, and refused at connect.
    pub ips: IpLists,
    /// Directory-harvest protection.
    pub harvest: Harvest,
    /// Content inspection's compiled rules and classifier model, published by control.
    pub inspection: InspectionArtifacts,
    /// Thresholds and actions of the verdict classes for every domain (a domain's own
    /// take precedence); unset values are the engine's `[inspection]` settings.
    pub verdicts: VerdictPolicy,
    /// Policy rules, in the order they are tried.
    pub rules: Vec<PolicyRule>,
    /// Per-sender throttles and dynamic blocks.
    pub throttle: Throttle,
    /// DNS block and allow lists.
    pub dnsbl: DnsblPolicy,
}

/// DNS block and allow lists (postscreen's `postscreen_dnsbl_sites`): each zone listing a
/// client adds its weight; from `threshold` the client's mail is refused, at or below a
/// negative `allow_threshold` the later tests are skipped.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsblPolicy {
    pub zones: Vec<DnsblZone>,
    pub threshold: i32,
    pub allow_threshold: i32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsblZone {
    /// Lower case, without a trailing dot.
    pub zone: String,
    /// Negative for allow lists; never 0.
    pub weight: i32,
    /// A *dynamic* list defers (`450 4.7.1`); a standard one refuses (`550 5.7.1`).
    pub dynamic: bool,
    /// Answer filters (`127.0.0.[2..11]`, …); none: any answer counts.
    pub answers: Vec<String>,
}

/// Limits of one throttled sender group; 0 turns a limit off.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupLimits {
    /// Connections open at once from one client.
    pub connections: u32,
    pub connections_per_minute: u32,
    pub messages_per_session: u32,
    pub recipients_per_hour: u32,
    pub failed_recipients_per_hour: u32,
    pub protocol_errors_per_hour: u32,
}

/// Throttles per client, as a Host Access Table has them: approved addresses are never
/// throttled, *suspect* clients (listed by DNS lists whose weights stay under the
/// threshold) have limits of their own, *unknown* clients the others. A client keeps
/// hitting its limits (`block_after` refusals within `block_window_secs`) and it is
/// blocked for `block_secs`, doubled at each next block up to `block_max_secs`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Throttle {
    pub unknown: GroupLimits,
    pub suspect: GroupLimits,
    pub block_after: u32,
    pub block_window_secs: u32,
    pub block_secs: u32,
    pub block_max_secs: u32,
    /// A client is an IPv4 address or network of this prefix (24..=32)...
    pub ipv4_prefix: u8,
    /// ...or an IPv6 network of this one (48..=64).
    pub ipv6_prefix: u8,
}

impl Throttle {
    /// The throttle described by the limits table's names (see [`crate::limits`]);
    /// `get` answers a name's value.
    pub fn from_limits(get: impl Fn(&str) -> u64) -> Throttle {
        let g = |group: &str| {
            let v = |k: &str| get(&format!("throttle_{group}_{k}")).min(u32::MAX as u64) as u32;
            GroupLimits {
                connections: v("connections"),
                connections_per_minute: v("connections_per_minute"),
                messages_per_session: v("messages_per_session"),
                recipients_per_hour: v("recipients_per_hour"),
                failed_recipients_per_hour: v("failed_recipients_per_hour"),
                protocol_errors_per_hour: v("protocol_errors_per_hour"),
            }
        };
        let v = |k: &str| get(k).min(u32::MAX as u64) as u32;
        Throttle {
            unknown: g("unknown"),
            suspect: g("suspect"),
            block_after: v("throttle_block_after"),
            block_window_secs: v("throttle_block_window_secs"),
            block_secs: v("throttle_block_secs"),
            block_max_secs: v("throttle_block_max_secs"),
            ipv4_prefix: v("throttle_ipv4_prefix").clamp(24, 32) as u8,
            ipv6_prefix: v("throttle_ipv6_prefix").clamp(48, 64) as u8,
        }
    }

    /// The product's defaults.
    pub fn defaults() -> Throttle {
        Throttle::from_limits(|name| {
            crate::limits::ALL
                .iter()
                .find(|r| r.name == name)
                .map_or(0, |r| r.default)
        })
    }
}

impl ArchivedThrottle {
    pub fn to_native(&self) -> Throttle {
        let g = |l: &ArchivedGroupLimits| GroupLimits {
            connections: l.connections.to_native(),
            connections_per_minute: l.connections_per_minute.to_native(),
            messages_per_session: l.messages_per_session.to_native(),
            recipients_per_hour: l.recipients_per_hour.to_native(),
            failed_recipients_per_hour: l.failed_recipients_per_hour.to_native(),
            protocol_errors_per_hour: l.protocol_errors_per_hour.to_native(),
        };
        Throttle {
            unknown: g(&self.unknown),
            suspect: g(&self.suspect),
            block_after: self.block_after.to_native(),
            block_window_secs: self.block_window_secs.to_native(),
            block_secs: self.block_secs.to_native(),
            block_max_secs: self.block_max_secs.to_native(),
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
        }
    }
}

/// The key of a client's dynamic block, shared by the engine and the XDP program: the
/// address masked to the client prefix, in the 128-bit form, with the prefix written in
/// an octet the mask leaves zero (octet 0 of an IPv4-mapped key, octet 15 of an IPv6
/// one), so keys of different prefixes never collide.
pub fn dynamic_key(ip: std::net::IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> [u8; 16] {
    let bits = ip_bits(ip);
    let v4 = bits[..10] == [0u8; 10] && bits[10] == 0xff && bits[11] == 0xff;
    if v4 {
        let p = ipv4_prefix.clamp(24, 32);
        let mut k = mask(bits, 96 + p);
        k[0] = p;
        k
    } else {
        let p = ipv6_prefix.clamp(1, 64);
        let mut k = mask(bits, p);
        k[15] = p;
        k
    }
}

/// The client network a dynamic-block key stands for, for people.
pub fn dynamic_key_network(key: [u8; 16]) -> String {
    let v4 = key[1..10] == [0u8; 9] && key[10] == 0xff && key[11] == 0xff;
    if v4 {
        let a = std::net::Ipv4Addr::new(key[12], key[13], key[14], key[15]);
        format!("{a}/{}", key[0])
    } else {
        let mut bits = key;
        let p = bits[15];
        bits[15] = 0;
        format!("{}/{p}", std::net::Ipv6Addr::from(bits))
    }
}

/// Files published beside the snapshot (`<snapshot>.<kind>.<sha256>`), named by the
/// SHA-256 of their content (lower-case hex); empty when none is published, and the
/// engine uses its own configuration's.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct InspectionArtifacts {
    /// A compiled rule set (built-in and imported rules, serialized Hyperscan databases).
    pub rules: String,
    /// A classifier model.
    pub model: String,
    /// A URL blocklist (SHA-256 hashes of host/path expressions); it replaces the
    /// engine's own `[inspection] url_blocklist`.
    pub url_blocklist: String,
    /// Antivirus signatures compiled by `bulwark-control av import` (EICAR and the
    /// imported `.hdb` / `.hsb` / `.ndb` files); they replace the engine's own
    /// `[antivirus] signatures` (unless its built-in engine is off).
    pub antivirus: String,
}

/// Where an artifact of a snapshot published at `snapshot` lives.
pub fn artifact_path(snapshot: &std::path::Path, kind: &str, sha256: &str) -> std::path::PathBuf {
    let mut name = snapshot
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{kind}.{sha256}"));
    snapshot.with_file_name(name)
}

/// Past `max_unknown` unknown recipients from one client address within `window_secs`,
/// the address is refused for `block_secs`. `max_unknown` 0 turns it off.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Harvest {
    pub max_unknown: u32,
    pub window_secs: u32,
    pub block_secs: u32,
}

/// A domain Bulwark accepts mail for, and where that mail goes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Domain {
    /// Lower-case ASCII domain name.
    pub name: String,
    pub route: Route,
    /// When true, only the addresses in `directory` exist (directory-harvest protection).
    pub has_directory: bool,
    /// Lower-case full addresses, sorted.
    pub directory: Vec<String>,
    /// This domain's own approved and blocked senders; they take precedence.
    pub senders: SenderLists,
    /// This domain's own thresholds and actions; they take precedence.
    pub verdicts: VerdictPolicy,
    /// Senders approved by one recipient for their own mail (the end-user console),
    /// sorted by address.
    pub personal: Vec<PersonalList>,
}

/// One recipient's own approved senders: their mail to that recipient skips content
/// filtering, as the domain's approved list does. A block by the domain or the global
/// lists still wins.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PersonalList {
    /// Lower-case full address of the recipient.
    pub address: String,
    /// Sender patterns as in [`SenderLists`], lower case, sorted.
    pub approved: Vec<String>,
}

/// Sender patterns: `user@domain`, `domain` (that domain exactly) or `*.domain` (any
/// sub-domain of it). Lower case, sorted.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SenderLists {
    pub approved: Vec<String>,
    pub blocked: Vec<String>,
}

/// IP networks; IPv4 is held as IPv4-mapped IPv6.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct IpLists {
    pub allow: Vec<Cidr>,
    pub block: Vec<Cidr>,
    /// Dropped in XDP before they reach the engine (refused at connect by the engine
    /// when the XDP program is not loaded).
    pub drop: Vec<Cidr>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: [u8; 16],
    /// Prefix length over the 128-bit form (an IPv4 /24 is 120).
    pub prefix: u8,
}

/// What the sender lists say about a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderVerdict {
    Approved,
    Blocked,
}

/// What the IP lists say about a client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVerdict {
    Allowed,
    Blocked,
}

/// The customer's mail server for a domain.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// An IP address literal or a host name (resolved with A/AAAA, never MX).
    pub host: String,
    pub port: u16,
    /// TLS on delivery to this route.
    pub tls: TlsPolicy,
    /// PEM file of the CA(s) that sign the route's certificate, for `Required`; empty:
    /// the web PKI roots.
    pub tls_ca: String,
}

/// TLS on delivery to a route.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TlsPolicy {
    /// STARTTLS when offered, unauthenticated; plaintext when not offered or broken.
    #[default]
    Opportunistic,
    /// STARTTLS with a verified certificate, or no delivery (the mail waits).
    Required,
    /// Never STARTTLS.
    None,
}

impl TlsPolicy {
    pub fn parse(s: &str) -> Option<TlsPolicy> {
        match s {
            "opportunistic" => Some(TlsPolicy::Opportunistic),
            "required" => Some(TlsPolicy::Required),
            "none" => Some(TlsPolicy::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required => "required",
            TlsPolicy::None => "none",
        }
    }
}

impl ArchivedTlsPolicy {
    pub fn to_native(&self) -> TlsPolicy {
        match self {
            ArchivedTlsPolicy::Opportunistic => TlsPolicy::Opportunistic,
            ArchivedTlsPolicy::Required => TlsPolicy::Required,
            ArchivedTlsPolicy::None => TlsPolicy::None,
        }
    }
}

/// Envelope limits.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
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
            sort_lower(&mut d.directory);
            d.senders.normalize();
        }
        self.domains.sort_by(|a, b| a.name.cmp(&b.name));
        self.domains.dedup_by(|a, b| a.name == b.name);
        self.senders.normalize();
        self.ips.allow.sort();
        self.ips.allow.dedup();
        self.ips.block.sort();
        self.ips.block.dedup();
        self.ips.drop.sort();
        self.ips.drop.dedup();
    }
}

fn sort_lower(v: &mut Vec<String>) {
    for s in v.iter_mut() {
        s.make_ascii_lowercase();
    }
    v.sort();
    v.dedup();
}

impl SenderLists {
    fn normalize(&mut self) {
        sort_lower(&mut self.approved);
        sort_lower(&mut self.blocked);
    }
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address (a single host).
    pub fn parse(text: &str) -> Option<Cidr> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let ip: std::net::IpAddr = ip.parse().ok()?;
        let (bits, offset) = match ip {
            std::net::IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 96u8),
            std::net::IpAddr::V6(v6) => (v6.octets(), 0u8),
        };
        let prefix = match prefix {
            Some(p) if p as u16 + offset as u16 > 128 => return None,
            Some(p) => p + offset,
            None => 128,
        };
        Some(Cidr {
            addr: mask(bits, prefix),
            prefix,
        })
    }
}

/// The canonical text: the network address and, unless a single host, its prefix in
/// the address family's own terms (`192.0.2.0/24`, `192.0.2.7`, `2001:db8::/32`).
impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v6 = std::net::Ipv6Addr::from(self.addr);
        match (v6.to_ipv4_mapped(), self.prefix) {
            (Some(v4), p) if p >= 96 => {
                write!(f, "{v4}")?;
                if p < 128 {
                    write!(f, "/{}", p - 96)
                } else {
                    Ok(())
                }
            }
            (_, p) => {
                write!(f, "{v6}")?;
                if p < 128 { write!(f, "/{p}") } else { Ok(()) }
            }
        }
    }
}

fn mask(mut bits: [u8; 16], prefix: u8) -> [u8; 16] {
    for (i, b) in bits.iter_mut().enumerate() {
        let keep = (prefix as i32 - 8 * i as i32).clamp(0, 8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    bits
}

fn ip_bits(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(|v4| v4.to_ipv6_mapped().octets())
            .unwrap_or(v6.octets()),
    }
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        mask(ip_bits(ip), self.prefix) == self.addr
    }
}

impl ArchivedCidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        mask(ip_bits(ip), self.prefix) == self.addr
    }
}

impl ArchivedIpLists {
    /// Allow wins over block.
    pub fn verdict(&self, ip: std::net::IpAddr) -> Option<IpVerdict> {
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Some(IpVerdict::Allowed);
        }
        if self.block.iter().any(|c| c.contains(ip)) || self.drop.iter().any(|c| c.contains(ip)) {
            return Some(IpVerdict::Blocked);
        }
        None
    }
}

fn sorted_contains(list: &[rkyv::string::ArchivedString], probe: &str) -> bool {
    list.binary_search_by(|e| cmp_ignore_ascii_case(e.as_str(), probe))
        .is_ok()
}

/// Whether `addr` matches one of `list`'s patterns (lower case, sorted): the address
/// itself, its domain, or `*.parent` for any parent domain. Allocation-free.
pub(crate) fn pattern_matches(list: &[rkyv::string::ArchivedString], addr: &str) -> bool {
    if list.is_empty() || addr.is_empty() {
        return false;
    }
    if sorted_contains(list, addr) {
        return true;
    }
    let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or(addr);
    if sorted_contains(list, domain) {
        return true;
    }
    // "*.example.test" matches "a.example.test" and "b.a.example.test".
    let mut rest = domain;
    while let Some((_, parent)) = rest.split_once('.') {
        if list.iter().any(|e| {
            e.as_str()
                .strip_prefix("*.")
                .is_some_and(|p| p.eq_ignore_ascii_case(parent))
        }) {
            return true;
        }
        rest = parent;
    }
    false
}

impl ArchivedSenderLists {
    /// Approval wins over a block at the same level. Checks the address, its domain,
    /// and `*.parent` for every parent domain; allocation-free.
    pub fn verdict(&self, sender: &str) -> Option<SenderVerdict> {
        if pattern_matches(&self.approved, sender) {
            Some(SenderVerdict::Approved)
        } else if pattern_matches(&self.blocked, sender) {
            Some(SenderVerdict::Blocked)
        } else {
            None
        }
    }
}

impl ArchivedDomain {
    /// Whether `rcpt` exists: `None` when the domain has no directory.
    pub fn knows(&self, rcpt: &str) -> Option<bool> {
        if !self.has_directory {
            return None;
        }
        Some(sorted_contains(&self.directory, rcpt))
    }

    /// Whether `rcpt` approved `sender` on their own list. Allocation-free.
    pub fn personally_approved(&self, rcpt: &str, sender: &str) -> bool {
        self.personal
            .binary_search_by(|p| cmp_ignore_ascii_case(p.address.as_str(), rcpt))
            .is_ok_and(|i| pattern_matches(&self.personal[i].approved, sender))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_keys_carry_their_prefix_and_never_collide() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let a = dynamic_key(ip("192.0.2.77"), 32, 64);
        assert_eq!(a, dynamic_key(ip("::ffff:192.0.2.77"), 32, 64));
        assert_eq!(dynamic_key_network(a), "192.0.2.77/32");
        let net = dynamic_key(ip("192.0.2.77"), 24, 64);
        assert_eq!(net, dynamic_key(ip("192.0.2.1"), 24, 64));
        assert_eq!(dynamic_key_network(net), "192.0.2.0/24");
        // 192.0.2.0 as one address is not its /24.
        assert_ne!(net, dynamic_key(ip("192.0.2.0"), 32, 64));
        let v6 = dynamic_key(ip("2001:db8:1:2:3:4:5:6"), 32, 64);
        assert_eq!(v6, dynamic_key(ip("2001:db8:1:2::ffff"), 32, 64));
        assert_eq!(dynamic_key_network(v6), "2001:db8:1:2::/64");
        let v48 = dynamic_key(ip("2001:db8:1:2::1"), 32, 48);
        assert_eq!(dynamic_key_network(v48), "2001:db8:1::/48");
        assert_ne!(v48, dynamic_key(ip("2001:db8:1::"), 32, 64));
    }

    #[test]
    fn throttle_defaults_are_the_limits_table() {
        let t = Throttle::defaults();
        assert_eq!(t.unknown.connections, 50);
        assert_eq!(t.suspect.connections, 5);
        assert_eq!(t.block_secs, 900);
        assert_eq!((t.ipv4_prefix, t.ipv6_prefix), (32, 64));
    }
    use crate::Snapshot;

    fn snapshot() -> Snapshot {
        let p = Policy {
            generation: 3,
            domains: vec![Domain {
                name: "example.test".into(),
                route: Route {
                    host: "127.0.0.1".into(),
                    port: 25,
                    ..Default::default()
                },
                has_directory: true,
                directory: vec!["Alice@Example.test".into(), "bob@example.test".into()],
                senders: SenderLists {
                    approved: vec!["friend@spam.test".into()],
                    blocked: vec!["foe@ok.test".into()],
                },
                verdicts: Default::default(),
                personal: vec![
                    PersonalList {
                        address: "alice@example.test".into(),
                        approved: vec!["news.test".into(), "pal@other.test".into()],
                    },
                    PersonalList {
                        address: "bob@example.test".into(),
                        approved: vec!["*.lists.test".into()],
                    },
                ],
            }],
            senders: SenderLists {
                approved: vec!["*.partner.test".into()],
                blocked: vec!["spam.test".into(), "*.spam.test".into()],
            },
            ips: IpLists {
                allow: vec![Cidr::parse("192.0.2.7").unwrap()],
                block: vec![
                    Cidr::parse("192.0.2.0/24").unwrap(),
                    Cidr::parse("2001:db8::/32").unwrap(),
                ],
                drop: vec![Cidr::parse("198.51.100.0/24").unwrap()],
            },
            ..Default::default()
        };
        Snapshot::from_policy(&p).unwrap()
    }

    #[test]
    fn directory_lookup_is_case_insensitive() {
        let s = snapshot();
        let d = s.policy().domain("example.test").unwrap();
        assert_eq!(d.knows("alice@example.test"), Some(true));
        assert_eq!(d.knows("BOB@EXAMPLE.TEST"), Some(true));
        assert_eq!(d.knows("carol@example.test"), Some(false));
    }

    #[test]
    fn sender_patterns() {
        let s = snapshot();
        let global = &s.policy().senders;
        assert_eq!(global.verdict("x@spam.test"), Some(SenderVerdict::Blocked));
        assert_eq!(
            global.verdict("x@a.b.spam.test"),
            Some(SenderVerdict::Blocked)
        );
        assert_eq!(global.verdict("x@notspam.test"), None);
        assert_eq!(
            global.verdict("x@mail.partner.test"),
            Some(SenderVerdict::Approved)
        );
        assert_eq!(
            global.verdict("x@partner.test"),
            None,
            "*.partner.test is sub-domains only"
        );
        assert_eq!(global.verdict(""), None);
        let d = &s.policy().domain("example.test").unwrap().senders;
        assert_eq!(d.verdict("Friend@Spam.test"), Some(SenderVerdict::Approved));
        assert_eq!(d.verdict("foe@ok.test"), Some(SenderVerdict::Blocked));
        assert_eq!(d.verdict("other@ok.test"), None);
    }

    #[test]
    fn personal_approvals_belong_to_their_recipient() {
        let s = snapshot();
        let d = s.policy().domain("example.test").unwrap();
        assert!(d.personally_approved("Alice@example.test", "x@NEWS.test"));
        assert!(d.personally_approved("alice@example.test", "pal@other.test"));
        assert!(!d.personally_approved("alice@example.test", "foe@other.test"));
        assert!(!d.personally_approved("bob@example.test", "x@news.test"));
        assert!(d.personally_approved("bob@example.test", "x@a.lists.test"));
        assert!(!d.personally_approved("carol@example.test", "x@news.test"));
    }

    #[test]
    fn ip_lists() {
        let s = snapshot();
        let ips = &s.policy().ips;
        let ip = |t: &str| t.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(ips.verdict(ip("192.0.2.1")), Some(IpVerdict::Blocked));
        assert_eq!(ips.verdict(ip("192.0.2.7")), Some(IpVerdict::Allowed));
        assert_eq!(ips.verdict(ip("192.0.3.1")), None);
        assert_eq!(
            ips.verdict(ip("::ffff:192.0.2.9")),
            Some(IpVerdict::Blocked)
        );
        assert_eq!(ips.verdict(ip("2001:db8::1")), Some(IpVerdict::Blocked));
        assert_eq!(ips.verdict(ip("2001:db9::1")), None);
        // Dropped in XDP, refused at connect without it.
        assert_eq!(ips.verdict(ip("198.51.100.9")), Some(IpVerdict::Blocked));
    }

    #[test]
    fn cidr_parsing() {
        assert!(Cidr::parse("10.0.0.0/8").is_some());
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("::/0").is_some());
        assert!(Cidr::parse("not an ip").is_none());
        assert_eq!(Cidr::parse("10.1.2.3/8"), Cidr::parse("10.0.0.0/8"));
        for (text, canonical) in [
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7"),
            ("2001:db8::1/32", "2001:db8::/32"),
            ("::1", "::1"),
        ] {
            assert_eq!(Cidr::parse(text).unwrap().to_string(), canonical);
        }
    }
}
