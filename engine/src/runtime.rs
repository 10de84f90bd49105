//! The engine's executors: one glommio executor per core, pinned, each with its own
//! listening sockets (SO_REUSEPORT), sessions, spool, delivery queues and metric shard.
//! Cores share nothing mutable.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context;
use bulwark_policy::Snapshot;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, warn};

use crate::config::{Config, Smtp};
use crate::deliver::client::Timeouts;
use crate::deliver::dns::Dns;
use crate::deliver::{self, Deliverer, Message};
use crate::memory::Budget;
use crate::metrics::{Metrics, Shard};
use crate::net::{session, tls};
use crate::policy::CorePolicy;
use crate::queue::{QueueIds, Spool};
use crate::reputation::guard::{self, Guard};
use crate::smtp::SessionConfig;

/// Everything one core owns.
pub struct Core {
    pub id: usize,
    pub session_cfg: SessionConfig,
    pub smtp: Smtp,
    pub policy: Rc<CorePolicy>,
    pub spool: Spool,
    pub ids: Rc<QueueIds>,
    pub metrics: Arc<Metrics>,
    pub tls: Option<futures_rustls::TlsAcceptor>,
    pub deliverer: Rc<Deliverer>,
    pub sessions: Cell<usize>,
    pub max_sessions: usize,
    pub guard: Rc<Guard>,
    /// Message content this core holds in memory, against `[server] memory_per_core`.
    pub memory: Rc<Budget>,
    /// Content inspection, when enabled: the shared rules and this core's scratch;
    /// replaced between transactions when control publishes other rules.
    pub inspect: std::cell::RefCell<Option<Rc<CoreInspect>>>,
    pub inspect_loader: Arc<crate::inspection::Loader>,
    /// Full scans of streamed messages: their deadline, and whether missing it is a
    /// `451 4.7.0` (else the message is accepted on its first piece's inspection).
    pub inspect_timeout: std::time::Duration,
    pub inspect_timeout_tempfail: bool,
    /// One whole scan of a streamed message at a time on this core.
    pub full_scans: glommio::sync::Semaphore,
    /// clamd, when `[antivirus] clamd` names it.
    pub clamd: Option<Rc<crate::antivirus::Clamd>>,
    pub antivirus: crate::antivirus::Settings,
    pub quarantine: crate::quarantine::Quarantine,
    pub auth: Option<crate::auth::Auth>,
    /// The pregreet test (`[reputation] greet_wait`).
    pub pregreet: crate::reputation::pregreet::Pregreet,
    /// DNS block and allow lists of the policy in force, when it has zones (rebuilt, with
    /// an empty cache, when a policy generation changes them).
    pub dnsbl: std::cell::RefCell<Option<Rc<crate::reputation::dnsbl::Lists>>>,
    /// The policy generation `dnsbl` was checked against.
    pub dnsbl_generation: Cell<u64>,
    /// `[reputation]`: the lists' timing and cache size.
    pub dnsbl_base: crate::reputation::dnsbl::Settings,
    pub dns: Dns,
    /// Hit counters of the policy rules in force (replaced when their names change).
    pub policy_rule_hits: std::cell::RefCell<Option<Arc<crate::metrics::RuleHits>>>,
}

pub use crate::inspection::CoreInspect;

impl Core {
    pub fn shard(&self) -> &Shard {
        self.metrics.shard(self.id)
    }

    /// Counts a message whose action policy rule `index` of `snapshot` decided.
    pub fn policy_rule_hit(&self, snapshot: &Snapshot, index: usize) {
        let rules = &snapshot.policy().rules;
        let mut cur = self.policy_rule_hits.borrow_mut();
        let same = cur.as_ref().is_some_and(|h| {
            h.names.len() == rules.len()
                && h.names
                    .iter()
                    .zip(rules.iter())
                    .all(|(a, b)| a == b.name.as_str())
        });
        if !same {
            let names = rules.iter().map(|r| r.name.as_str().to_string()).collect();
            *cur = Some(self.metrics.policy_rule_hits(names));
        }
        if let Some(c) = cur.as_ref().and_then(|h| h.counts.get(index)) {
            c.inc();
        }
    }

    /// The DNS lists of the policy in force (none without zones). One comparison per
    /// call; the lists are rebuilt only when a new generation changed them.
    pub fn dns_lists(&self) -> Option<Rc<crate::reputation::dnsbl::Lists>> {
        let snap = self.policy.current();
        let generation = snap.policy().generation.to_native();
        if generation != self.dnsbl_generation.get() {
            self.dnsbl_generation.set(generation);
            let p = &snap.policy().dnsbl;
            let settings = self.dnsbl_base.with_policy(p);
            let mut cur = self.dnsbl.borrow_mut();
            let same = cur
                .as_ref()
                .is_some_and(|l| l.settings.to_policy() == settings.to_policy());
            if !same {
                if !cur.is_none() || !settings.zones.is_empty() {
                    info!(
                        core = self.id,
                        zones = settings.zones.len(),
                        threshold = settings.threshold,
                        "DNS lists in force"
                    );
                }
                *cur = (!settings.zones.is_empty()).then(|| {
                    crate::reputation::dnsbl::Lists::new(
                        settings,
                        self.dns.clone(),
                        self.metrics.clone(),
                        self.id,
                    )
                });
            }
        }
        self.dnsbl.borrow().clone()
    }

    /// The inspector of this transaction (cheap: one reference count).
    pub fn inspector(&self) -> Option<Rc<CoreInspect>> {
        self.inspect.borrow().clone()
    }

    /// Moves to the inspection rules the policy in force names, once they are loaded
    /// (the load runs on another thread; until then the rules in force stay). True when
    /// the rules in force are the ones named (or inspection is off).
    pub fn sync_inspection(&self) -> bool {
        let snap = self.policy.current();
        let refs = &snap.policy().inspection;
        let (rules, model, urls, av) = (
            refs.rules.as_str(),
            refs.model.as_str(),
            refs.url_blocklist.as_str(),
            refs.antivirus.as_str(),
        );
        {
            let cur = self.inspect.borrow();
            match cur.as_ref() {
                Some(c)
                    if c.key.0 == rules && c.key.1 == model && c.key.2 == urls && c.key.3 == av =>
                {
                    return true;
                }
                None if self.inspect_loader.local().is_none() => return true,
                _ => {}
            }
        }
        let key = (
            rules.to_string(),
            model.to_string(),
            urls.to_string(),
            av.to_string(),
        );
        let Some(ins) = self.inspect_loader.get(&key) else {
            return self.inspect_loader.failed(&key);
        };
        match CoreInspect::new(ins, key, &self.metrics) {
            Ok(ci) => {
                info!(
                    core = self.id,
                    rules = %if rules.is_empty() { "configured" } else { rules },
                    model = %if model.is_empty() { "configured" } else { model },
                    url_blocklist = %if urls.is_empty() { "configured" } else { urls },
                    "inspection rules in force"
                );
                *self.inspect.borrow_mut() = Some(Rc::new(ci));
                true
            }
            Err(e) => {
                tracing::error!(core = self.id, "cannot use the new rules: {e:#}");
                false
            }
        }
    }
}

/// What every core starts from; shared read-only.
struct Shared {
    config: Config,
    cores: usize,
    snapshot_image: Vec<u8>,
    metrics: Arc<Metrics>,
    dns: Dns,
    server_tls: Option<Arc<rustls::ServerConfig>>,
    client_tls: Arc<rustls::ClientConfig>,
    inspect_loader: Arc<crate::inspection::Loader>,
    auth: Option<crate::auth::Auth>,
    clamd: Option<crate::antivirus::Endpoint>,
}

/// The built-in antivirus engine: EICAR and the configured signature files (a file
/// with a malformed line stops the engine, naming it).
fn load_antivirus(
    c: &crate::config::AntivirusConfig,
) -> anyhow::Result<Option<Arc<bulwark_inspect::av::Antivirus>>> {
    if !c.enabled {
        info!("built-in antivirus is off ([antivirus] enabled = false)");
        return Ok(None);
    }
    let av = bulwark_inspect::av::Antivirus::load(&c.signatures)
        .map_err(|e| anyhow::anyhow!("antivirus.signatures: {e}"))?;
    let n = av.counts();
    for s in av.skipped().iter().take(20) {
        tracing::warn!("antivirus signature skipped: {s}");
    }
    info!(
        hashes = n.hashes,
        bodies = n.bodies,
        skipped = n.skipped,
        "built-in antivirus signatures loaded"
    );
    Ok(Some(Arc::new(av)))
}

/// The URL blocklist files, compiled to hashes; a bad line names its file and line.
fn load_blocklist(
    paths: &[std::path::PathBuf],
) -> anyhow::Result<bulwark_inspect::phishing::Blocklist> {
    use bulwark_inspect::phishing::Blocklist;
    let mut hashes = Vec::new();
    for p in paths {
        let t = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("inspection.url_blocklist: {}: {e}", p.display()))?;
        let one = Blocklist::parse(&t)
            .map_err(|e| anyhow::anyhow!("inspection.url_blocklist: {}: {e}", p.display()))?;
        hashes.extend(one.to_bytes());
    }
    let list = Blocklist::from_bytes(&hashes).unwrap_or_default();
    if !paths.is_empty() {
        info!(entries = list.len(), "URL blocklist loaded");
    }
    Ok(list)
}

/// The inspector a configuration gives (`[inspection]` rules compiled, or loaded from the
/// cache when they are unchanged; the model; the settings), as the engine uses it; `None`
/// when inspection is off.
pub fn load_inspector(
    config: &Config,
) -> anyhow::Result<Option<Arc<bulwark_inspect::inspector::Inspector>>> {
    use anyhow::Context as _;
    let c = &config.inspection;
    if !c.enabled {
        info!("content inspection is off ([inspection] enabled = false)");
        return Ok(None);
    }
    let settings = bulwark_inspect::inspector::Settings {
        limits: c.limits,
        verdicts: c.verdicts.clone(),
        managed_domains: config.domains.iter().map(|d| d.name.clone()).collect(),
        brands: c.brands.clone(),
        shorteners: c.shorteners.clone(),
        url_blocklist: load_blocklist(&c.url_blocklist)?,
        network_tests: config.authentication.enabled,
        antivirus: load_antivirus(&config.antivirus)?,
        attachment_limits: config.antivirus.limits.clone(),
        ..Default::default()
    };
    let cache = c
        .cache_dir
        .clone()
        .unwrap_or_else(|| config.spool.dir.join("rules-cache"));
    let t0 = std::time::Instant::now();
    let inspector = bulwark_inspect::inspector::Inspector::load(
        &c.rules,
        c.model.as_deref(),
        Some(&cache),
        settings,
    )
    .context("[inspection]")?;
    let modes = inspector.compiled.modes();
    info!(
        rules = inspector.compiled.rules.len(),
        hyperscan = modes.hyperscan,
        prefilter = modes.prefilter,
        pcre2 = modes.pcre,
        skipped = inspector.compiled.skipped.len(),
        model = inspector.model.is_some(),
        from = ?inspector.origin,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "inspection rules loaded"
    );
    Ok(Some(Arc::new(inspector)))
}

/// The core named by `BULWARK_FAULT=panic-core-N`, a testing aid.
fn fault_panic_core() -> Option<usize> {
    std::env::var("BULWARK_FAULT")
        .ok()?
        .strip_prefix("panic-core-")?
        .parse()
        .ok()
}

/// Ends the process at the first panic, wherever it happens. An executor whose task
/// panicked would otherwise unwind alone while the other cores went on, leaving its
/// sessions and queue stranded behind a healthy-looking process; ending it lets the
/// supervisor (systemd `Restart=always`) start it again and the spool recovery take over.
pub fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("bulwark: a panic ends the process so that it can be restarted cleanly");
        std::process::abort();
    }));
}

/// Number of executors for a configuration.
pub fn core_count(config: &Config) -> usize {
    config.server.cores.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Says whether the XDP program is attached, at start and when that changes (a thread of
/// its own reads the loader's status file every few seconds, off the cores): without it,
/// `[ip] drop` is refused at accept instead of dropped.
fn watch_xdp(config: &Config, metrics: Arc<Metrics>) {
    let wanted = config.xdp.interface.clone();
    let drops = config.ip.drop.len();
    let spawned = std::thread::Builder::new()
        .name("xdp-watch".into())
        .spawn(move || {
            let mut last: Option<Option<String>> = None;
            loop {
                let mode = metrics.xdp_report().and_then(|r| {
                    r.into_iter()
                        .find(|(k, _)| k == "mode")
                        .map(|(_, v)| v)
                });
                if last.as_ref() != Some(&mode) {
                    match &mode {
                        Some(m) => info!(mode = %m, "XDP program attached: [ip] drop and dynamic blocks are dropped before TCP"),
                        None if wanted.is_some() || drops > 0 => warn!(
                            interface = ?wanted,
                            drop_entries = drops,
                            "XDP program not attached (bulwark-xdp is not running or could not load it): [ip] drop and dynamic blocks are refused at accept instead"
                        ),
                        None => {}
                    }
                    last = Some(mode);
                }
                std::thread::sleep(std::time::Duration::from_secs(3));
            }
        });
    if let Err(e) = spawned {
        warn!("cannot watch the XDP loader's status: {e}");
    }
}

/// Runs the engine until the process is stopped.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let open_files = crate::util::raise_nofile();
    let cores = core_count(&config);
    let metrics = Metrics::new(cores);
    metrics.set_xdp_status(config.xdp_status_path());
    watch_xdp(&config, metrics.clone());
    let policy = config.policy();
    let snapshot_image = bulwark_policy::encode(&policy).context("building the policy snapshot")?;
    let generation = Snapshot::from_bytes(&snapshot_image)
        .context("checking the policy snapshot")?
        .generation();
    if let Some(path) = &config.policy.snapshot {
        // The header must exist for the cores to follow it; creating it publishes nothing.
        bulwark_policy::shm::Publisher::open(path, std::time::Duration::from_secs(60))
            .with_context(|| format!("policy.snapshot: cannot open {}", path.display()))?;
    }
    let server_tls = match &config.tls {
        Some(t) => Some(tls::server_config(&t.cert, &t.key)?),
        None => None,
    };
    std::fs::create_dir_all(&config.spool.dir)
        .with_context(|| format!("spool.dir: cannot create {}", config.spool.dir.display()))?;
    // Rules, model and blocklists first: a file that does not load stops the engine
    // before it opens any port.
    let inspector = load_inspector(&config)?;
    let dns = Dns::start(&config.dns.nameservers).context("starting the DNS resolver")?;
    if let Some(addr) = config.server.metrics {
        crate::metrics::serve(addr, metrics.clone())
            .with_context(|| format!("server.metrics: cannot listen on {addr}"))?;
    }
    let inspect_loader = crate::inspection::Loader::new(inspector, config.policy.snapshot.clone());
    let auth = if config.authentication.enabled {
        Some(
            crate::auth::Auth::start(
                &config.dns.nameservers,
                crate::auth::Settings {
                    timeout: config.authentication.timeout,
                    authserv_id: config.server.hostname.clone(),
                },
            )
            .context("starting sender authentication")?,
        )
    } else {
        info!("sender authentication is off ([authentication] enabled = false)");
        None
    };
    let clamd = match &config.antivirus.clamd {
        Some(a) => {
            let e = crate::antivirus::Endpoint::resolve(a)?;
            info!(clamd = %e, "clamd scans every message");
            Some(e)
        }
        None => None,
    };
    let shared = Arc::new(Shared {
        clamd,
        config,
        cores,
        snapshot_image,
        metrics,
        dns,
        server_tls,
        client_tls: tls::opportunistic_client_config(),
        inspect_loader,
        auth,
    });
    // Cores talk to each other through these links (harvest protection).
    let mut links = guard::Links::new(cores).into_iter();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    info!(
        cores,
        domains = policy.domains.len(),
        generation,
        open_files,
        "starting Bulwark"
    );
    let mut handles = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, String>>();
    for id in 0..cores {
        let shared = shared.clone();
        let link = links
            .next()
            .ok_or_else(|| anyhow::anyhow!("no core link for core {id}"))?;
        let ready = ready_tx.clone();
        let placement = if cores <= cpus {
            Placement::Fixed(id)
        } else {
            Placement::Unbound
        };
        let h = LocalExecutorBuilder::new(placement)
            .name(&format!("core-{id}"))
            .io_memory(1 << 20)
            // Long work (spool recovery, big retry batches) yields at least this often,
            // so sessions and I/O completions wait at most this long.
            .preempt_timer(std::time::Duration::from_millis(2))
            .spawn(move || async move {
                tracing::debug!(core = id, "executor started");
                if let Err(e) = run_core(id, shared, link, ready.clone()).await {
                    let _ = ready.send(Err(format!("core {id}: {e:#}")));
                }
            })
            .map_err(|e| anyhow::anyhow!("starting executor for core {id}: {e}"))?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("{e}"),
            Err(_) => anyhow::bail!("an executor stopped during start-up"),
        }
    }
    let addrs: Vec<String> = shared
        .config
        .server
        .listen
        .iter()
        .map(|a| a.to_string())
        .collect();
    info!(listen = %addrs.join(","), "accepting mail");
    for h in handles {
        if let Err(e) = h.join() {
            error!("executor ended: {e}");
        }
    }
    Ok(())
}

/// This core's delivery settings: engine-wide destination limits are split over the
/// cores (connections rounded up, so every core can deliver).
fn delivery_settings(cfg: &Config, cores: usize) -> deliver::Settings {
    let d = &cfg.delivery;
    let per_core = |connections: usize, rate: Option<f64>| deliver::dest::Limits {
        connections: connections.div_ceil(cores).max(1),
        interval: rate.map(|r| std::time::Duration::from_secs_f64(cores as f64 / r)),
    };
    let limits = per_core(d.connections_per_destination, d.rate_per_destination);
    let destination_limits = d
        .destinations
        .iter()
        .map(|l| {
            (
                l.name.clone(),
                per_core(
                    l.connections.unwrap_or(d.connections_per_destination),
                    l.rate.unwrap_or(d.rate_per_destination),
                ),
            )
        })
        .collect();
    deliver::Settings {
        hostname: cfg.server.hostname.clone(),
        lifetime: cfg.queue.lifetime,
        retry: cfg.queue.retry.clone(),
        delay_warning: cfg.queue.delay_warning,
        timeouts: Timeouts {
            connect: d.connect_timeout,
            command: d.command_timeout,
            data: d.data_timeout,
        },
        limits,
        destination_limits,
        idle_time: d.idle_time,
        backoff_min: d.backoff_min,
        backoff_max: d.backoff_max,
        line_length_limit: d.line_length_limit,
    }
}

async fn run_core(
    id: usize,
    shared: Arc<Shared>,
    link: guard::Links,
    ready: std::sync::mpsc::Sender<Result<usize, String>>,
) -> anyhow::Result<()> {
    let cfg = &shared.config;
    let snapshot = Snapshot::from_bytes(&shared.snapshot_image)?;
    let limits = (
        snapshot.policy().limits.message_size.to_native(),
        snapshot.policy().limits.recipients.to_native(),
    );
    let follower = match &cfg.policy.snapshot {
        Some(path) => Some(
            bulwark_policy::shm::Follower::open(path)
                .with_context(|| format!("policy.snapshot: cannot follow {}", path.display()))?,
        ),
        None => None,
    };
    let policy = Rc::new(CorePolicy::new(
        snapshot,
        follower,
        id,
        shared.metrics.clone(),
    ));
    if cfg.policy.snapshot.is_some() {
        // Idle cores converge too: a core with traffic checks at every transaction.
        let p = policy.clone();
        glommio::spawn_local(async move {
            let mut ticks = 0u32;
            loop {
                glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                p.refresh();
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(200) {
                    // About once a second: a header someone truncated or replaced.
                    p.check_header();
                }
            }
        })
        .detach();
    }
    let (spool, recovery) = Spool::open(&cfg.spool.dir, id, shared.cores, cfg.spool.segment_size)
        .await
        .with_context(|| format!("spool.dir: cannot open {}", cfg.spool.dir.display()))?;
    tracing::debug!(core = id, "spool open");
    shared
        .metrics
        .shard(id)
        .spool_damaged
        .add(spool.damaged_records());
    let metrics = shared.metrics.clone();
    spool.on_commit(move |messages, took, streamed| {
        let shard = metrics.shard(id);
        shard.spool_commits.inc();
        shard.commit_batch.observe(messages as f64);
        if !streamed {
            shard.commit_seconds.observe_duration(took);
        }
    });
    let ids = Rc::new(QueueIds::new(id));
    let settings = delivery_settings(cfg, shared.cores);
    let memory = Budget::new(
        usize::try_from(cfg.server.memory_per_core).unwrap_or(usize::MAX),
        id,
        shared.metrics.clone(),
    );
    let tracking = cfg.tracking();
    let tracker = crate::tracking::Tracker::start(id, &tracking, shared.metrics.clone())
        .await
        .with_context(|| format!("tracking.dir: cannot write in {}", tracking.dir.display()))?;
    let deliverer = Deliverer::new(
        id,
        settings,
        spool.clone(),
        ids.clone(),
        shared.metrics.clone(),
        policy.clone(),
        shared.dns.clone(),
        shared.client_tls.clone(),
        memory.clone(),
        Rc::new(deliver::clock::SystemClock),
        tracker,
    );
    let quarantine =
        crate::quarantine::Quarantine::new(cfg.quarantine_dir(), cfg.quarantine.retention);
    quarantine.prepare().with_context(|| {
        format!(
            "quarantine.dir: cannot create {}",
            quarantine.dir().display()
        )
    })?;
    let desk = (id == 0).then(|| {
        crate::quarantine::Desk::start(
            quarantine.clone(),
            spool.clone(),
            ids.clone(),
            deliverer.clone(),
            shared.metrics.clone(),
            id,
        )
    });
    let core = Rc::new(Core {
        id,
        session_cfg: SessionConfig {
            hostname: cfg.server.hostname.clone(),
            max_message_size: limits.0,
            max_recipients: limits.1 as usize,
            max_errors: cfg.smtp.max_errors,
            starttls: shared.server_tls.is_some(),
            max_line_length: cfg.smtp.max_line_length,
        },
        smtp: cfg.smtp.clone(),
        policy: policy.clone(),
        spool,
        ids,
        metrics: shared.metrics.clone(),
        tls: shared
            .server_tls
            .clone()
            .map(futures_rustls::TlsAcceptor::from),
        deliverer: deliverer.clone(),
        sessions: Cell::new(0),
        max_sessions: cfg.smtp.max_connections.div_ceil(shared.cores).max(1),
        guard: Guard::start(link, policy.clone(), shared.metrics.clone()),
        memory,
        inspect: std::cell::RefCell::new(match shared.inspect_loader.local() {
            Some(i) => Some(Rc::new(CoreInspect::new(
                i.clone(),
                Default::default(),
                &shared.metrics,
            )?)),
            None => None,
        }),
        inspect_loader: shared.inspect_loader.clone(),
        policy_rule_hits: Default::default(),
        pregreet: crate::reputation::pregreet::Pregreet::new(cfg.pregreet.clone()),
        dnsbl: Default::default(),
        dnsbl_generation: Cell::new(0),
        dnsbl_base: cfg.reputation.clone(),
        dns: shared.dns.clone(),
        inspect_timeout: cfg.inspection.timeout,
        inspect_timeout_tempfail: cfg.inspection.timeout_tempfail,
        full_scans: glommio::sync::Semaphore::new(1),
        clamd: shared.clamd.as_ref().map(|e| {
            crate::antivirus::Clamd::new(
                e.clone(),
                cfg.antivirus.clamd_timeout,
                cfg.antivirus.clamd_max_size,
            )
        }),
        antivirus: crate::antivirus::Settings {
            timeout: cfg.antivirus.timeout,
            queue_timeout: cfg.antivirus.queue_timeout,
            tempfail: cfg.antivirus.on_failure_tempfail,
            max_scan: cfg.limits.message_size,
        },
        quarantine,
        auth: shared.auth.clone(),
    });
    // Rules published with the snapshot in force are loaded before this core takes
    // mail (bounded: a load that fails leaves the configured rules in force).
    for _ in 0..3000 {
        if core.sync_inspection() {
            break;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
    }
    {
        let core = core.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
                core.sync_inspection();
            }
        })
        .detach();
    }
    let mut listeners = Vec::new();
    for addr in &cfg.server.listen {
        let l = listen(*addr)
            .map_err(|e| anyhow::anyhow!("server.listen: cannot listen on {addr}: {e}"))?;
        listeners.push(l);
    }
    let admin_dir = cfg.admin_dir();
    crate::admin::serve(id, &admin_dir, deliverer.clone(), desk, core.clone()).with_context(
        || {
            format!(
                "server.admin_dir: cannot open the admin socket in {}",
                admin_dir.display()
            )
        },
    )?;
    // Read back what was on disk while the listeners take new mail.
    if recovery.segments() > 0 {
        let d = deliverer.clone();
        let segments = recovery.segments();
        // Its own task queue with a small share: while sessions have work, they go first.
        // Delivery workers it starts run in that queue too.
        let background = glommio::executor().create_task_queue(
            glommio::Shares::Static(50),
            glommio::Latency::NotImportant,
            "recovery",
        );
        glommio::spawn_local_into(
            async move {
                let started = std::time::Instant::now();
                info!(core = id, segments, "recovering the spool");
                let mut recovery = recovery;
                let mut messages = 0u64;
                while let Some(batch) = recovery.next_segment().await {
                    for r in batch {
                        d.requeue(Message::recovered(r));
                        messages += 1;
                        if messages.is_multiple_of(64) {
                            // Sessions of this core go first.
                            glommio::yield_if_needed().await;
                        }
                    }
                }
                info!(
                    core = id,
                    messages,
                    ms = started.elapsed().as_millis() as u64,
                    "spool recovered"
                );
            },
            background,
        )
        .map_err(|e| anyhow::anyhow!("core {id}: cannot start the spool recovery: {e}"))?
        .detach();
    }
    for l in listeners {
        let core = core.clone();
        glommio::spawn_local(async move {
            loop {
                match l.accept().await {
                    Ok(stream) => {
                        let core = core.clone();
                        glommio::spawn_local(async move { session::run(core, stream).await })
                            .detach();
                    }
                    Err(e) => {
                        warn!(core = core.id, "accept failed: {e}");
                        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        })
        .detach();
    }
    shared.metrics.core_ready();
    tracing::debug!(core = id, "ready");
    let _ = ready.send(Ok(id));
    if fault_panic_core() == Some(id) {
        // Testing aid (BULWARK_FAULT=panic-core-N): a task of this core panics once the
        // engine runs, to prove that a panic ends the whole process.
        glommio::spawn_local(async move {
            glommio::timer::sleep(std::time::Duration::from_millis(300)).await;
            panic!("BULWARK_FAULT: core {id} panics on purpose");
        })
        .detach();
    }
    // The core lives as long as the process; its tasks do the work.
    std::future::pending::<()>().await;
    Ok(())
}

/// A listening socket shared by every core (`SO_REUSEPORT`) that can be opened while
/// connections of an earlier listener on the port are in TIME_WAIT (`SO_REUSEADDR`, as
/// every SMTP server sets it; glommio's own `bind` sets only the first).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    // SAFETY: the descriptor is a listening TCP socket this function owns and hands over.
    Ok(unsafe { TcpListener::from_raw_fd(s.into_raw_fd()) })
}
