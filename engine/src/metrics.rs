//! Metrics: one shard per core, written only by its core with relaxed atomics (no lock,
//! no shared cache line), summed when Prometheus scrapes. The scrape endpoint runs on its
//! own thread, never on an executor.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use tracing::{info, warn};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn set(&self, n: i64) {
        self.0.store(n, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

const LATENCY: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const RESIDENCE: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0, 864000.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const SCAN: &[f64] = &[
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    1.0,
];

/// Inspection verdicts (`verdict` label) and actions (`action` label).
pub const VERDICTS: [&str; 7] = [
    "clean",
    "spam",
    "phishing",
    "malformed",
    "authfail",
    "virus",
    "limit",
];
/// Antivirus engines (`engine` label) and scan results (`result` label).
pub const AV_ENGINES: [&str; 2] = ["builtin", "clamd"];
pub const AV_RESULTS: [&str; 3] = ["clean", "virus", "failed"];
/// Limits of the archive walk (`limit` label), as `Violation::label` names them.
pub const ATTACHMENT_LIMITS: [&str; 7] = [
    "archive_layers",
    "archive_files",
    "file_size",
    "total_size",
    "compression_ratio",
    "decoder_memory",
    "scan_time",
];
/// Sender authentication methods (`method` label) and results (`result` label), in
/// the order of `bulwark_inspect::native::AuthResult`.
pub const AUTH_METHODS: [&str; 5] = ["spf", "dkim", "dmarc", "arc", "iprev"];
pub const AUTH_RESULTS: [&str; 7] = [
    "none",
    "pass",
    "fail",
    "softfail",
    "neutral",
    "temperror",
    "permerror",
];
/// Quarantine operations (`op` label), indexes of `Shard::quarantine_ops`.
pub const QUARANTINE_OPS: [&str; 3] = ["released", "deleted", "expired"];
pub const ACTIONS: [&str; 5] = ["deliver", "tag", "strip", "quarantine", "reject"];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
    }

    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }
}

/// Why the engine refused something; the `reason` label of `bulwark_smtp_rejections_total`.
#[derive(Clone, Copy, Debug)]
pub enum Reject {
    RelayDenied,
    UnknownUser,
    SenderBlocked,
    IpBlocked,
    HarvestClosed,
    HarvestRefused,
    MessageSize,
    BareLineEnd,
    LineTooLong,
    SpoolFailed,
    TooManyConnections,
    MemoryBudget,
    /// A recipient deferred (`452 4.5.3`) for a filtering policy other than the first
    /// recipient's.
    PolicySplit,
}

impl Reject {
    const ALL: [Reject; 13] = [
        Reject::RelayDenied,
        Reject::UnknownUser,
        Reject::SenderBlocked,
        Reject::IpBlocked,
        Reject::HarvestClosed,
        Reject::HarvestRefused,
        Reject::MessageSize,
        Reject::BareLineEnd,
        Reject::LineTooLong,
        Reject::SpoolFailed,
        Reject::TooManyConnections,
        Reject::MemoryBudget,
        Reject::PolicySplit,
    ];
    fn label(self) -> &'static str {
        match self {
            Reject::RelayDenied => "relay_denied",
            Reject::UnknownUser => "unknown_user",
            Reject::SenderBlocked => "sender_blocked",
            Reject::IpBlocked => "ip_blocked",
            Reject::HarvestClosed => "harvest_closed",
            Reject::HarvestRefused => "harvest_refused",
            Reject::MessageSize => "message_size",
            Reject::BareLineEnd => "bare_line_end",
            Reject::LineTooLong => "line_too_long",
            Reject::SpoolFailed => "spool_failed",
            Reject::TooManyConnections => "too_many_connections",
            Reject::MemoryBudget => "memory_budget",
            Reject::PolicySplit => "policy_split",
        }
    }
}

/// What the connection tier decided about a client; the `reason` label of
/// `bulwark_reputation_verdicts_total`.
#[derive(Clone, Copy, Debug)]
pub enum ReputationReason {
    /// On the approved IP list: every later check skipped.
    ApprovedIp,
    /// On the blocked IP list: refused at connect.
    BlockedIp,
    /// Listed by a standard DNS list past the threshold: `550 5.7.1`.
    Dnsbl,
    /// Listed by dynamic DNS lists only: `450 4.7.1`.
    DnsblDynamic,
    /// Below the allow threshold of the DNS allow lists.
    Dnswl,
    /// The DNS lists found nothing to hold against it.
    Pass,
    /// The DNS lists could not be asked (the check itself failed).
    DnsblFailed,
    /// Talked before the greeting: `554 5.5.1`.
    Pregreet,
    /// Refused at connect for having talked early not long ago.
    EarlyTalker,
    /// Waited for the greeting as asked (remembered for `greet_pass_ttl`).
    PregreetPassed,
    /// Refused at connect: a dynamic block (harvest or throttles) is in force.
    DynamicBlock,
    /// Listed by DNS lists under the threshold: the suspect group's throttles apply.
    Suspect,
    /// Throttled (`421 4.7.0`/`451 4.7.1`) by a limit of its sender group.
    ThrottleConnections,
    ThrottleConnectionRate,
    ThrottleMessages,
    ThrottleRecipients,
    ThrottleFailedRecipients,
    ThrottleProtocolErrors,
}

impl ReputationReason {
    pub fn throttle(l: crate::reputation::guard::Limit) -> ReputationReason {
        use crate::reputation::guard::Limit;
        match l {
            Limit::Connections => ReputationReason::ThrottleConnections,
            Limit::ConnectionRate => ReputationReason::ThrottleConnectionRate,
            Limit::Messages => ReputationReason::ThrottleMessages,
            Limit::Recipients => ReputationReason::ThrottleRecipients,
            Limit::FailedRecipients => ReputationReason::ThrottleFailedRecipients,
            Limit::ProtocolErrors => ReputationReason::ThrottleProtocolErrors,
        }
    }
}

pub const REPUTATION_REASONS: [&str; 18] = [
    "approved_ip",
    "blocked_ip",
    "dnsbl",
    "dnsbl_dynamic",
    "dnswl",
    "pass",
    "dnsbl_failed",
    "pregreet",
    "early_talker",
    "pregreet_passed",
    "dynamic_block",
    "suspect",
    "throttle_connections",
    "throttle_connection_rate",
    "throttle_messages",
    "throttle_recipients",
    "throttle_failed_recipients",
    "throttle_protocol_errors",
];

/// Most DNS lists a configuration may name (their counters are fixed per core).
pub const MAX_DNSBL_ZONES: usize = 32;
/// The `result` label of `bulwark_dnsbl_results_total`, by index.
pub const DNSBL_RESULTS: [&str; 4] = ["listed", "not_listed", "refused", "failed"];

/// Delivery outcome per recipient; the `result` label of `bulwark_deliveries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Deferred,
    Failed,
}

/// One core's metrics.
pub struct Shard {
    pub reputation: [Counter; 18],
    /// Dynamic blocks imposed by this core (as the clients' owner): harvest, throttles.
    pub dynamic_blocks: [Counter; 2],
    /// Per configured DNS list zone: listed, not listed, refused, failed.
    pub dnsbl_results: [[Counter; 4]; MAX_DNSBL_ZONES],
    /// The core's DNS list cache so far: hits, lookups, merged.
    pub dnsbl_cache: [Counter; 3],
    pub connections: Counter,
    pub sessions_active: Gauge,
    pub messages_received: Counter,
    pub bytes_received: Counter,
    pub rejections: [Counter; 13],
    /// Octets of message content this core holds in memory now.
    pub content_memory: Gauge,
    /// Messages written to the spool while they arrived (larger than the in-memory part).
    pub streamed: Counter,
    pub tls_handshakes_ok: Counter,
    pub tls_handshakes_failed: Counter,
    pub deliveries: [Counter; 3],
    pub dsns: Counter,
    /// Tracking events recorded, dropped (writes failing too long), write errors and
    /// segments removed unread (`[tracking] max_size`).
    pub tracking_events: Counter,
    pub tracking_dropped: Counter,
    pub tracking_write_errors: Counter,
    pub tracking_segments_removed: Counter,
    /// "Delivery delayed" notices sent.
    pub delay_notices: Counter,
    pub queue_messages: Gauge,
    /// Messages an operator put on hold.
    pub queue_held: Gauge,
    /// Messages or recipients an operator deleted from the queue.
    pub queue_deleted: Counter,
    /// Connection-level failures that put a destination into backoff.
    pub destination_failures: Counter,
    /// Destinations this core has backing off now, by name. Every core keeps its own
    /// view of a destination, so the metric is the union over the cores (a destination
    /// down on two cores is one destination down). Locked only when a destination
    /// changes state and when Prometheus scrapes.
    pub backing_off: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Recipients deferred without a connection because their destination backs off.
    pub suspended: Counter,
    /// Messages found in the spool at start and put back in the queue.
    pub recovered: Counter,
    pub spool_commits: Counter,
    /// Damaged spool stretches moved to `damaged/` at start.
    pub spool_damaged: Counter,
    /// Policy generation this core decides with.
    pub policy_generation: Gauge,
    /// Published snapshots this core refused (checksum, archive, schema, generation).
    pub policy_refused: Counter,
    /// Quarantine operations: released, deleted, expired (messages).
    pub quarantine_ops: [Counter; 3],
    /// Seconds from the end of DATA to the `250`: the spool's group commit.
    pub accept_latency: Histogram,
    /// Messages made durable per commit.
    pub commit_batch: Histogram,
    pub commit_seconds: Histogram,
    /// Seconds of one delivery transaction to the next hop.
    pub delivery_latency: Histogram,
    /// Seconds from arrival to the final outcome.
    pub queue_residence: Histogram,
    /// Inspected messages by verdict and action ([`VERDICTS`] × [`ACTIONS`]).
    pub verdicts: [[Counter; 5]; 7],
    /// Messages scanned by each antivirus engine, by result.
    pub av_scans: [[Counter; 3]; 2],
    /// Messages whose attachments exceeded a limit, by limit.
    pub attachment_limits: [Counter; 7],
    /// Archives that could not be opened, and encrypted members, seen.
    pub attachments_unscannable: Counter,
    pub attachments_encrypted: Counter,
    /// Seconds of the built-in scan of a message (attachments, archives, signatures),
    /// and how many ran on the blocking thread.
    pub av_seconds: Histogram,
    pub av_offloaded: Counter,
    /// Connections opened to clamd (sessions are pooled per core).
    pub clamd_connections: Counter,
    /// Messages by authentication method and result.
    pub auth_results: [[Counter; 7]; 5],
    /// Messages whose authentication did not finish within `[authentication] timeout`.
    pub auth_timeouts: Counter,
    /// Full scans of streamed messages: same decision, stronger decision, timed out,
    /// skipped (memory budget, read error).
    pub full_scans: [Counter; 4],
    /// Seconds to parse a message into views, and to match the rules.
    pub scan_parse: Histogram,
    pub scan_rules: Histogram,
}

impl Shard {
    fn new() -> Self {
        Shard {
            reputation: Default::default(),
            dynamic_blocks: Default::default(),
            dnsbl_results: Default::default(),
            dnsbl_cache: Default::default(),
            connections: Counter::default(),
            sessions_active: Gauge::default(),
            messages_received: Counter::default(),
            bytes_received: Counter::default(),
            rejections: Default::default(),
            content_memory: Gauge::default(),
            streamed: Counter::default(),
            tls_handshakes_ok: Counter::default(),
            tls_handshakes_failed: Counter::default(),
            deliveries: Default::default(),
            dsns: Counter::default(),
            tracking_events: Counter::default(),
            tracking_dropped: Counter::default(),
            tracking_write_errors: Counter::default(),
            tracking_segments_removed: Counter::default(),
            delay_notices: Counter::default(),
            queue_messages: Gauge::default(),
            queue_held: Gauge::default(),
            queue_deleted: Counter::default(),
            destination_failures: Counter::default(),
            backing_off: Default::default(),
            suspended: Counter::default(),
            recovered: Counter::default(),
            spool_commits: Counter::default(),
            spool_damaged: Counter::default(),
            policy_generation: Gauge::default(),
            policy_refused: Counter::default(),
            quarantine_ops: Default::default(),
            accept_latency: Histogram::new(LATENCY),
            commit_batch: Histogram::new(BATCH),
            commit_seconds: Histogram::new(LATENCY),
            delivery_latency: Histogram::new(LATENCY),
            queue_residence: Histogram::new(RESIDENCE),
            verdicts: Default::default(),
            auth_results: Default::default(),
            auth_timeouts: Counter::default(),
            full_scans: Default::default(),
            scan_parse: Histogram::new(SCAN),
            scan_rules: Histogram::new(SCAN),
            av_scans: Default::default(),
            attachment_limits: Default::default(),
            attachments_unscannable: Counter::default(),
            attachments_encrypted: Counter::default(),
            av_seconds: Histogram::new(SCAN),
            av_offloaded: Counter::default(),
            clamd_connections: Counter::default(),
        }
    }

    pub fn reject(&self, r: Reject) {
        self.rejections[r as usize].inc();
    }

    pub fn reputation(&self, r: ReputationReason) {
        self.reputation[r as usize].inc();
    }

    pub fn dynamic_block(&self, harvest: bool) {
        self.dynamic_blocks[if harvest { 0 } else { 1 }].inc();
    }

    pub fn delivery(&self, d: Delivery, n: u64) {
        self.deliveries[d as usize].add(n);
    }
}

/// Cache-line aligned so two cores never write the same line.
#[repr(align(128))]
struct Padded(Shard);

fn register(sets: &std::sync::Mutex<Vec<Arc<RuleHits>>>, names: Vec<String>) -> Arc<RuleHits> {
    let hits = Arc::new(RuleHits {
        counts: (0..names.len()).map(|_| Counter::default()).collect(),
        names,
    });
    if let Ok(mut sets) = sets.lock() {
        sets.push(hits.clone());
    }
    hits
}

/// One counter per rule name, summed over every set that has hit.
fn hits_by_rule(sets: &std::sync::Mutex<Vec<Arc<RuleHits>>>) -> Vec<proto::Metric> {
    let mut by_name: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let sets = sets.lock().map(|s| s.clone()).unwrap_or_default();
    for set in &sets {
        for (name, c) in set.names.iter().zip(set.counts.iter()) {
            let n = c.get();
            if n > 0 {
                *by_name.entry(name.clone()).or_default() += n;
            }
        }
    }
    by_name
        .into_iter()
        .map(|(name, n)| counter(n as f64, &[("rule", &name)]))
        .collect()
}

/// All shards, plus engine-wide facts.
pub struct Metrics {
    shards: Box<[Padded]>,
    /// Cores that are listening with their policy loaded.
    ready_cores: AtomicUsize,
    /// Hit counters of every rule set a core has used (sets change when control
    /// publishes new rules); the rule-hit metric sums them by rule name.
    rule_sets: std::sync::Mutex<Vec<Arc<RuleHits>>>,
    /// The same for policy rules (a set per list of rule names a core has used).
    policy_rule_sets: std::sync::Mutex<Vec<Arc<RuleHits>>>,
    /// The configured DNS list zones, by index.
    /// DNS list zones by counter slot, in the order first used (at most
    /// [`MAX_DNSBL_ZONES`]): a zone keeps its slot when the lists in force change.
    dnsbl_zones: std::sync::Mutex<Vec<String>>,
    /// Where `bulwark-xdp` reports its mode and counters.
    xdp_status: std::sync::OnceLock<std::path::PathBuf>,
}

/// One core's hit counters for one rule set, indexed as the set's rules. The core holds
/// its own `Arc` and counts without a lock; only registering a set locks.
pub struct RuleHits {
    pub names: Vec<String>,
    pub counts: Box<[Counter]>,
}

impl Metrics {
    pub fn new(cores: usize) -> Arc<Self> {
        Arc::new(Metrics {
            shards: (0..cores).map(|_| Padded(Shard::new())).collect(),
            ready_cores: AtomicUsize::new(0),
            rule_sets: std::sync::Mutex::new(Vec::new()),
            policy_rule_sets: std::sync::Mutex::new(Vec::new()),
            dnsbl_zones: Default::default(),
            xdp_status: std::sync::OnceLock::new(),
        })
    }

    /// Hit counters for a rule set a core starts to use (its rules' names, by index).
    pub fn rule_hits(&self, names: Vec<String>) -> Arc<RuleHits> {
        register(&self.rule_sets, names)
    }

    /// Where to read the XDP loader's status from, once at start.
    pub fn set_xdp_status(&self, path: std::path::PathBuf) {
        let _ = self.xdp_status.set(path);
    }

    /// The XDP loader's report (`key=value` lines), if it runs: it rewrites the file
    /// every second, so one older than five seconds is a loader that is gone.
    pub fn xdp_report(&self) -> Option<Vec<(String, String)>> {
        let path = self.xdp_status.get()?;
        let age = std::fs::metadata(path)
            .ok()?
            .modified()
            .ok()?
            .elapsed()
            .ok()?;
        if age > std::time::Duration::from_secs(5) {
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The counter slot of a DNS list zone (given one the first time it is asked for);
    /// `None` once every slot is taken.
    pub fn dnsbl_slot(&self, zone: &str) -> Option<usize> {
        let mut zones = self.dnsbl_zones.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = zones.iter().position(|z| z == zone) {
            return Some(i);
        }
        if zones.len() == MAX_DNSBL_ZONES {
            return None;
        }
        zones.push(zone.to_string());
        Some(zones.len() - 1)
    }

    /// Hit counters for a list of policy rules a core starts to use.
    pub fn policy_rule_hits(&self, names: Vec<String>) -> Arc<RuleHits> {
        register(&self.policy_rule_sets, names)
    }

    /// A core is listening and has its policy.
    pub fn core_ready(&self) {
        self.ready_cores.fetch_add(1, Relaxed);
    }

    /// (cores ready, cores).
    pub fn readiness(&self) -> (usize, usize) {
        (self.ready_cores.load(Relaxed), self.shards.len())
    }

    pub fn shard(&self, core: usize) -> &Shard {
        &self.shards[core].0
    }

    /// Distinct destinations backing off on any core.
    fn backing_off(&self) -> usize {
        let mut all = std::collections::BTreeSet::new();
        for s in self.shards.iter() {
            if let Ok(set) = s.0.backing_off.lock() {
                all.extend(set.iter().cloned());
            }
        }
        all.len()
    }

    fn sum(&self, f: impl Fn(&Shard) -> u64) -> f64 {
        self.shards.iter().map(|s| f(&s.0)).sum::<u64>() as f64
    }

    fn sum_i(&self, f: impl Fn(&Shard) -> i64) -> f64 {
        self.shards.iter().map(|s| f(&s.0)).sum::<i64>() as f64
    }

    /// Renders the Prometheus text exposition (engine metrics and process metrics).
    pub fn render(self: &Arc<Self>) -> Vec<u8> {
        let registry = Registry::new();
        let _ = registry.register(Box::new(Families(self.clone())));
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let mut out = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
            warn!("metrics encoding failed: {e}");
        }
        out
    }
}

struct Families(Arc<Metrics>);

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn counter(value: f64, pairs: &[(&str, &str)]) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(value);
    let mut m = proto::Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(value: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(value);
    proto::Metric::from_gauge(g)
}

impl Families {
    fn histogram(
        &self,
        name: &str,
        help: &str,
        pick: impl Fn(&Shard) -> &Histogram,
    ) -> MetricFamily {
        let shards = &self.0.shards;
        let bounds = pick(&shards[0].0).bounds;
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(bounds.len());
        for (i, b) in bounds.iter().enumerate() {
            cumulative += shards
                .iter()
                .map(|s| pick(&s.0).counts[i].load(Relaxed))
                .sum::<u64>();
            let mut bucket = proto::Bucket::default();
            bucket.set_upper_bound(*b);
            bucket.set_cumulative_count(cumulative);
            buckets.push(bucket);
        }
        let total = cumulative
            + shards
                .iter()
                .map(|s| pick(&s.0).counts[bounds.len()].load(Relaxed))
                .sum::<u64>();
        let sum = shards
            .iter()
            .map(|s| pick(&s.0).sum_micros.load(Relaxed))
            .sum::<u64>() as f64
            / 1e6;
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(total);
        h.set_sample_sum(sum);
        let mut m = proto::Metric::default();
        m.set_histogram(h);
        family(name, help, MetricType::HISTOGRAM, vec![m])
    }
}

impl Collector for Families {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let m = &self.0;
        let c = MetricType::COUNTER;
        let g = MetricType::GAUGE;
        vec![
            family(
                "bulwark_smtp_connections_total",
                "SMTP connections accepted.",
                c,
                vec![counter(m.sum(|s| s.connections.get()), &[])],
            ),
            family(
                "bulwark_smtp_sessions_active",
                "SMTP sessions open now.",
                g,
                vec![gauge(m.sum_i(|s| s.sessions_active.get()))],
            ),
            family(
                "bulwark_messages_received_total",
                "Messages accepted with 250 after being spooled durably.",
                c,
                vec![counter(m.sum(|s| s.messages_received.get()), &[])],
            ),
            family(
                "bulwark_message_bytes_received_total",
                "Octets of message content received.",
                c,
                vec![counter(m.sum(|s| s.bytes_received.get()), &[])],
            ),
            family(
                "bulwark_smtp_rejections_total",
                "Refusals in the SMTP session, by reason.",
                c,
                Reject::ALL
                    .iter()
                    .map(|r| {
                        counter(
                            m.sum(|s| s.rejections[*r as usize].get()),
                            &[("reason", r.label())],
                        )
                    })
                    .collect(),
            ),
            family(
                "bulwark_content_memory_bytes",
                "Octets of message content held in memory now (session buffers and content cached for delivery), summed over the cores.",
                g,
                vec![gauge(m.sum_i(|s| s.content_memory.get()))],
            ),
            family(
                "bulwark_messages_streamed_total",
                "Messages written to the spool piece by piece as they arrived, because they were larger than what a session keeps in memory.",
                c,
                vec![counter(m.sum(|s| s.streamed.get()), &[])],
            ),
            family(
                "bulwark_tls_handshakes_total",
                "Inbound STARTTLS handshakes, by result.",
                c,
                vec![
                    counter(m.sum(|s| s.tls_handshakes_ok.get()), &[("result", "ok")]),
                    counter(
                        m.sum(|s| s.tls_handshakes_failed.get()),
                        &[("result", "failed")],
                    ),
                ],
            ),
            family(
                "bulwark_deliveries_total",
                "Per-recipient delivery outcomes.",
                c,
                [
                    ("delivered", Delivery::Delivered),
                    ("deferred", Delivery::Deferred),
                    ("failed", Delivery::Failed),
                ]
                .iter()
                .map(|(l, d)| counter(m.sum(|s| s.deliveries[*d as usize].get()), &[("result", l)]))
                .collect(),
            ),
            family(
                "bulwark_dsns_total",
                "Delivery status notifications (bounces) generated.",
                c,
                vec![counter(m.sum(|s| s.dsns.get()), &[])],
            ),
            family(
                "bulwark_tracking_events_total",
                "Tracking events recorded for the control service, or dropped while their writes kept failing.",
                c,
                vec![
                    counter(m.sum(|s| s.tracking_events.get()), &[("result", "recorded")]),
                    counter(m.sum(|s| s.tracking_dropped.get()), &[("result", "dropped")]),
                ],
            ),
            family(
                "bulwark_tracking_write_errors_total",
                "Failed writes of tracking segments (the events are kept and written to a new segment).",
                c,
                vec![counter(m.sum(|s| s.tracking_write_errors.get()), &[])],
            ),
            family(
                "bulwark_tracking_segments_removed_total",
                "Tracking segments removed unread because a core's segments exceeded [tracking] max_size.",
                c,
                vec![counter(m.sum(|s| s.tracking_segments_removed.get()), &[])],
            ),
            family(
                "bulwark_delay_notices_total",
                "\"Delivery delayed\" notices (RFC 3464 Action: delayed) sent to senders.",
                c,
                vec![counter(m.sum(|s| s.delay_notices.get()), &[])],
            ),
            family(
                "bulwark_queue_messages",
                "Messages in the queue (spooled, not yet finished).",
                g,
                vec![gauge(m.sum_i(|s| s.queue_messages.get()))],
            ),
            family(
                "bulwark_queue_held_messages",
                "Messages on hold (bulwark queue hold).",
                g,
                vec![gauge(m.sum_i(|s| s.queue_held.get()))],
            ),
            family(
                "bulwark_queue_deleted_total",
                "Recipients removed from the queue by an operator (bulwark queue delete).",
                c,
                vec![counter(m.sum(|s| s.queue_deleted.get()), &[])],
            ),
            family(
                "bulwark_queue_recovered_total",
                "Messages read back from the spool at start and requeued.",
                c,
                vec![counter(m.sum(|s| s.recovered.get()), &[])],
            ),
            family(
                "bulwark_destination_failures_total",
                "Connection-level delivery failures that put a destination into backoff.",
                c,
                vec![counter(m.sum(|s| s.destination_failures.get()), &[])],
            ),
            family(
                "bulwark_destinations_backing_off",
                "Destinations in backoff after a failure (on any core; each counted once).",
                g,
                vec![gauge(m.backing_off() as f64)],
            ),
            family(
                "bulwark_delivery_suspended_total",
                "Recipients deferred without a connection because their destination was backing off.",
                c,
                vec![counter(m.sum(|s| s.suspended.get()), &[])],
            ),
            family(
                "bulwark_spool_damaged_records_total",
                "Damaged spool records found at start and moved to the spool's damaged/ folder.",
                c,
                vec![counter(m.sum(|s| s.spool_damaged.get()), &[])],
            ),
            family(
                "bulwark_spool_commits_total",
                "Spool group commits (one fdatasync per segment each).",
                c,
                vec![counter(m.sum(|s| s.spool_commits.get()), &[])],
            ),
            family(
                "bulwark_policy_generation",
                "Policy generation every core has applied (the lowest over the cores).",
                g,
                vec![gauge(
                    m.shards
                        .iter()
                        .map(|s| s.0.policy_generation.get())
                        .min()
                        .unwrap_or(0) as f64,
                )],
            ),
            family(
                "bulwark_policy_snapshots_refused_total",
                "Published policy snapshots refused by a core (the last good one stays in force).",
                c,
                vec![counter(m.sum(|s| s.policy_refused.get()), &[])],
            ),
            family(
                "bulwark_auth_results_total",
                "Messages by sender authentication method and result (RFC 8601 names).",
                c,
                {
                    let mut v = Vec::new();
                    for (i, method) in AUTH_METHODS.iter().enumerate() {
                        for (j, result) in AUTH_RESULTS.iter().enumerate() {
                            v.push(counter(
                                m.sum(|s| s.auth_results[i][j].get()),
                                &[("method", method), ("result", result)],
                            ));
                        }
                    }
                    v
                },
            ),
            family(
                "bulwark_inspection_full_scans_total",
                "Streamed messages inspected whole at their end, by result.",
                c,
                ["same", "stronger", "timeout", "skipped"]
                    .iter()
                    .enumerate()
                    .map(|(i, r)| counter(m.sum(|s| s.full_scans[i].get()), &[("result", r)]))
                    .collect(),
            ),
            family(
                "bulwark_auth_timeouts_total",
                "Messages whose sender authentication did not finish in time (inspected without it).",
                c,
                vec![counter(m.sum(|s| s.auth_timeouts.get()), &[])],
            ),
            family(
                "bulwark_quarantine_operations_total",
                "Quarantined messages released, deleted or expired (one per message and recipient set).",
                c,
                QUARANTINE_OPS
                    .iter()
                    .enumerate()
                    .map(|(i, op)| counter(m.sum(|s| s.quarantine_ops[i].get()), &[("op", op)]))
                    .collect(),
            ),
            family(
                "bulwark_inspection_verdicts_total",
                "Inspected messages by verdict class and the action taken.",
                c,
                {
                    let mut v = Vec::new();
                    for (i, verdict) in VERDICTS.iter().enumerate() {
                        for (j, action) in ACTIONS.iter().enumerate() {
                            v.push(counter(
                                m.sum(|s| s.verdicts[i][j].get()),
                                &[("verdict", verdict), ("action", action)],
                            ));
                        }
                    }
                    v
                },
            ),
            family(
                "bulwark_inspection_rule_hits_total",
                "Messages each inspection rule hit (rules that have hit at least once).",
                c,
                hits_by_rule(&m.rule_sets),
            ),
            {
                let report = m.xdp_report().unwrap_or_default();
                let get = |k: &str| {
                    report
                        .iter()
                        .find(|(key, _)| key == k)
                        .and_then(|(_, v)| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                family(
                    "bulwark_xdp_packets_total",
                    "TCP packets to the SMTP ports seen by the XDP program (bulwark-xdp): passed, dropped by [ip] drop, dropped by a dynamic block.",
                    c,
                    vec![
                        counter(get("pass"), &[("action", "pass")]),
                        counter(get("drop"), &[("action", "drop")]),
                        counter(get("drop_dynamic"), &[("action", "drop_dynamic")]),
                    ],
                )
            },
            {
                let mode = m
                    .xdp_report()
                    .and_then(|r| r.into_iter().find(|(k, _)| k == "mode").map(|(_, v)| v))
                    .unwrap_or_default();
                family(
                    "bulwark_xdp_attached",
                    "1 for the mode the XDP program is attached in (native or generic), all 0 when bulwark-xdp does not run (then [ip] drop is refused at accept).",
                    proto::MetricType::GAUGE,
                    ["native", "generic"]
                        .iter()
                        .map(|md| {
                            let mut g = gauge(if mode == *md { 1.0 } else { 0.0 });
                            g.set_label(labels(&[("mode", md)]));
                            g
                        })
                        .collect(),
                )
            },
            family(
                "bulwark_reputation_verdicts_total",
                "Connections by what the connection tier decided (approved or blocked IP, dynamic blocks, DNS lists, pregreet, throttles).",
                c,
                REPUTATION_REASONS
                    .iter()
                    .enumerate()
                    .map(|(i, r)| counter(m.sum(|s| s.reputation[i].get()), &[("reason", r)]))
                    .collect(),
            ),
            family(
                "bulwark_dynamic_blocks_total",
                "Dynamic blocks imposed: harvest (unknown recipients) or throttle (a client that kept hitting its limits).",
                c,
                ["harvest", "throttle"]
                    .iter()
                    .enumerate()
                    .map(|(i, r)| counter(m.sum(|s| s.dynamic_blocks[i].get()), &[("reason", r)]))
                    .collect(),
            ),
            family(
                "bulwark_dnsbl_results_total",
                "Answers of each DNS list: listed, not_listed, refused (127.255.255.x or not 127/8: the zone is left out) or failed (no answer in time).",
                c,
                {
                    let mut v = Vec::new();
                    let zones = m
                        .dnsbl_zones
                        .lock()
                        .map(|z| z.clone())
                        .unwrap_or_default();
                    for (i, zone) in zones.iter().enumerate().take(MAX_DNSBL_ZONES) {
                        for (j, r) in DNSBL_RESULTS.iter().enumerate() {
                            v.push(counter(
                                m.sum(|s| s.dnsbl_results[i][j].get()),
                                &[("zone", zone), ("result", r)],
                            ));
                        }
                    }
                    v
                },
            ),
            family(
                "bulwark_dnsbl_cache_total",
                "DNS list answers per zone and client: from the core's cache (hit), asked (lookup), or joined to a query in flight (merged).",
                c,
                ["hit", "lookup", "merged"]
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        counter(
                            m.sum(|s| s.dnsbl_cache[i].get()),
                            &[("result", r)],
                        )
                    })
                    .collect(),
            ),
            family(
                "bulwark_policy_rule_hits_total",
                "Messages whose action a policy rule decided (rules that have decided at least once).",
                c,
                hits_by_rule(&m.policy_rule_sets),
            ),
            family(
                "bulwark_antivirus_scans_total",
                "Messages scanned by each antivirus engine (builtin, clamd), by result.",
                c,
                {
                    let mut v = Vec::new();
                    for (i, engine) in AV_ENGINES.iter().enumerate() {
                        for (j, result) in AV_RESULTS.iter().enumerate() {
                            v.push(counter(
                                m.sum(|s| s.av_scans[i][j].get()),
                                &[("engine", engine), ("result", result)],
                            ));
                        }
                    }
                    v
                },
            ),
            family(
                "bulwark_attachment_limits_total",
                "Messages whose attachments exceeded a limit of the archive walk, by limit.",
                c,
                ATTACHMENT_LIMITS
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        counter(m.sum(|s| s.attachment_limits[i].get()), &[("limit", l)])
                    })
                    .collect(),
            ),
            family(
                "bulwark_attachments_unscannable_total",
                "Archives that could not be opened (RAR, corrupt), and encrypted archive members.",
                c,
                vec![
                    counter(
                        m.sum(|s| s.attachments_unscannable.get()),
                        &[("kind", "unreadable")],
                    ),
                    counter(
                        m.sum(|s| s.attachments_encrypted.get()),
                        &[("kind", "encrypted")],
                    ),
                ],
            ),
            family(
                "bulwark_antivirus_offloaded_total",
                "Built-in scans run on a core's blocking thread (messages that may carry attachments).",
                c,
                vec![counter(m.sum(|s| s.av_offloaded.get()), &[])],
            ),
            family(
                "bulwark_clamd_connections_total",
                "Connections opened to clamd (IDSESSION sessions, pooled per core).",
                c,
                vec![counter(m.sum(|s| s.clamd_connections.get()), &[])],
            ),
            self.histogram(
                "bulwark_antivirus_scan_seconds",
                "Seconds of the built-in scan of a message: parts, archives, signatures.",
                |s| &s.av_seconds,
            ),
            self.histogram(
                "bulwark_inspection_parse_seconds",
                "Seconds to parse a message into the views the rules read.",
                |s| &s.scan_parse,
            ),
            self.histogram(
                "bulwark_inspection_rules_seconds",
                "Seconds to match a message against the rules and the classifier.",
                |s| &s.scan_rules,
            ),
            self.histogram(
                "bulwark_accept_latency_seconds",
                "End of DATA to the 250 reply (includes the spool sync).",
                |s| &s.accept_latency,
            ),
            self.histogram(
                "bulwark_spool_commit_batch_messages",
                "Messages made durable by one group commit.",
                |s| &s.commit_batch,
            ),
            self.histogram(
                "bulwark_spool_commit_seconds",
                "Seconds one group commit takes to write and fdatasync its batch (streamed messages' own syncs are not counted).",
                |s| &s.commit_seconds,
            ),
            self.histogram(
                "bulwark_delivery_latency_seconds",
                "Duration of one delivery transaction to the next hop.",
                |s| &s.delivery_latency,
            ),
            self.histogram(
                "bulwark_queue_residence_seconds",
                "Arrival to final outcome (delivered or bounced).",
                |s| &s.queue_residence,
            ),
        ]
    }
}

/// Serves `GET /metrics` on `addr` from a dedicated thread.
/// Serves `/metrics` and `/healthz` on `addr` from threads of its own, never an executor.
/// Each connection gets its own short-lived thread (at most [`MAX_SCRAPES`] at once; more
/// are answered 503), its request head is read up to [`MAX_REQUEST`] octets, and reads
/// and writes time out, so a slow or hostile client cannot hold the endpoint.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    info!(%addr, "metrics endpoint listening");
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut stream) = conn else { continue };
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                if busy.fetch_add(1, Relaxed) >= MAX_SCRAPES {
                    busy.fetch_sub(1, Relaxed);
                    let _ = respond(
                        &mut stream,
                        "503 Service Unavailable",
                        "text/plain",
                        b"busy\n",
                    );
                    continue;
                }
                let (metrics, busy) = (metrics.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || {
                        answer(stream, &metrics);
                        busy.fetch_sub(1, Relaxed);
                    });
                if spawned.is_err() {
                    warn!("metrics: cannot start a thread for a connection");
                }
            }
        })?;
    Ok(())
}

/// Concurrent connections the endpoint serves.
const MAX_SCRAPES: usize = 16;
/// The longest request head read.
const MAX_REQUEST: u64 = 8192;
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn answer(mut stream: std::net::TcpStream, metrics: &Arc<Metrics>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half.take(MAX_REQUEST));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() || !request_line.ends_with('\n') {
        let _ = respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            b"bad request\n",
        );
        // Lingering close: unread input would make the kernel reset the connection and
        // the client might lose the reply. Drain a bounded amount, then close.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = std::io::copy(&mut (&stream).take(1 << 20), &mut std::io::sink());
        return;
    }
    // Drain the headers (within the bound).
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let _ = match (method, path) {
        ("GET", "/metrics") => respond(
            &mut stream,
            "200 OK",
            "text/plain; version=0.0.4",
            &metrics.render(),
        ),
        ("GET", "/healthz") => match metrics.readiness() {
            (ready, cores) if ready >= cores => {
                respond(&mut stream, "200 OK", "text/plain", b"ok\n")
            }
            (ready, cores) => respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                format!("starting: {ready} of {cores} cores ready\n").as_bytes(),
            ),
        },
        ("GET", _) => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"not found: try /metrics\n",
        ),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET is served\n",
        ),
    };
}

fn respond(
    stream: &mut std::net::TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn a_silent_or_endless_client_does_not_hold_the_endpoint() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let m = Metrics::new(1);
        m.core_ready();
        serve(port, m).unwrap();
        // One client connects and says nothing; another sends a header line without end.
        let _silent = std::net::TcpStream::connect(port).unwrap();
        let mut endless = std::net::TcpStream::connect(port).unwrap();
        let junk = vec![b'a'; 64 * 1024];
        let _ = endless.write_all(&junk);
        // A scrape still answers at once.
        let t = std::time::Instant::now();
        let r = get(port, "/metrics");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        let mut out = String::new();
        let _ = endless.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }

    #[test]
    fn healthz_is_503_until_every_core_is_ready() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let m = Metrics::new(2);
        serve(port, m.clone()).unwrap();
        let r = get(port, "/healthz");
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("starting: 0 of 2 cores ready\n"), "{r}");
        m.core_ready();
        assert!(get(port, "/healthz").starts_with("HTTP/1.1 503"));
        m.core_ready();
        let r = get(port, "/healthz");
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
    }

    #[test]
    fn shards_are_summed() {
        let m = Metrics::new(2);
        m.shard(0).connections.inc();
        m.shard(1).connections.add(2);
        m.shard(0).delivery(Delivery::Deferred, 3);
        m.shard(1).queue_messages.add(5);
        m.shard(0).queue_messages.add(-1);
        m.shard(1).accept_latency.observe(0.002);
        m.shard(0).accept_latency.observe(100.0);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("bulwark_smtp_connections_total 3\n"),
            "{text}"
        );
        assert!(text.contains("bulwark_deliveries_total{result=\"deferred\"} 3\n"));
        assert!(text.contains("bulwark_deliveries_total{result=\"delivered\"} 0\n"));
        assert!(text.contains("bulwark_queue_messages 4\n"));
        assert!(text.contains("bulwark_accept_latency_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("bulwark_accept_latency_seconds_count 2\n"));
        assert!(text.contains("process_resident_memory_bytes"));
        // The same destination down on two cores is one destination down.
        for core in 0..2 {
            let mut set = m.shard(core).backing_off.lock().unwrap();
            set.insert("route:mx.example.test:25".into());
        }
        m.shard(1)
            .backing_off
            .lock()
            .unwrap()
            .insert("mx:other.test".into());
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("bulwark_destinations_backing_off 2\n"),
            "{text}"
        );
    }
}
