//! The engine's TOML configuration. Parsing keeps source spans, so every error names its
//! key and line; validation collects all errors instead of stopping at the first.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

pub use bulwark_policy::address::parse_route;
use bulwark_policy::address::{check_directory_address, check_sender_pattern, is_hostname};
use bulwark_policy::limits;
use bulwark_policy::{Cidr, Domain, Harvest, IpLists, Limits, Policy, Route, TlsPolicy};

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub spool: Spool,
    pub queue: Queue,
    pub limits: LimitsConfig,
    pub smtp: Smtp,
    pub delivery: Delivery,
    pub tls: Option<Tls>,
    pub dns: Dns,
    pub policy: PolicyConfig,
    pub senders: SenderLists,
    pub ip: IpConfig,
    pub harvest: HarvestConfig,
    pub domains: Vec<DomainConfig>,
    /// `[[policy_rules]]`, in order.
    pub policy_rules: Vec<bulwark_policy::filtering::PolicyRule>,
    pub inspection: Inspection,
    pub quarantine: QuarantineConfig,
    /// `[tracking]`: the event files the control service reads.
    pub tracking: TrackingConfig,
    pub authentication: AuthConfig,
    /// `[reputation]`: DNS lists.
    pub reputation: crate::reputation::dnsbl::Settings,
    /// `[reputation]`: the pregreet test.
    pub pregreet: crate::reputation::pregreet::Settings,
    /// `[xdp]`: read by the `bulwark-xdp` loader.
    pub xdp: XdpConfig,
    /// `[throttle]`: per-client limits of the sender groups and dynamic blocks.
    pub throttle: bulwark_policy::Throttle,
    /// `[antivirus]` and `[attachments]`.
    pub antivirus: AntivirusConfig,
}

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    Tcp(String),
    Unix(PathBuf),
}

/// Virus scanning (`[antivirus]`) and the archive walk's limits (`[attachments]`).
#[derive(Debug, Clone)]
pub struct AntivirusConfig {
    /// The built-in engine (EICAR and `signatures`); off, only clamd (if set) scans.
    pub enabled: bool,
    /// ClamAV `.hdb` / `.hsb` / `.ndb` files for the built-in engine.
    pub signatures: Vec<PathBuf>,
    pub clamd: Option<ClamdAddr>,
    /// A clamd that cannot answer: `451 4.7.0` (true) or deliver tagged.
    pub on_failure_tempfail: bool,
    /// The deadline of a message's attachment walk and virus scans.
    pub timeout: Duration,
    /// How long a streamed message's whole scan may wait for its turn and for memory.
    pub queue_timeout: Duration,
    /// clamd's own deadline (connect, send, answer).
    pub clamd_timeout: Duration,
    /// Largest message sent whole to clamd (clamd's `StreamMaxLength` should allow it).
    pub clamd_max_size: u64,
    pub limits: bulwark_inspect::attach::Limits,
}

/// The XDP program (`[xdp]`), attached by `bulwark-xdp`.
#[derive(Debug, Clone)]
pub struct XdpConfig {
    /// The interface the program is attached to.
    pub interface: Option<String>,
    /// The compiled program.
    pub object: PathBuf,
}

/// Sender authentication (`[authentication]`).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub enabled: bool,
    /// The longest the end of data waits for the results.
    pub timeout: Duration,
}

/// Tracking events (`[tracking]`).
#[derive(Debug, Clone)]
pub struct TrackingConfig {
    pub enabled: bool,
    /// Default: `tracking` in the spool directory.
    pub dir: Option<PathBuf>,
    pub segment_size: u64,
    pub max_size: u64,
    pub flush_interval: Duration,
    pub sync_interval: Duration,
}

/// The quarantine store (`[quarantine]`).
#[derive(Debug, Clone)]
pub struct QuarantineConfig {
    /// Default: `quarantine` in the spool directory.
    pub dir: Option<PathBuf>,
    /// How long a quarantined message is kept before it is removed.
    pub retention: Duration,
}

/// Content inspection (`[inspection]`): on by default with the built-in rules.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub enabled: bool,
    /// SpamAssassin `.cf` files or directories of them, and Bulwark `.toml` rule files.
    pub rules: Vec<PathBuf>,
    /// A classifier model made by `bulwark learn`.
    pub model: Option<PathBuf>,
    /// Where compiled rule sets are cached (default: `rules-cache` in the spool dir).
    pub cache_dir: Option<PathBuf>,
    /// Thresholds and actions of the verdict classes, for every domain without its own.
    pub verdicts: bulwark_inspect::inspector::Verdicts,
    /// Brands protected from imitation (`None`: the built-in list).
    pub brands: Option<Vec<String>>,
    /// URL shortener hosts (`None`: the built-in list).
    pub shorteners: Option<Vec<String>>,
    /// URL blocklist files (one URL or host/path per line).
    pub url_blocklist: Vec<PathBuf>,
    /// Deadline of a streamed message's full scan, and whether missing it is a tempfail.
    pub timeout: Duration,
    pub timeout_tempfail: bool,
    pub limits: bulwark_inspect::mime::Limits,
}

/// Directory-harvest protection.
#[derive(Debug, Clone)]
pub struct HarvestConfig {
    /// Unknown recipients allowed per client address within `window`; 0 turns it off.
    pub max_unknown: u32,
    pub window: Duration,
    pub block: Duration,
}

/// Approved and blocked sender patterns (`user@domain`, `domain`, `*.domain`).
#[derive(Debug, Clone, Default)]
pub struct SenderLists {
    pub approved: Vec<String>,
    pub blocked: Vec<String>,
}

/// Client networks: `allow` always passes, `block` is refused at connect, `drop` is
/// dropped by the XDP program (refused at connect when it is not loaded).
#[derive(Debug, Clone, Default)]
pub struct IpConfig {
    pub allow: Vec<Cidr>,
    pub block: Vec<Cidr>,
    pub drop: Vec<Cidr>,
}

#[derive(Debug, Clone, Default)]
pub struct PolicyConfig {
    /// Follow snapshots published at this path (shared memory); `None`: this file only.
    pub snapshot: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// Executors to run; `None` means one per online CPU.
    pub cores: Option<usize>,
    /// Directory of the per-core admin sockets (`bulwark queue`); `None`: `admin/` in
    /// the spool directory.
    pub admin_dir: Option<PathBuf>,
    /// Octets of message content one core may hold in memory (sessions' buffers and
    /// content cached for delivery); past it new transactions get `452 4.3.1`.
    pub memory_per_core: u64,
}

#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
    /// A spool segment is closed for new messages past this size.
    pub segment_size: u64,
}

#[derive(Debug, Clone)]
pub struct Queue {
    pub lifetime: Duration,
    /// Delay before each retry; the last repeats.
    pub retry: Vec<Duration>,
    /// A "delivery delayed" notice goes to the sender once a message has waited this
    /// long; `None` turns the notices off.
    pub delay_warning: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub message_size: u64,
    pub recipients: u32,
}

#[derive(Debug, Clone)]
pub struct Smtp {
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub session_time: Duration,
    pub max_errors: u32,
    pub max_connections: usize,
    /// Longest text line accepted in message content (octets, without CRLF).
    pub max_line_length: usize,
}

#[derive(Debug, Clone)]
pub struct Delivery {
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub connections_per_destination: usize,
    /// Messages per second to one destination, engine-wide; `None`: no limit.
    pub rate_per_destination: Option<f64>,
    pub idle_time: Duration,
    /// First backoff of a destination after a connection-level failure; it doubles with
    /// each failure in a row, up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Limits for particular destinations (a route host, or a domain delivered by MX).
    pub destinations: Vec<DestinationLimits>,
    /// Lines longer than this are wrapped when sent to the next hop; `None`: sent as
    /// they are.
    pub line_length_limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DestinationLimits {
    pub name: String,
    pub connections: Option<usize>,
    pub rate: Option<Option<f64>>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Dns {
    /// Empty: the system resolver (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct DomainConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The addresses that exist, when the domain has a recipient directory.
    pub directory: Option<Vec<String>>,
    pub senders: SenderLists,
    pub tls: TlsPolicy,
    /// CA file for verifying the route's certificate (`tls = "required"`); empty: web PKI.
    pub tls_ca: String,
    /// This domain's own thresholds and actions.
    pub verdicts: bulwark_policy::filtering::VerdictPolicy,
}

impl Config {
    /// Where the per-core admin sockets live.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.quarantine
            .dir
            .clone()
            .unwrap_or_else(|| self.spool.dir.join("quarantine"))
    }

    /// Where tracking events are written, and how.
    pub fn tracking(&self) -> crate::tracking::Settings {
        let t = &self.tracking;
        crate::tracking::Settings {
            enabled: t.enabled,
            dir: t
                .dir
                .clone()
                .unwrap_or_else(|| self.spool.dir.join("tracking")),
            segment_size: t.segment_size,
            max_size: t.max_size,
            flush_interval: t.flush_interval,
            sync_interval: t.sync_interval,
        }
    }

    pub fn admin_dir(&self) -> PathBuf {
        self.server
            .admin_dir
            .clone()
            .unwrap_or_else(|| self.spool.dir.join("admin"))
    }

    /// Where `bulwark-xdp` reports its mode and counters (the engine reads it).
    pub fn xdp_status_path(&self) -> PathBuf {
        self.spool.dir.join("xdp.status")
    }

    /// The first policy snapshot, built from this file.
    pub fn policy(&self) -> Policy {
        Policy {
            generation: 1,
            domains: self
                .domains
                .iter()
                .map(|d| Domain {
                    name: d.name.clone(),
                    route: Route {
                        host: d.host.clone(),
                        port: d.port,
                        tls: d.tls,
                        tls_ca: d.tls_ca.clone(),
                    },
                    has_directory: d.directory.is_some(),
                    directory: d.directory.clone().unwrap_or_default(),
                    senders: d.senders.to_policy(),
                    verdicts: d.verdicts.clone(),
                    // Personal lists come from the end-user console, through control.
                    personal: Vec::new(),
                })
                .collect(),
            limits: Limits {
                message_size: self.limits.message_size,
                recipients: self.limits.recipients,
            },
            senders: self.senders.to_policy(),
            ips: IpLists {
                allow: self.ip.allow.clone(),
                block: self.ip.block.clone(),
                drop: self.ip.drop.clone(),
            },
            harvest: Harvest {
                max_unknown: self.harvest.max_unknown,
                window_secs: self.harvest.window.as_secs().min(u32::MAX as u64) as u32,
                block_secs: self.harvest.block.as_secs().min(u32::MAX as u64) as u32,
            },
            // This file's rules and model are its own `[inspection]`'s, loaded at start.
            inspection: Default::default(),
            // Its global thresholds and actions are `[inspection]`'s too.
            verdicts: Default::default(),
            rules: self.policy_rules.clone(),
            throttle: self.throttle,
            dnsbl: self.reputation.to_policy(),
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            errors: vec![ConfigError {
                key: String::new(),
                line: None,
                message: format!("cannot read {}: {e}", path.display()),
            }],
        })?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let root = DeTable::parse(text).map_err(|e| ConfigErrors {
            errors: vec![ConfigError {
                key: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                message: format!("TOML syntax: {}", e.message()),
            }],
        })?;
        let mut v = Validator {
            text,
            errors: Vec::new(),
        };
        let cfg = v.config(root.get_ref());
        if v.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors { errors: v.errors })
        }
    }
}

impl SenderLists {
    fn to_policy(&self) -> bulwark_policy::SenderLists {
        bulwark_policy::SenderLists {
            approved: self.approved.clone(),
            blocked: self.blocked.clone(),
        }
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, such as `domains[2].route`.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(l), false) => write!(f, "line {l}: {}: {}", self.key, self.message),
            (Some(l), true) => write!(f, "line {l}: {}", self.message),
            (None, false) => write!(f, "{}: {}", self.key, self.message),
            (None, true) => write!(f, "{}", self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

type Table<'a> = DeTable<'a>;
type Value<'a> = Spanned<DeValue<'a>>;

struct Validator<'t> {
    text: &'t str,
    errors: Vec<ConfigError>,
}

/// Reads one table: looks keys up, remembers which were used, reports the unknown ones.
struct Section<'a, 'b> {
    path: String,
    table: Option<&'b Table<'a>>,
    /// Line of the table header, for errors about missing keys.
    line: Option<usize>,
    used: Vec<&'static str>,
}

impl<'t> Validator<'t> {
    fn err(&mut self, key: &str, span: Option<std::ops::Range<usize>>, message: impl Into<String>) {
        let line = span.map(|s| line_of(self.text, s.start));
        self.errors.push(ConfigError {
            key: key.to_string(),
            line,
            message: message.into(),
        });
    }

    fn section<'a, 'b>(&mut self, root: &'b Table<'a>, name: &str) -> Section<'a, 'b> {
        match root.get_key_value(name) {
            None => Section {
                path: name.to_string(),
                table: None,
                line: None,
                used: Vec::new(),
            },
            Some((k, v)) => match v.get_ref() {
                DeValue::Table(t) => Section {
                    path: name.to_string(),
                    table: Some(t),
                    line: Some(line_of(self.text, k.span().start)),
                    used: Vec::new(),
                },
                _ => {
                    self.err(name, Some(v.span()), "must be a table");
                    Section {
                        path: name.to_string(),
                        table: None,
                        line: None,
                        used: Vec::new(),
                    }
                }
            },
        }
    }

    fn finish(&mut self, s: Section<'_, '_>) {
        let Some(t) = s.table else { return };
        for (k, _) in t.iter() {
            if !s.used.contains(&k.get_ref().as_ref()) {
                let key = format!("{}.{}", s.path, k.get_ref());
                self.err(&key, Some(k.span()), "unknown key");
            }
        }
    }

    fn get<'a, 'b>(&mut self, s: &mut Section<'a, 'b>, key: &'static str) -> Option<&'b Value<'a>> {
        s.used.push(key);
        s.table?.get(key)
    }

    fn string(
        &mut self,
        s: &mut Section<'_, '_>,
        key: &'static str,
    ) -> Option<(String, std::ops::Range<usize>)> {
        let v = self.get(s, key)?;
        match v.get_ref() {
            DeValue::String(x) => Some((x.to_string(), v.span())),
            _ => {
                let path = format!("{}.{key}", s.path);
                self.err(&path, Some(v.span()), "must be a string");
                None
            }
        }
    }

    fn required_string(
        &mut self,
        s: &mut Section<'_, '_>,
        key: &'static str,
    ) -> Option<(String, std::ops::Range<usize>)> {
        let present = s.table.is_some_and(|t| t.get(key).is_some());
        if !present {
            let path = format!("{}.{key}", s.path);
            let line = s.line;
            self.errors.push(ConfigError {
                key: path,
                line,
                message: "is required".into(),
            });
            s.used.push(key);
            return None;
        }
        self.string(s, key)
    }

    fn integer(
        &mut self,
        s: &mut Section<'_, '_>,
        key: &'static str,
        min: u64,
        max: u64,
    ) -> Option<u64> {
        let v = self.get(s, key)?;
        let path = format!("{}.{key}", s.path);
        let n = match v.get_ref() {
            DeValue::Integer(i) => {
                u64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.err(
                    &path,
                    Some(v.span()),
                    format!("{n} is out of range {min}..={max}"),
                );
                None
            }
            None => {
                self.err(&path, Some(v.span()), "must be a non-negative integer");
                None
            }
        }
    }

    /// A duration in whole seconds within a limit's range; `None` when absent or wrong
    /// (the error is recorded).
    fn seconds_in(
        &mut self,
        s: &mut Section<'_, '_>,
        key: &'static str,
        r: bulwark_policy::limits::Range,
    ) -> Option<Duration> {
        let (text, span) = self.string(s, key)?;
        let path = format!("{}.{key}", s.path);
        let d = match parse_duration(&text) {
            Ok(d) => d,
            Err(e) => {
                self.err(&path, Some(span), e);
                return None;
            }
        };
        if !r.contains(d.as_secs()) {
            self.err(
                &path,
                Some(span),
                format!(
                    "{} is out of range {}s..={}s",
                    humantime::format_duration(d),
                    r.min,
                    r.max
                ),
            );
            return None;
        }
        Some(d)
    }

    fn duration(&mut self, s: &mut Section<'_, '_>, key: &'static str) -> Option<Duration> {
        let (text, span) = self.string(s, key)?;
        let path = format!("{}.{key}", s.path);
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(&path, Some(span), e);
                None
            }
        }
    }

    fn array<'a, 'b>(
        &mut self,
        s: &mut Section<'a, 'b>,
        key: &'static str,
    ) -> Option<(&'b DeArray<'a>, std::ops::Range<usize>)> {
        let v = self.get(s, key)?;
        match v.get_ref() {
            DeValue::Array(a) => Some((a, v.span())),
            _ => {
                let path = format!("{}.{key}", s.path);
                self.err(&path, Some(v.span()), "must be an array");
                None
            }
        }
    }

    fn string_list(
        &mut self,
        s: &mut Section<'_, '_>,
        key: &'static str,
    ) -> Option<Vec<(String, std::ops::Range<usize>)>> {
        let (arr, _) = self.array(s, key)?;
        let mut out = Vec::new();
        for (i, item) in arr.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(x) => out.push((x.to_string(), item.span())),
                _ => {
                    let path = format!("{}.{key}[{i}]", s.path);
                    self.err(&path, Some(item.span()), "must be a string");
                }
            }
        }
        Some(out)
    }

    fn socket_addrs(
        &mut self,
        s: &mut Section<'_, '_>,
        key: &'static str,
    ) -> Option<Vec<SocketAddr>> {
        let items = self.string_list(s, key)?;
        let mut out = Vec::new();
        for (i, (text, span)) in items.into_iter().enumerate() {
            match text.parse::<SocketAddr>() {
                Ok(a) => out.push(a),
                Err(_) => {
                    let path = format!("{}.{key}[{i}]", s.path);
                    self.err(
                        &path,
                        Some(span),
                        format!("{text:?} is not an IP:port address"),
                    );
                }
            }
        }
        Some(out)
    }

    /// The tables of an array of tables (`[[name]]`) at `path`, one section each.
    fn tables<'a, 'b>(&mut self, v: Option<&'b Value<'a>>, path: &str) -> Vec<Section<'a, 'b>> {
        let Some(v) = v else {
            return Vec::new();
        };
        let DeValue::Array(arr) = v.get_ref() else {
            self.err(
                path,
                Some(v.span()),
                format!("must be an array of tables ([[{path}]])"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in arr.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let DeValue::Table(t) = item.get_ref() else {
                self.err(&item_path, Some(item.span()), "must be a table");
                continue;
            };
            out.push(Section {
                path: item_path,
                table: Some(t),
                line: Some(line_of(self.text, item.span().start)),
                used: Vec::new(),
            });
        }
        out
    }

    fn config(&mut self, root: &Table<'_>) -> Config {
        const SECTIONS: [&str; 23] = [
            "server",
            "spool",
            "queue",
            "limits",
            "smtp",
            "delivery",
            "tls",
            "dns",
            "policy",
            "senders",
            "ip",
            "harvest",
            "domains",
            "policy_rules",
            "inspection",
            "quarantine",
            "tracking",
            "authentication",
            "reputation",
            "xdp",
            "throttle",
            "antivirus",
            "attachments",
        ];
        for (k, _) in root.iter() {
            if !SECTIONS.contains(&k.get_ref().as_ref()) {
                let key = k.get_ref().to_string();
                self.err(&key, Some(k.span()), "unknown section");
            }
        }
        let server = self.server(root);
        let spool = self.spool(root);
        let queue = self.queue(root);
        let limits = self.limits(root);
        let smtp = self.smtp(root);
        let delivery = self.delivery(root);
        let tls = self.tls(root);
        let dns = self.dns(root);
        let policy = self.policy(root);
        let mut senders_section = self.section(root, "senders");
        let senders = self.sender_lists(&mut senders_section, "approved", "blocked");
        self.finish(senders_section);
        let ip = self.ip(root);
        let harvest = self.harvest(root);
        let domains = self.domains(root);
        let policy_rules = self.policy_rules(root);
        let inspection = self.inspection(root);
        let quarantine = self.quarantine(root);
        let tracking = self.tracking(root);
        let authentication = self.authentication(root);
        let (reputation, pregreet) = self.reputation(root);
        let throttle = self.throttle(root);
        let antivirus = self.antivirus(root);
        let xdp = {
            let mut s = self.section(root, "xdp");
            let interface = self.string(&mut s, "interface").map(|(i, _)| i);
            let object = self.string(&mut s, "object").map_or_else(
                || PathBuf::from("/usr/lib/bulwark/bulwark-xdp.o"),
                |(o, _)| PathBuf::from(o),
            );
            self.finish(s);
            XdpConfig { interface, object }
        };
        Config {
            server,
            spool,
            queue,
            limits,
            smtp,
            delivery,
            tls,
            dns,
            policy,
            senders,
            ip,
            harvest,
            domains,
            policy_rules,
            inspection,
            quarantine,
            tracking,
            authentication,
            reputation,
            pregreet,
            xdp,
            throttle,
            antivirus,
        }
    }

    fn antivirus(&mut self, root: &Table<'_>) -> AntivirusConfig {
        let mut s = self.section(root, "antivirus");
        let enabled = self.boolean(&mut s, "enabled").unwrap_or(true);
        let signatures: Vec<PathBuf> = self
            .string_list(&mut s, "signatures")
            .unwrap_or_default()
            .into_iter()
            .map(|(p, _)| PathBuf::from(p))
            .collect();
        let clamd = match self.string(&mut s, "clamd") {
            None => None,
            Some((a, _)) if a.starts_with('/') => Some(ClamdAddr::Unix(PathBuf::from(a))),
            Some((a, span)) => match a.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Some(ClamdAddr::Tcp(a))
                }
                _ => {
                    self.err(
                        "antivirus.clamd",
                        Some(span),
                        format!("{a:?} is neither HOST:PORT nor an absolute socket path"),
                    );
                    None
                }
            },
        };
        let on_failure_tempfail = match self.string(&mut s, "on_failure") {
            None => true,
            Some((a, _)) if a == "tempfail" => true,
            Some((a, _)) if a == "tag" => false,
            Some((a, span)) => {
                self.err(
                    "antivirus.on_failure",
                    Some(span),
                    format!("{a:?} is not \"tempfail\" or \"tag\""),
                );
                true
            }
        };
        let timeout = self
            .duration(&mut s, "timeout")
            .unwrap_or(Duration::from_secs(30));
        let queue_timeout = self
            .duration(&mut s, "queue_timeout")
            .unwrap_or(Duration::from_secs(300));
        let clamd_timeout = self
            .duration(&mut s, "clamd_timeout")
            .unwrap_or(Duration::from_secs(20));
        let clamd_max_size = self
            .integer(&mut s, "clamd_max_size", 1 << 20, 1 << 32)
            .unwrap_or(50 << 20);
        self.finish(s);
        let mut a = self.section(root, "attachments");
        let d = bulwark_inspect::attach::Limits::default();
        let limits = bulwark_inspect::attach::Limits {
            max_layers: self
                .integer(&mut a, "max_layers", 1, 1000)
                .map_or(d.max_layers, |v| v as u32),
            max_files: self
                .integer(&mut a, "max_files", 1, 1_000_000)
                .map_or(d.max_files, |v| v as u32),
            max_member_bytes: self
                .integer(&mut a, "max_file_size", 1, 1 << 40)
                .unwrap_or(d.max_member_bytes),
            max_total_bytes: self
                .integer(&mut a, "max_total_size", 1, 1 << 40)
                .unwrap_or(d.max_total_bytes),
            max_ratio: self
                .integer(&mut a, "max_ratio", 1, 1 << 32)
                .unwrap_or(d.max_ratio),
            max_decoder_memory: self
                .integer(&mut a, "max_decoder_memory", 1 << 20, 1 << 34)
                .unwrap_or(d.max_decoder_memory),
            deadline: None,
        };
        if limits.max_total_bytes < limits.max_member_bytes {
            let line = a.line;
            self.errors.push(ConfigError {
                key: "attachments.max_total_size".into(),
                line,
                message: format!(
                    "{} is below max_file_size ({})",
                    limits.max_total_bytes, limits.max_member_bytes
                ),
            });
        }
        self.finish(a);
        AntivirusConfig {
            enabled,
            signatures,
            clamd,
            on_failure_tempfail,
            timeout,
            queue_timeout,
            clamd_timeout,
            clamd_max_size,
            limits,
        }
    }

    /// `[throttle]`, `[throttle.unknown]` and `[throttle.suspect]`: the limits table's
    /// ranges and defaults (`throttle_suspect_connections` is
    /// `[throttle.suspect] max_connections`).
    fn throttle(&mut self, root: &Table<'_>) -> bulwark_policy::Throttle {
        use bulwark_policy::limits;
        let mut values: Vec<(&'static str, u64)> = Vec::new();
        let mut s = self.section(root, "throttle");
        for group in ["unknown", "suspect"] {
            let key: &'static str = if group == "unknown" {
                "unknown"
            } else {
                "suspect"
            };
            let v = self.get(&mut s, key);
            let path = format!("throttle.{group}");
            let table = match v.map(|v| (v, v.get_ref())) {
                None => None,
                Some((_, DeValue::Table(t))) => Some(t),
                Some((v, _)) => {
                    self.err(&path, Some(v.span()), "must be a table");
                    None
                }
            };
            let mut g = Section {
                path,
                table,
                line: v.map(|v| line_of(self.text, v.span().start)),
                used: Vec::new(),
            };
            for (toml, suffix) in [
                ("max_connections", "connections"),
                ("connections_per_minute", "connections_per_minute"),
                ("messages_per_session", "messages_per_session"),
                ("recipients_per_hour", "recipients_per_hour"),
                ("failed_recipients_per_hour", "failed_recipients_per_hour"),
                ("protocol_errors_per_hour", "protocol_errors_per_hour"),
            ] {
                let name = format!("throttle_{group}_{suffix}");
                let Some(r) = limits::ALL.iter().find(|r| r.name == name) else {
                    continue;
                };
                if let Some(n) = self.integer(&mut g, toml, r.min, r.max) {
                    values.push((r.name, n));
                }
            }
            self.finish(g);
        }
        for (key, r) in [
            ("block_window", limits::BLOCK_WINDOW_SECS),
            ("block", limits::BLOCK_SECS),
            ("block_max", limits::BLOCK_MAX_SECS),
        ] {
            if let Some(d) = self.seconds_in(&mut s, key, r) {
                values.push((r.name, d.as_secs()));
            }
        }
        for (key, r) in [
            ("block_after", limits::BLOCK_AFTER),
            ("ipv4_prefix", limits::IPV4_PREFIX),
            ("ipv6_prefix", limits::IPV6_PREFIX),
        ] {
            if let Some(n) = self.integer(&mut s, key, r.min, r.max) {
                values.push((r.name, n));
            }
        }
        self.finish(s);
        bulwark_policy::Throttle::from_limits(|name| {
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .or_else(|| {
                    limits::ALL
                        .iter()
                        .find(|r| r.name == name)
                        .map(|r| r.default)
                })
                .unwrap_or(0)
        })
    }

    fn reputation(
        &mut self,
        root: &Table<'_>,
    ) -> (
        crate::reputation::dnsbl::Settings,
        crate::reputation::pregreet::Settings,
    ) {
        use crate::reputation::dnsbl::{AnswerFilter, ListClass, Settings, Zone};
        let mut s = self.section(root, "reputation");
        let d = crate::reputation::pregreet::Settings::default();
        let pregreet = crate::reputation::pregreet::Settings {
            wait: self.duration(&mut s, "greet_wait").unwrap_or(d.wait),
            pass_ttl: self
                .duration(&mut s, "greet_pass_ttl")
                .unwrap_or(d.pass_ttl),
            block: self
                .duration(&mut s, "early_talker_block")
                .unwrap_or(d.block),
        };
        if pregreet.wait > Duration::from_secs(30) {
            let line = s.line;
            self.errors.push(ConfigError {
                key: "reputation.greet_wait".into(),
                line,
                message: "at most 30s (clients give up on a silent server)".into(),
            });
        }
        let threshold = self.signed(&mut s, "dnsbl_threshold", 1, 1000).unwrap_or(1) as i32;
        let allow_threshold = self
            .signed(&mut s, "allow_threshold", -1000, 0)
            .unwrap_or(0) as i32;
        let timeout = self
            .duration(&mut s, "timeout")
            .unwrap_or(Duration::from_secs(2));
        let negative_ttl = self
            .duration(&mut s, "negative_ttl")
            .unwrap_or(Duration::from_secs(300));
        let cache_entries = self
            .integer(&mut s, "cache_entries", 1, 100_000_000)
            .unwrap_or(100_000) as usize;
        let list = self.get(&mut s, "dnsbl");
        let mut zones: Vec<Zone> = Vec::new();
        for mut z in self.tables(list, "reputation.dnsbl") {
            let path = z.path.clone();
            let name = self.required_string(&mut z, "zone");
            let weight = self.signed(&mut z, "weight", -1000, 1000).unwrap_or(1) as i32;
            let class = match self.string(&mut z, "class") {
                None => ListClass::Standard,
                Some((c, _)) if c == "standard" => ListClass::Standard,
                Some((c, _)) if c == "dynamic" => ListClass::Dynamic,
                Some((c, span)) => {
                    self.err(
                        &format!("{path}.class"),
                        Some(span),
                        format!("{c:?} must be \"standard\" or \"dynamic\""),
                    );
                    ListClass::Standard
                }
            };
            let mut answers = Vec::new();
            for (i, (a, span)) in self
                .string_list(&mut z, "answers")
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                match AnswerFilter::parse(&a) {
                    Ok(f) => answers.push(f),
                    Err(e) => self.err(&format!("{path}.answers[{i}]"), Some(span), e),
                }
            }
            self.finish(z);
            let Some((name, span)) = name else { continue };
            let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
            if !is_hostname(&name) {
                self.err(
                    &format!("{path}.zone"),
                    Some(span),
                    format!("{name:?} is not a DNS zone"),
                );
                continue;
            }
            if weight == 0 {
                self.err(
                    &format!("{path}.weight"),
                    Some(span),
                    "0 would make the zone count for nothing",
                );
                continue;
            }
            if zones.len() == crate::metrics::MAX_DNSBL_ZONES {
                self.err(
                    &format!("{path}.zone"),
                    Some(span),
                    format!("at most {} zones", crate::metrics::MAX_DNSBL_ZONES),
                );
                continue;
            }
            zones.push(Zone {
                name,
                weight,
                class,
                answers,
            });
        }
        self.finish(s);
        (
            Settings {
                zones,
                threshold,
                allow_threshold,
                timeout,
                negative_ttl,
                cache_entries,
            },
            pregreet,
        )
    }

    /// A whole number in `min..=max` (negative allowed).
    fn signed(
        &mut self,
        s: &mut Section<'_, '_>,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let v = self.get(s, key)?;
        let path = format!("{}.{key}", s.path);
        let n = match v.get_ref() {
            DeValue::Integer(i) => {
                i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.err(
                    &path,
                    Some(v.span()),
                    format!("must be a whole number from {min} to {max}"),
                );
                None
            }
        }
    }

    fn authentication(&mut self, root: &Table<'_>) -> AuthConfig {
        let mut s = self.section(root, "authentication");
        let enabled = self.boolean(&mut s, "enabled").unwrap_or(true);
        let timeout = self
            .duration(&mut s, "timeout")
            .unwrap_or(Duration::from_secs(4));
        self.finish(s);
        AuthConfig { enabled, timeout }
    }

    fn quarantine(&mut self, root: &Table<'_>) -> QuarantineConfig {
        let mut s = self.section(root, "quarantine");
        let dir = self.string(&mut s, "dir").map(|(d, _)| PathBuf::from(d));
        let retention = self
            .duration(&mut s, "retention")
            .unwrap_or(Duration::from_secs(30 * 86400));
        self.finish(s);
        QuarantineConfig { dir, retention }
    }

    fn tracking(&mut self, root: &Table<'_>) -> TrackingConfig {
        let mut s = self.section(root, "tracking");
        let enabled = self.boolean(&mut s, "enabled").unwrap_or(true);
        let dir = self.string(&mut s, "dir").map(|(d, _)| PathBuf::from(d));
        let segment_size = self
            .integer(&mut s, "segment_size", 1 << 16, 1 << 34)
            .unwrap_or(64 << 20);
        let max_size = self
            .integer(&mut s, "max_size", 1 << 20, 1 << 44)
            .unwrap_or(2 << 30);
        let flush_interval = self
            .duration(&mut s, "flush_interval")
            .unwrap_or(Duration::from_millis(100));
        let sync_interval = self
            .duration(&mut s, "sync_interval")
            .unwrap_or(Duration::from_secs(1));
        self.finish(s);
        TrackingConfig {
            enabled,
            dir,
            segment_size,
            max_size,
            flush_interval,
            sync_interval,
        }
    }

    fn float(&mut self, s: &mut Section<'_, '_>, key: &'static str) -> Option<f64> {
        let v = self.get(s, key)?;
        let n = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i.as_str().replace('_', "").parse::<f64>().ok(),
            _ => None,
        };
        if n.is_none_or(|x| !x.is_finite()) {
            let path = format!("{}.{key}", s.path);
            self.err(&path, Some(v.span()), "must be a number");
            return None;
        }
        n
    }

    fn boolean(&mut self, s: &mut Section<'_, '_>, key: &'static str) -> Option<bool> {
        let v = self.get(s, key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                let path = format!("{}.{key}", s.path);
                self.err(&path, Some(v.span()), "must be true or false");
                None
            }
        }
    }

    fn action(
        &mut self,
        s: &mut Section<'_, '_>,
        key: &'static str,
        default: bulwark_inspect::inspector::Action,
    ) -> bulwark_inspect::inspector::Action {
        let Some((text, span)) = self.string(s, key) else {
            return default;
        };
        match bulwark_inspect::inspector::Action::parse(&text) {
            Some(a) => a,
            None => {
                let path = format!("{}.{key}", s.path);
                self.err(
                    &path,
                    Some(span),
                    format!("{text:?} is not an action (reject, quarantine, strip, tag, deliver)"),
                );
                default
            }
        }
    }

    fn inspection(&mut self, root: &Table<'_>) -> Inspection {
        let mut s = self.section(root, "inspection");
        let enabled = self.boolean(&mut s, "enabled").unwrap_or(true);
        let rules = self
            .string_list(&mut s, "rules")
            .unwrap_or_default()
            .into_iter()
            .map(|(p, _)| PathBuf::from(p))
            .collect();
        let model = self.string(&mut s, "model").map(|(p, _)| PathBuf::from(p));
        let cache_dir = self
            .string(&mut s, "cache_dir")
            .map(|(p, _)| PathBuf::from(p));
        let d = bulwark_inspect::inspector::Verdicts::default();
        let tag_threshold = self
            .float(&mut s, "tag_threshold")
            .unwrap_or(d.tag_threshold);
        let spam_threshold = self
            .float(&mut s, "spam_threshold")
            .unwrap_or(d.spam_threshold);
        if spam_threshold < tag_threshold {
            let line = s.line;
            self.errors.push(ConfigError {
                key: "inspection.spam_threshold".into(),
                line,
                message: format!("{spam_threshold} is below tag_threshold ({tag_threshold})"),
            });
        }
        let verdicts = bulwark_inspect::inspector::Verdicts {
            tag_threshold,
            spam_threshold,
            spam_action: self.action(&mut s, "spam_action", d.spam_action),
            subject_tag: self
                .string(&mut s, "subject_tag")
                .map(|(t, _)| t)
                .unwrap_or_default(),
            malformed_action: self.action(&mut s, "malformed_action", d.malformed_action),
            phishing_action: self.action(&mut s, "phishing_action", d.phishing_action),
            dmarc_reject_action: self.action(&mut s, "dmarc_reject_action", d.dmarc_reject_action),
            dmarc_quarantine_action: self.action(
                &mut s,
                "dmarc_quarantine_action",
                d.dmarc_quarantine_action,
            ),
            virus_action: self.action(&mut s, "virus_action", d.virus_action),
            limit_action: self.action(&mut s, "limit_action", d.limit_action),
        };
        let hosts = |v: &mut Self, s: &mut Section<'_, '_>, key: &'static str| {
            let list = v.string_list(s, key)?;
            let mut out = Vec::with_capacity(list.len());
            for (h, span) in list {
                let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
                if is_hostname(&h) {
                    out.push(h);
                } else {
                    let path = format!("inspection.{key}");
                    v.err(&path, Some(span), format!("{h:?} is not a domain name"));
                }
            }
            Some(out)
        };
        let brands = hosts(self, &mut s, "brands");
        let shorteners = hosts(self, &mut s, "shorteners");
        let timeout = self
            .duration(&mut s, "timeout")
            .unwrap_or(Duration::from_secs(10));
        let timeout_tempfail = match self.string(&mut s, "timeout_action") {
            None => false,
            Some((a, _)) if a == "accept" => false,
            Some((a, _)) if a == "tempfail" => true,
            Some((a, span)) => {
                self.err(
                    "inspection.timeout_action",
                    Some(span),
                    format!("{a:?} is not \"accept\" or \"tempfail\""),
                );
                false
            }
        };
        let url_blocklist = self
            .string_list(&mut s, "url_blocklist")
            .unwrap_or_default()
            .into_iter()
            .map(|(p, _)| PathBuf::from(p))
            .collect();
        let d = bulwark_inspect::mime::Limits::default();
        let limits = bulwark_inspect::mime::Limits {
            max_parts: self
                .integer(&mut s, "max_parts", 1, 1_000_000)
                .map_or(d.max_parts, |v| v as usize),
            max_depth: self
                .integer(&mut s, "max_depth", 1, 1000)
                .map_or(d.max_depth, |v| v as usize),
            max_header_bytes: self
                .integer(&mut s, "max_header_bytes", 1024, 64 << 20)
                .map_or(d.max_header_bytes, |v| v as usize),
            max_scan_bytes: self
                .integer(&mut s, "max_scan_size", 64 << 10, 1 << 30)
                .map_or(d.max_scan_bytes, |v| v as usize),
            max_urls: d.max_urls,
        };
        self.finish(s);
        Inspection {
            enabled,
            rules,
            model,
            cache_dir,
            verdicts,
            brands,
            shorteners,
            url_blocklist,
            timeout,
            timeout_tempfail,
            limits,
        }
    }

    fn server(&mut self, root: &Table<'_>) -> Server {
        let mut s = self.section(root, "server");
        let hostname = match self.string(&mut s, "hostname") {
            Some((h, span)) => {
                if is_hostname(&h) {
                    h
                } else {
                    self.err(
                        "server.hostname",
                        Some(span),
                        format!("{h:?} is not a valid host name"),
                    );
                    h
                }
            }
            None => system_hostname(),
        };
        let before = self.errors.len();
        let listen = self
            .socket_addrs(&mut s, "listen")
            .unwrap_or_else(|| vec![SocketAddr::from(([127, 0, 0, 1], 2525))]);
        if listen.is_empty() && self.errors.len() == before {
            let line = s.line;
            self.errors.push(ConfigError {
                key: "server.listen".into(),
                line,
                message: "needs at least one address".into(),
            });
        }
        let metrics = match self.string(&mut s, "metrics") {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9425))),
            Some((m, _)) if m.is_empty() => None,
            Some((m, span)) => match m.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.err(
                        "server.metrics",
                        Some(span),
                        format!("{m:?} is not an IP:port address"),
                    );
                    None
                }
            },
        };
        let cores = self.integer(&mut s, "cores", 1, 1024).map(|n| n as usize);
        let admin_dir = self
            .string(&mut s, "admin_dir")
            .map(|(d, _)| PathBuf::from(d));
        let memory_per_core = self
            .integer(&mut s, "memory_per_core", 8 << 20, 1 << 40)
            .unwrap_or(128 << 20);
        self.finish(s);
        Server {
            hostname,
            listen,
            metrics,
            cores,
            admin_dir,
            memory_per_core,
        }
    }

    fn spool(&mut self, root: &Table<'_>) -> Spool {
        let mut s = self.section(root, "spool");
        let dir = self
            .string(&mut s, "dir")
            .map(|(d, _)| PathBuf::from(d))
            .unwrap_or_else(|| PathBuf::from("/var/spool/bulwark"));
        let segment_size = self
            .integer(&mut s, "segment_size", 1 << 16, 1 << 34)
            .unwrap_or(64 << 20);
        self.finish(s);
        Spool { dir, segment_size }
    }

    fn queue(&mut self, root: &Table<'_>) -> Queue {
        let mut s = self.section(root, "queue");
        let lifetime = self
            .duration(&mut s, "lifetime")
            .unwrap_or(Duration::from_secs(10 * 86400));
        let retry = match self.string_list(&mut s, "retry") {
            None => ["1m", "5m", "15m", "30m", "1h"]
                .iter()
                .filter_map(|t| parse_duration(t).ok())
                .collect(),
            Some(items) => {
                let mut out = Vec::new();
                for (i, (text, span)) in items.into_iter().enumerate() {
                    match parse_duration(&text) {
                        Ok(d) => out.push(d),
                        Err(e) => self.err(&format!("queue.retry[{i}]"), Some(span), e),
                    }
                }
                if out.is_empty() {
                    let line = s.line;
                    self.errors.push(ConfigError {
                        key: "queue.retry".into(),
                        line,
                        message: "needs at least one delay".into(),
                    });
                }
                out
            }
        };
        let delay_warning = match self.string(&mut s, "delay_warning") {
            None => Some(Duration::from_secs(4 * 3600)),
            Some((t, _)) if matches!(t.trim(), "0" | "0s" | "off") => None,
            Some((t, span)) => match parse_duration(&t) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.err("queue.delay_warning", Some(span), e);
                    None
                }
            },
        };
        self.finish(s);
        Queue {
            lifetime,
            retry,
            delay_warning,
        }
    }

    fn limits(&mut self, root: &Table<'_>) -> LimitsConfig {
        let mut s = self.section(root, "limits");
        let (size, rcpts) = (limits::MESSAGE_SIZE, limits::RECIPIENTS);
        let message_size = self
            .integer(&mut s, "message_size", size.min, size.max)
            .unwrap_or(size.default);
        let recipients = self
            .integer(&mut s, "recipients", rcpts.min, rcpts.max)
            .unwrap_or(rcpts.default) as u32;
        self.finish(s);
        LimitsConfig {
            message_size,
            recipients,
        }
    }

    fn smtp(&mut self, root: &Table<'_>) -> Smtp {
        let mut s = self.section(root, "smtp");
        let command_timeout = self
            .duration(&mut s, "command_timeout")
            .unwrap_or(Duration::from_secs(300));
        let data_timeout = self
            .duration(&mut s, "data_timeout")
            .unwrap_or(Duration::from_secs(180));
        let session_time = self
            .duration(&mut s, "session_time")
            .unwrap_or(Duration::from_secs(1800));
        let max_errors = self.integer(&mut s, "max_errors", 1, 1000).unwrap_or(10) as u32;
        let max_connections = self
            .integer(&mut s, "max_connections", 1, 10_000_000)
            .unwrap_or(100_000) as usize;
        let max_line_length = self
            .integer(&mut s, "max_line_length", 998, 16 << 20)
            .unwrap_or(1 << 20) as usize;
        self.finish(s);
        Smtp {
            command_timeout,
            data_timeout,
            session_time,
            max_errors,
            max_connections,
            max_line_length,
        }
    }

    fn delivery(&mut self, root: &Table<'_>) -> Delivery {
        let mut s = self.section(root, "delivery");
        let connect_timeout = self
            .duration(&mut s, "connect_timeout")
            .unwrap_or(Duration::from_secs(30));
        let command_timeout = self
            .duration(&mut s, "command_timeout")
            .unwrap_or(Duration::from_secs(300));
        let data_timeout = self
            .duration(&mut s, "data_timeout")
            .unwrap_or(Duration::from_secs(600));
        let connections_per_destination = self
            .integer(&mut s, "connections_per_destination", 1, 1000)
            .unwrap_or(16) as usize;
        let rate_per_destination = self.rate(&mut s, "rate_per_destination").unwrap_or(None);
        let idle_time = self
            .duration(&mut s, "idle_time")
            .unwrap_or(Duration::from_secs(2));
        let backoff_min = self
            .duration(&mut s, "backoff_min")
            .unwrap_or(Duration::from_secs(10));
        let backoff_max = self
            .duration(&mut s, "backoff_max")
            .unwrap_or(Duration::from_secs(300));
        if backoff_min.is_zero() || backoff_max < backoff_min {
            let line = s.line;
            self.errors.push(ConfigError {
                key: "delivery.backoff_max".into(),
                line,
                message: format!(
                    "backoff_min ({}) must be above zero and at most backoff_max ({})",
                    humantime::format_duration(backoff_min),
                    humantime::format_duration(backoff_max)
                ),
            });
        }
        let destinations = self.destination_limits(&mut s);
        let line_length_limit = match self.integer(&mut s, "line_length_limit", 0, 1 << 20) {
            None => Some(crate::smtp::data::MAX_TEXT_LINE),
            Some(0) => None,
            Some(n) if n < 78 => {
                let line = s.line;
                self.errors.push(ConfigError {
                    key: "delivery.line_length_limit".into(),
                    line,
                    message: format!(
                        "{n} is too short to wrap lines at; use 0 (never wrap) or at least 78"
                    ),
                });
                None
            }
            Some(n) => Some(n as usize),
        };
        self.finish(s);
        Delivery {
            line_length_limit,
            connect_timeout,
            command_timeout,
            data_timeout,
            connections_per_destination,
            rate_per_destination,
            idle_time,
            backoff_min,
            backoff_max,
            destinations,
        }
    }

    /// A rate such as `"100/s"`, `"600/m"` or `"20/h"`; `"0"` means no limit.
    fn rate(&mut self, s: &mut Section<'_, '_>, key: &'static str) -> Option<Option<f64>> {
        let (text, span) = self.string(s, key)?;
        match parse_rate(&text) {
            Ok(r) => Some(r),
            Err(e) => {
                let path = format!("{}.{key}", s.path);
                self.err(&path, Some(span), e);
                None
            }
        }
    }

    /// `[[delivery.destinations]]`: name, connections, rate.
    fn destination_limits(&mut self, parent: &mut Section<'_, '_>) -> Vec<DestinationLimits> {
        let v = self.get(parent, "destinations");
        let mut out: Vec<DestinationLimits> = Vec::new();
        for mut s in self.tables(v, "delivery.destinations") {
            let path = s.path.clone();
            let name = self.required_string(&mut s, "name");
            let connections = self
                .integer(&mut s, "connections", 1, 1000)
                .map(|n| n as usize);
            let rate = self.rate(&mut s, "rate");
            self.finish(s);
            let Some((name, span)) = name else { continue };
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !is_hostname(&name) && name.parse::<IpAddr>().is_err() {
                self.err(
                    &format!("{path}.name"),
                    Some(span),
                    format!("{name:?} is not a host name, IP address or domain"),
                );
                continue;
            }
            if out.iter().any(|d| d.name == name) {
                self.err(
                    &format!("{path}.name"),
                    Some(span),
                    format!("destination {name:?} is listed twice"),
                );
                continue;
            }
            out.push(DestinationLimits {
                name,
                connections,
                rate,
            });
        }
        out
    }

    fn tls(&mut self, root: &Table<'_>) -> Option<Tls> {
        let mut s = self.section(root, "tls");
        s.table?;
        let cert = self.required_string(&mut s, "cert");
        let key = self.required_string(&mut s, "key");
        let mut ok = true;
        for (name, v) in [("tls.cert", &cert), ("tls.key", &key)] {
            if let Some((path, span)) = v
                && let Err(e) = std::fs::metadata(path)
            {
                self.err(
                    name,
                    Some(span.clone()),
                    format!("cannot read {path:?}: {e}"),
                );
                ok = false;
            }
        }
        self.finish(s);
        match (cert, key) {
            (Some((c, _)), Some((k, _))) if ok => Some(Tls {
                cert: c.into(),
                key: k.into(),
            }),
            _ => None,
        }
    }

    fn dns(&mut self, root: &Table<'_>) -> Dns {
        let mut s = self.section(root, "dns");
        let mut nameservers = Vec::new();
        if let Some(items) = self.string_list(&mut s, "nameservers") {
            for (i, (text, span)) in items.into_iter().enumerate() {
                let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                    text.parse::<IpAddr>()
                        .ok()
                        .map(|ip| SocketAddr::new(ip, 53))
                });
                match parsed {
                    Some(a) => nameservers.push(a),
                    None => self.err(
                        &format!("dns.nameservers[{i}]"),
                        Some(span),
                        format!("{text:?} is not an IP or IP:port"),
                    ),
                }
            }
        }
        self.finish(s);
        Dns { nameservers }
    }

    fn policy(&mut self, root: &Table<'_>) -> PolicyConfig {
        let mut s = self.section(root, "policy");
        let snapshot = match self.string(&mut s, "snapshot") {
            Some((p, span)) if p.is_empty() || !p.starts_with('/') => {
                self.err(
                    "policy.snapshot",
                    Some(span),
                    format!("{p:?} must be an absolute path"),
                );
                None
            }
            Some((p, _)) => Some(PathBuf::from(p)),
            None => None,
        };
        self.finish(s);
        PolicyConfig { snapshot }
    }

    /// Two lists of sender patterns from keys of one table.
    fn sender_lists(
        &mut self,
        s: &mut Section<'_, '_>,
        approved: &'static str,
        blocked: &'static str,
    ) -> SenderLists {
        let mut lists = SenderLists::default();
        for (key, out) in [
            (approved, &mut lists.approved),
            (blocked, &mut lists.blocked),
        ] {
            for (i, (text, span)) in self
                .string_list(s, key)
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                match check_sender_pattern(&text) {
                    Ok(()) => out.push(text),
                    Err(e) => self.err(&format!("{}.{key}[{i}]", s.path), Some(span), e),
                }
            }
        }
        lists
    }

    fn harvest(&mut self, root: &Table<'_>) -> HarvestConfig {
        let mut s = self.section(root, "harvest");
        let m = limits::HARVEST_MAX_UNKNOWN;
        let max_unknown = self
            .integer(&mut s, "max_unknown", m.min, m.max)
            .unwrap_or(m.default) as u32;
        let r = limits::HARVEST_WINDOW_SECS;
        let window = self
            .seconds_in(&mut s, "window", r)
            .unwrap_or(Duration::from_secs(r.default));
        let r = limits::HARVEST_BLOCK_SECS;
        let block = self
            .seconds_in(&mut s, "block", r)
            .unwrap_or(Duration::from_secs(r.default));
        self.finish(s);
        HarvestConfig {
            max_unknown,
            window,
            block,
        }
    }

    fn ip(&mut self, root: &Table<'_>) -> IpConfig {
        let mut s = self.section(root, "ip");
        let mut ip = IpConfig::default();
        for (key, out) in [
            ("allow", &mut ip.allow),
            ("block", &mut ip.block),
            ("drop", &mut ip.drop),
        ] {
            for (i, (text, span)) in self
                .string_list(&mut s, key)
                .unwrap_or_default()
                .into_iter()
                .enumerate()
            {
                match Cidr::parse(&text) {
                    Some(c) => out.push(c),
                    None => self.err(
                        &format!("ip.{key}[{i}]"),
                        Some(span),
                        format!("{text:?} is not an IP address or CIDR network"),
                    ),
                }
            }
        }
        self.finish(s);
        ip
    }

    /// A domain's own thresholds and actions (keys as in `[inspection]`); what is not
    /// set inherits.
    fn verdict_overrides(
        &mut self,
        s: &mut Section<'_, '_>,
    ) -> bulwark_policy::filtering::VerdictPolicy {
        use bulwark_policy::filtering::{FilterAction, VerdictSpec};
        let action = |v: &mut Self, s: &mut Section<'_, '_>, key: &'static str| {
            let (text, span) = v.string(s, key)?;
            if FilterAction::parse(&text).is_none() {
                let path = format!("{}.{key}", s.path);
                v.err(
                    &path,
                    Some(span),
                    format!("{text:?} is not an action (use {})", FilterAction::NAMES),
                );
                return None;
            }
            Some(text)
        };
        let spec = VerdictSpec {
            tag_threshold: self.float(s, "tag_threshold"),
            spam_threshold: self.float(s, "spam_threshold"),
            spam_action: action(self, s, "spam_action"),
            phishing_action: action(self, s, "phishing_action"),
            malformed_action: action(self, s, "malformed_action"),
            dmarc_reject_action: action(self, s, "dmarc_reject_action"),
            dmarc_quarantine_action: action(self, s, "dmarc_quarantine_action"),
            virus_action: action(self, s, "virus_action"),
            limit_action: action(self, s, "limit_action"),
            antivirus_on_failure: self.string(s, "antivirus_on_failure").map(|(t, _)| t),
            subject_tag: self.string(s, "subject_tag").map(|(t, _)| t),
        };
        match spec.compile() {
            Ok(p) => p,
            Err(e) => {
                let line = s.line;
                self.errors.push(ConfigError {
                    key: format!("{}.{}", s.path, e.field),
                    line,
                    message: e.message,
                });
                Default::default()
            }
        }
    }

    /// `[[policy_rules]]`: conditions and an action, tried in order.
    fn policy_rules(&mut self, root: &Table<'_>) -> Vec<bulwark_policy::filtering::PolicyRule> {
        use bulwark_policy::filtering::RuleSpec;
        let mut out: Vec<bulwark_policy::filtering::PolicyRule> = Vec::new();
        for mut s in self.tables(root.get("policy_rules"), "policy_rules") {
            let list = |v: &mut Self, s: &mut Section<'_, '_>, key: &'static str| -> Vec<String> {
                v.string_list(s, key)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(x, _)| x)
                    .collect()
            };
            let name = self.required_string(&mut s, "name").map(|(n, _)| n);
            let action = self.required_string(&mut s, "action").map(|(a, _)| a);
            let spec = RuleSpec {
                name: name.clone().unwrap_or_default(),
                senders: list(self, &mut s, "senders"),
                recipients: list(self, &mut s, "recipients"),
                header: self.string(&mut s, "header").map(|(h, _)| h),
                contains: list(self, &mut s, "contains"),
                min_size: self.integer(&mut s, "min_size", 0, u64::MAX >> 1),
                max_size: self.integer(&mut s, "max_size", 0, u64::MAX >> 1),
                min_score: self.float(&mut s, "min_score"),
                max_score: self.float(&mut s, "max_score"),
                verdicts: list(self, &mut s, "verdicts"),
                attachment_types: list(self, &mut s, "attachment_types"),
                attachment_extensions: list(self, &mut s, "attachment_extensions"),
                attachment_names: list(self, &mut s, "attachment_names"),
                attachment_min_size: self.integer(&mut s, "attachment_min_size", 0, u64::MAX >> 1),
                attachment_max_size: self.integer(&mut s, "attachment_max_size", 0, u64::MAX >> 1),
                double_extension: self.boolean(&mut s, "double_extension").unwrap_or(false),
                encrypted: self.boolean(&mut s, "encrypted").unwrap_or(false),
                unscannable: self.boolean(&mut s, "unscannable").unwrap_or(false),
                action: action.clone().unwrap_or_default(),
            };
            let (path, line) = (s.path.clone(), s.line);
            self.finish(s);
            if name.is_none() || action.is_none() {
                continue;
            }
            match spec.compile() {
                Ok(rule) if out.iter().any(|r| r.name == rule.name) => {
                    self.errors.push(ConfigError {
                        key: format!("{path}.name"),
                        line,
                        message: format!("{:?} is used by an earlier rule", rule.name),
                    });
                }
                Ok(rule) => out.push(rule),
                Err(e) => self.errors.push(ConfigError {
                    key: format!("{path}.{}", e.field),
                    line,
                    message: e.message,
                }),
            }
        }
        out
    }

    fn domains(&mut self, root: &Table<'_>) -> Vec<DomainConfig> {
        let mut out: Vec<DomainConfig> = Vec::new();
        for mut s in self.tables(root.get("domains"), "domains") {
            let path = s.path.clone();
            let name = self.required_string(&mut s, "name");
            let route = self.required_string(&mut s, "route");
            let directory = self.string_list(&mut s, "directory");
            let senders = self.sender_lists(&mut s, "approved_senders", "blocked_senders");
            let tls = match self.string(&mut s, "tls") {
                None => TlsPolicy::Opportunistic,
                Some((t, span)) => TlsPolicy::parse(&t).unwrap_or_else(|| {
                    self.err(
                        &format!("{path}.tls"),
                        Some(span),
                        format!("{t:?} must be \"opportunistic\", \"required\" or \"none\""),
                    );
                    TlsPolicy::Opportunistic
                }),
            };
            let tls_ca = match self.string(&mut s, "tls_ca") {
                None => String::new(),
                Some((ca, span)) => {
                    if let Err(e) = std::fs::metadata(&ca) {
                        self.err(
                            &format!("{path}.tls_ca"),
                            Some(span),
                            format!("cannot read {ca:?}: {e}"),
                        );
                    }
                    ca
                }
            };
            let verdicts = self.verdict_overrides(&mut s);
            self.finish(s);
            let (Some((name, nspan)), Some((route, rspan))) = (name, route) else {
                continue;
            };
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !is_hostname(&name) {
                self.err(
                    &format!("{path}.name"),
                    Some(nspan),
                    format!("{name:?} is not a valid domain name"),
                );
                continue;
            }
            if out.iter().any(|d| d.name == name) {
                self.err(
                    &format!("{path}.name"),
                    Some(nspan),
                    format!("domain {name:?} is listed twice"),
                );
                continue;
            }
            match parse_route(&route) {
                Ok((host, port)) => {
                    let directory = directory.map(|entries| {
                        let mut addrs = Vec::with_capacity(entries.len());
                        for (k, (addr, span)) in entries.into_iter().enumerate() {
                            let key = format!("{path}.directory[{k}]");
                            if let Err(e) = check_directory_address(&addr) {
                                self.err(&key, Some(span), e);
                            } else if !addr
                                .rsplit_once('@')
                                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&name))
                            {
                                self.err(
                                    &key,
                                    Some(span),
                                    format!("{addr:?} is not in the domain {name}"),
                                );
                            } else {
                                addrs.push(addr);
                            }
                        }
                        addrs
                    });
                    out.push(DomainConfig {
                        name,
                        host,
                        port,
                        directory,
                        senders,
                        tls,
                        tls_ca,
                        verdicts,
                    })
                }
                Err(e) => self.err(&format!("{path}.route"), Some(rspan), e),
            }
        }
        out
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|h| is_hostname(h))
        .unwrap_or_else(|| "localhost".into())
}

/// Parses `N/s`, `N/m` or `N/h` into messages per second; `0` (or `0/s`…) is no limit.
pub fn parse_rate(text: &str) -> Result<Option<f64>, String> {
    let t = text.trim();
    let (n, per) = match t.split_once('/') {
        Some((n, unit)) => {
            let per = match unit.trim() {
                "s" | "sec" | "second" => 1.0,
                "m" | "min" | "minute" => 60.0,
                "h" | "hour" => 3600.0,
                u => {
                    return Err(format!(
                        "{text:?}: unknown unit {u:?} (use N/s, N/m or N/h)"
                    ));
                }
            };
            (n.trim(), per)
        }
        None if t == "0" => return Ok(None),
        None => return Err(format!("{text:?} is not a rate (use N/s, N/m or N/h)")),
    };
    match n.parse::<u32>() {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(f64::from(n) / per)),
        Err(_) => Err(format!("{text:?}: {n:?} is not a whole number")),
    }
}

/// A humantime duration such as "10d" or "1m 30s"; zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err(format!("{text:?} must be longer than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "{text:?} is not a duration ({e}); use forms like \"30s\", \"5m\", \"10d\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../examples/bulwark.toml");
        let c = Config::parse(text).unwrap();
        assert!(!c.domains.is_empty());
        assert_eq!(c.queue.lifetime, Duration::from_secs(10 * 86400));
    }

    #[test]
    fn full_config() {
        let text = r#"
[server]
hostname = "mx.bulwark.test"
listen = ["127.0.0.1:2525", "[::1]:2525"]
metrics = "127.0.0.1:9425"
cores = 2

[spool]
dir = "/tmp/spool"

[queue]
lifetime = "10d"
retry = ["1m", "5m", "15m", "30m", "1h"]

[limits]
message_size = 52428800
recipients = 1000

[delivery]
connections_per_destination = 4
rate_per_destination = "600/m"
backoff_min = "5s"
backoff_max = "2m"

[[delivery.destinations]]
name = "Mail.Other.Test"
connections = 1
rate = "2/s"

[[delivery.destinations]]
name = "gmail.test"
rate = "0"

[dns]
nameservers = ["127.0.0.1:5353", "10.0.0.1"]

[[domains]]
name = "Example.Test"
route = "127.0.0.1:2526"

[[domains]]
name = "other.test"
route = "mail.other.test"
"#;
        let c = Config::parse(text).unwrap();
        assert_eq!(c.server.listen.len(), 2);
        assert_eq!(c.server.cores, Some(2));
        assert_eq!(c.queue.retry.len(), 5);
        assert_eq!(c.queue.retry[4], Duration::from_secs(3600));
        assert_eq!(c.queue.delay_warning, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(c.delivery.rate_per_destination, Some(10.0));
        assert_eq!(c.delivery.backoff_min, Duration::from_secs(5));
        assert_eq!(
            c.delivery.destinations,
            [
                DestinationLimits {
                    name: "mail.other.test".into(),
                    connections: Some(1),
                    rate: Some(Some(2.0)),
                },
                DestinationLimits {
                    name: "gmail.test".into(),
                    connections: None,
                    rate: Some(None),
                },
            ]
        );
        assert_eq!(c.admin_dir(), PathBuf::from("/tmp/spool/admin"));
        assert_eq!(
            c.dns.nameservers[1],
            "10.0.0.1:53".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.domains[0].name, "example.test");
        assert_eq!(c.domains[0].port, 2526);
        assert_eq!(c.domains[1].host, "mail.other.test");
        assert_eq!(c.domains[1].port, 25);
        let p = c.policy();
        assert_eq!(p.domains.len(), 2);
        assert_eq!(p.limits.recipients, 1000);
    }

    #[test]
    fn every_error_is_named_with_key_and_line() {
        let text = r#"[server]
listen = ["nonsense"]
cores = 0
colour = "blue"

[queue]
lifetime = "ten days"
retry = ["1m", 5]

[limits]
message_size = "big"

[[domains]]
name = "ok.test"
route = "host:99999"

[[domains]]
route = "127.0.0.1:25"

[mystery]
"#;
        let errs = Config::parse(text).unwrap_err().errors;
        let found: Vec<(String, Option<usize>)> =
            errs.iter().map(|e| (e.key.clone(), e.line)).collect();
        let expect = [
            ("mystery", 20),
            ("server.listen[0]", 2),
            ("server.cores", 3),
            ("server.colour", 4),
            ("queue.lifetime", 7),
            ("queue.retry[1]", 8),
            ("limits.message_size", 11),
            ("domains[0].route", 15),
            ("domains[1].name", 17),
        ];
        for (key, line) in expect {
            assert!(
                found.contains(&(key.to_string(), Some(line))),
                "missing {key} at line {line} in {found:?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
    }

    #[test]
    fn delivery_limits_errors_name_key_and_line() {
        let text = r#"[delivery]
rate_per_destination = "fast"
backoff_min = "10m"
backoff_max = "1m"

[[delivery.destinations]]
name = "bad name!"

[[delivery.destinations]]
name = "ok.test"
rate = "5/fortnight"
connections = 0
speed = 3

[queue]
delay_warning = "soon"
"#;
        let errs = Config::parse(text).unwrap_err().errors;
        let found: Vec<(String, Option<usize>)> =
            errs.iter().map(|e| (e.key.clone(), e.line)).collect();
        let expect = [
            ("delivery.rate_per_destination", 2),
            ("delivery.backoff_max", 1),
            ("delivery.destinations[0].name", 7),
            ("delivery.destinations[1].rate", 11),
            ("delivery.destinations[1].connections", 12),
            ("delivery.destinations[1].speed", 13),
            ("queue.delay_warning", 16),
        ];
        for (key, line) in expect {
            assert!(
                found.contains(&(key.to_string(), Some(line))),
                "missing {key} at line {line} in {found:?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate("30/m"), Ok(Some(0.5)));
        assert_eq!(
            Config::parse("[queue]\ndelay_warning = \"0s\"\n")
                .unwrap()
                .queue
                .delay_warning,
            None
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let errs = Config::parse("[server]\nhostname = \n").unwrap_err().errors;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, Some(2));
        assert!(errs[0].to_string().starts_with("line 2: TOML syntax"));
    }

    #[test]
    fn duplicate_domains_and_bad_names() {
        let text = "[[domains]]\nname = \"a.test\"\nroute = \"127.0.0.1:25\"\n[[domains]]\nname = \"A.test\"\nroute = \"127.0.0.1:25\"\n[[domains]]\nname = \"bad name\"\nroute = \"x\"\n";
        let errs = Config::parse(text).unwrap_err().errors;
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].key, "domains[1].name");
        assert_eq!(errs[1].key, "domains[2].name");
    }

    #[test]
    fn policy_lists_are_checked() {
        let text = r#"[senders]
approved = ["ok.test", "*.ok.test", "a@ok.test"]
blocked = ["bad entry"]

[ip]
block = ["10.0.0.0/8", "10.0.0.0/40"]

[policy]
snapshot = "relative/path"

[[domains]]
name = "example.test"
route = "127.0.0.1:25"
directory = ["alice@example.test", "bob@other.test", "a@b.test;c@d.test", "sp ace@example.test"]
blocked_senders = ["*."]
"#;
        let errs = Config::parse(text).unwrap_err().errors;
        let found: Vec<(String, Option<usize>)> =
            errs.iter().map(|e| (e.key.clone(), e.line)).collect();
        let expect = [
            ("senders.blocked[0]", 3),
            ("ip.block[1]", 6),
            ("policy.snapshot", 9),
            ("domains[0].directory[1]", 14),
            ("domains[0].directory[2]", 14),
            ("domains[0].directory[3]", 14),
            ("domains[0].blocked_senders[0]", 15),
        ];
        for (key, line) in expect {
            assert!(
                found.contains(&(key.to_string(), Some(line))),
                "missing {key} at line {line} in {found:?}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{errs:#?}");
        assert!(
            errs.iter()
                .any(|e| e.message.contains("is not in the domain example.test"))
        );
        assert!(errs.iter().any(|e| e.message.contains("several addresses")));
    }

    #[test]
    fn throttle_settings_reach_the_snapshot_and_bad_ones_are_named() {
        let text = "[throttle]\nblock = \"30m\"\nipv4_prefix = 24\n[throttle.suspect]\nmax_connections = 2\n";
        let t = Config::parse(text).unwrap().policy().throttle;
        assert_eq!(t.block_secs, 1800);
        assert_eq!(t.ipv4_prefix, 24);
        assert_eq!(t.suspect.connections, 2);
        assert_eq!(t.unknown.connections, 50, "the rest keep their defaults");
        let text = "[throttle]\nblock = \"40d\"\nipv6_prefix = 96\n\n[throttle.unknown]\nmax_connections = -1\nburst = 3\n";
        let errs = Config::parse(text).unwrap_err().errors;
        let found: Vec<(String, Option<usize>)> =
            errs.iter().map(|e| (e.key.clone(), e.line)).collect();
        for (key, line) in [
            ("throttle.block", 2),
            ("throttle.ipv6_prefix", 3),
            ("throttle.unknown.max_connections", 6),
            ("throttle.unknown.burst", 7),
        ] {
            assert!(
                found.contains(&(key.to_string(), Some(line))),
                "missing {key} at line {line} in {found:?}"
            );
        }
    }

    #[test]
    fn policy_lists_reach_the_snapshot() {
        let text = "[senders]\nblocked = [\"spam.test\"]\n[ip]\nallow = [\"192.0.2.1\"]\n[[domains]]\nname = \"example.test\"\nroute = \"127.0.0.1:25\"\ndirectory = [\"Alice@example.test\"]\n";
        let p = Config::parse(text).unwrap().policy();
        assert!(p.domains[0].has_directory);
        assert_eq!(p.domains[0].directory, ["Alice@example.test"]);
        assert_eq!(p.senders.blocked, ["spam.test"]);
        assert_eq!(p.ips.allow.len(), 1);
        let snap = bulwark_policy::Snapshot::from_policy(&p).unwrap();
        assert_eq!(
            snap.policy()
                .domain("example.test")
                .unwrap()
                .knows("alice@example.test"),
            Some(true)
        );
    }

    #[test]
    fn routes() {
        assert_eq!(
            parse_route("10.0.0.1:2525").unwrap(),
            ("10.0.0.1".into(), 2525)
        );
        assert_eq!(parse_route("[::1]:26").unwrap(), ("::1".into(), 26));
        assert_eq!(parse_route("10.0.0.1").unwrap(), ("10.0.0.1".into(), 25));
        assert_eq!(
            parse_route("Mail.Example.test:587").unwrap(),
            ("mail.example.test".into(), 587)
        );
        assert!(parse_route("mail.example.test:0").is_err());
        assert!(parse_route("bad host:25").is_err());
    }
}
