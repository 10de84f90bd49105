//! Delivery: per-destination queues, the SMTP client, retries, backoff and bounces.
//!
//! Each core delivers what it spooled. A message's pending recipients are grouped by
//! destination (a managed domain's route, or MX hosts for anything else); each group is
//! a job on that destination's queue ([`dest`]). A destination has up to its connection
//! limit of workers, each holding one connection and running job after job on it,
//! paced by the destination's rate limit, until the queue has been empty for
//! `idle_time`. A connection-level failure puts the destination into backoff, so mail
//! for a dead server costs no connection attempts until a probe finds it up again.
//! When every job of a message has reported, the message is finished (delivered, or
//! bounced with a DSN) or waits for its next attempt on the `[queue] retry` schedule,
//! until its lifetime runs out; a "delivery delayed" notice goes out once after
//! `[queue] delay_warning`. Operators act on the queue through [`ops`].

pub mod client;
pub mod clock;
pub mod content;
pub mod dest;
pub mod dns;
pub mod dsn;
pub mod ops;

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tracing::{info, warn};

use crate::memory::Budget;
use crate::metrics::{Delivery, Metrics};
use crate::policy::{CorePolicy, Destination, destination};
use crate::queue::record::{STATE_HELD, STATE_WARNED, StateRecord};
use crate::queue::{Location, QueueIds, Recovered, Spool};
use bulwark_policy::TlsPolicy;
use client::{ConnError, Connection, Reply, Timeouts};
use clock::Clock;
use content::{Cached, Content};
use dest::{Admit, DestQueue, Limits};
use dns::{Dns, MxAnswer};

/// Fixed settings of delivery (per core: engine-wide limits are already divided).
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    pub lifetime: Duration,
    pub retry: Vec<Duration>,
    /// Send a "delivery delayed" notice once a message has waited this long.
    pub delay_warning: Option<Duration>,
    pub timeouts: Timeouts,
    /// Limits of a destination without its own entry.
    pub limits: Limits,
    /// Limits by destination name (route host or recipient domain).
    pub destination_limits: HashMap<String, Limits>,
    pub idle_time: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Content lines longer than this are wrapped on the way out; `None`: never.
    pub line_length_limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Delivered,
    Failed,
    /// Removed from the queue by an operator: no delivery, no bounce.
    Removed,
}

struct Rcpt {
    addr: String,
    status: Status,
    /// The last reply about this recipient and who gave it.
    last: Option<(Reply, Option<String>)>,
}

/// Where a message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Jobs queued or running.
    Active,
    /// Waiting for its next attempt; the key of its retry entry.
    Waiting(u64),
    /// On hold: no attempt until released.
    Held,
    /// Being finished (bounce being spooled).
    Finishing,
    /// Finished or deleted.
    Gone,
}

struct State {
    rcpts: Vec<Rcpt>,
    attempts: u32,
    /// Jobs of the current attempt that have not reported.
    outstanding: usize,
    /// Content of a small message kept in memory between spooling and the first
    /// attempt, and during an attempt; dropped while the message waits for a retry.
    /// Large messages are read from the spool in pieces as they are sent.
    content: Option<Rc<Cached>>,
    phase: Phase,
    held: bool,
    /// The "delivery delayed" notice went out.
    warned: bool,
    /// Unix seconds of the next attempt while waiting.
    next_attempt: u64,
    /// The last temporary error, for the queue listing.
    last_error: String,
}

/// A message in the queue.
pub struct Message {
    pub id: String,
    pub arrival: u64,
    pub flags: u8,
    pub sender: String,
    pub location: Location,
    state: RefCell<State>,
}

impl Message {
    /// A message just spooled.
    pub fn new(
        id: String,
        arrival: u64,
        flags: u8,
        sender: String,
        rcpts: Vec<String>,
        location: Location,
        content: Option<Rc<Cached>>,
    ) -> Rc<Message> {
        let rcpts = rcpts
            .into_iter()
            .map(|addr| Rcpt {
                addr,
                status: Status::Pending,
                last: None,
            })
            .collect();
        Rc::new(Message {
            id,
            arrival,
            flags,
            sender,
            location,
            state: RefCell::new(State {
                rcpts,
                attempts: 0,
                outstanding: 0,
                content,
                phase: Phase::Active,
                held: false,
                warned: false,
                next_attempt: 0,
                last_error: String::new(),
            }),
        })
    }

    /// A message read back from the spool at start.
    pub fn recovered(r: Recovered) -> Rc<Message> {
        let m = Message::new(
            r.id, r.arrival, r.flags, r.sender, r.rcpts, r.location, None,
        );
        {
            let mut st = m.state.borrow_mut();
            for (rc, done) in st.rcpts.iter_mut().zip(r.finished) {
                if done {
                    rc.status = Status::Delivered;
                }
            }
            st.attempts = r.attempts;
            st.held = r.state_flags & STATE_HELD != 0;
            st.warned = r.state_flags & STATE_WARNED != 0;
            st.next_attempt = r.next_attempt;
            st.last_error = r.last_error;
        }
        m
    }

    fn phase(&self) -> Phase {
        self.state.borrow().phase
    }
}

/// One destination's share of a message.
struct Job {
    msg: Rc<Message>,
    rcpts: Vec<usize>,
    /// This job tests a destination in backoff.
    probe: bool,
}

/// Outcome for one recipient of a job.
enum Outcome {
    Delivered,
    Deferred(Reply),
    Failed(Reply),
}

type Outcomes = Vec<(usize, Outcome, Option<String>)>;

/// The largest content kept in memory for delivery; larger messages are sent from the
/// spool piece by piece.
const CACHE_LIMIT: usize = crate::memory::IN_MEMORY_CONTENT;

pub struct Deliverer {
    /// The core's memory budget, charged for cached content.
    memory: Rc<Budget>,
    /// What "now" is for schedules, lifetimes and backoff.
    clock: Rc<dyn Clock>,
    core: usize,
    settings: Settings,
    spool: Spool,
    ids: Rc<QueueIds>,
    metrics: Arc<Metrics>,
    policy: Rc<CorePolicy>,
    dns: Dns,
    tls: Arc<ClientConfig>,
    dests: RefCell<HashMap<Destination, Rc<DestQueue>>>,
    retries: RefCell<BinaryHeap<Reverse<(Instant, u64)>>>,
    waiting: RefCell<HashMap<u64, Rc<Message>>>,
    next_retry_key: Cell<u64>,
    /// Every message of this core's queue, by id.
    messages: RefCell<HashMap<String, Rc<Message>>>,
    /// Verifying TLS client configurations, by CA file ("" is the web PKI).
    verifying: RefCell<HashMap<String, Arc<ClientConfig>>>,
    /// This core's tracking events (shared with its sessions and quarantine desk).
    tracker: Rc<crate::tracking::Tracker>,
}

impl Deliverer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: usize,
        settings: Settings,
        spool: Spool,
        ids: Rc<QueueIds>,
        metrics: Arc<Metrics>,
        policy: Rc<CorePolicy>,
        dns: Dns,
        tls: Arc<ClientConfig>,
        memory: Rc<Budget>,
        clock: Rc<dyn Clock>,
        tracker: Rc<crate::tracking::Tracker>,
    ) -> Rc<Deliverer> {
        let d = Rc::new(Deliverer {
            core,
            memory,
            clock,
            settings,
            spool,
            ids,
            metrics,
            policy,
            dns,
            tls,
            dests: RefCell::new(HashMap::new()),
            retries: RefCell::new(BinaryHeap::new()),
            waiting: RefCell::new(HashMap::new()),
            next_retry_key: Cell::new(0),
            messages: RefCell::new(HashMap::new()),
            verifying: RefCell::new(HashMap::new()),
            tracker,
        });
        let ticker = d.clone();
        glommio::spawn_local(async move { ticker.retry_loop().await }).detach();
        d
    }

    /// This core's tracking events.
    pub fn tracker(&self) -> &crate::tracking::Tracker {
        &self.tracker
    }

    fn shard(&self) -> &crate::metrics::Shard {
        self.metrics.shard(self.core)
    }

    /// Takes a newly spooled message into the queue.
    pub fn enqueue(self: &Rc<Self>, msg: Rc<Message>) {
        self.shard().queue_messages.add(1);
        self.messages
            .borrow_mut()
            .insert(msg.id.clone(), msg.clone());
        self.attempt(msg);
    }

    /// Takes a message recovered from the spool into the queue: held ones stay held,
    /// deferred ones wait for the attempt they were due for.
    pub fn requeue(self: &Rc<Self>, msg: Rc<Message>) {
        let shard = self.shard();
        shard.queue_messages.add(1);
        shard.recovered.inc();
        self.messages
            .borrow_mut()
            .insert(msg.id.clone(), msg.clone());
        let (held, due) = {
            let st = msg.state.borrow();
            (st.held, st.next_attempt)
        };
        let now = self.clock.unix();
        if held {
            msg.state.borrow_mut().phase = Phase::Held;
            shard.queue_held.add(1);
        } else if due > now {
            self.schedule(msg, Duration::from_secs(due - now));
        } else {
            self.attempt(msg);
        }
    }

    /// Starts one delivery attempt: a job per destination of the pending recipients.
    fn attempt(self: &Rc<Self>, msg: Rc<Message>) {
        let snap = self.policy.current();
        let mut groups: Vec<(Destination, Vec<usize>)> = Vec::new();
        {
            let st = msg.state.borrow();
            for (i, r) in st.rcpts.iter().enumerate() {
                if r.status != Status::Pending {
                    continue;
                }
                let d = destination(&snap, &r.addr);
                match groups.iter_mut().find(|(g, _)| *g == d) {
                    Some((_, v)) => v.push(i),
                    None => groups.push((d, vec![i])),
                }
            }
        }
        if groups.is_empty() {
            let me = self.clone();
            glommio::spawn_local(async move { me.finish(msg).await }).detach();
            return;
        }
        {
            let mut st = msg.state.borrow_mut();
            st.phase = Phase::Active;
            st.attempts += 1;
            st.outstanding = groups.len();
            st.next_attempt = 0;
        }
        let now = self.clock.now();
        for (dest, rcpts) in groups {
            let q = self.dest_queue(&dest);
            let admit = q.health.borrow_mut().admit(now);
            let job = Job {
                msg: msg.clone(),
                rcpts,
                probe: admit == Admit::Probe,
            };
            match admit {
                Admit::Go | Admit::Probe => {
                    q.push(job);
                    self.ensure_worker(&q);
                }
                Admit::Suspended(why) => {
                    let reply = Reply::local(451, &format!("4.4.1 {why}"));
                    self.shard().suspended.add(job.rcpts.len() as u64);
                    q.parked.borrow_mut().insert(msg.id.clone(), msg.clone());
                    let outcomes = all(&job, &|| Outcome::Deferred(reply.clone()), None);
                    self.report(job, outcomes);
                }
            }
        }
    }

    fn dest_queue(&self, dest: &Destination) -> Rc<DestQueue> {
        if let Some(q) = self.dests.borrow().get(dest) {
            return q.clone();
        }
        let limits = self
            .settings
            .destination_limits
            .get(dest.name())
            .copied()
            .unwrap_or(self.settings.limits);
        let q = Rc::new(DestQueue::new(dest.clone(), limits));
        self.dests.borrow_mut().insert(dest.clone(), q.clone());
        q
    }

    fn ensure_worker(self: &Rc<Self>, q: &Rc<DestQueue>) {
        if q.wants_worker() {
            q.workers.set(q.workers.get() + 1);
            let me = self.clone();
            let q = q.clone();
            glommio::spawn_local(async move { me.worker(q).await }).detach();
        }
    }

    /// One connection's worth of work for a destination.
    async fn worker(self: Rc<Self>, q: Rc<DestQueue>) {
        let mut conn: Option<Connection> = None;
        while let Some(job) = q.next_job(self.settings.idle_time).await {
            if job.msg.phase() != Phase::Active || job.msg.state.borrow().held {
                // Held or deleted while queued.
                if job.probe {
                    self.abandon_probe(&q);
                }
                self.drop_job(job);
                continue;
            }
            let started = Instant::now();
            let content = match self.content(&job.msg).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(id = %job.msg.id, "cannot read spooled content: {e}");
                    if job.probe {
                        self.abandon_probe(&q);
                    }
                    let r = Reply::local(451, &format!("4.3.0 spool read failed: {e}"));
                    let outcomes = all(&job, &|| Outcome::Deferred(r.clone()), None);
                    self.report(job, outcomes);
                    continue;
                }
            };
            if conn.is_none() {
                match self.connect(&q.dest).await {
                    Ok(mut c) => {
                        c.set_line_limit(self.settings.line_length_limit);
                        conn = Some(c);
                        self.dest_up(&q);
                    }
                    Err(Failure::Temporary(r)) => {
                        q.parked
                            .borrow_mut()
                            .insert(job.msg.id.clone(), job.msg.clone());
                        let outcomes = all(&job, &|| Outcome::Deferred(r.clone()), None);
                        self.report(job, outcomes);
                        self.dest_failed(&q, &r);
                        break;
                    }
                    Err(Failure::Permanent(r)) => {
                        // A definite answer (no such domain, null MX) is not an outage.
                        self.dest_up(&q);
                        let outcomes = all(&job, &|| Outcome::Failed(r.clone()), None);
                        self.report(job, outcomes);
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { break };
            q.pace().await;
            let (outcomes, usable) = transact(c, &job, &content).await;
            if !usable {
                conn = None;
            }
            self.shard()
                .delivery_latency
                .observe_duration(started.elapsed());
            self.report(job, outcomes);
            if !q.health.borrow().is_up() {
                break;
            }
        }
        q.workers.set(q.workers.get() - 1);
        if let Some(c) = conn {
            c.quit().await;
        }
        if q.is_unused() {
            let mut dests = self.dests.borrow_mut();
            if dests.get(&q.dest).is_some_and(|d| Rc::ptr_eq(d, &q)) {
                dests.remove(&q.dest);
            }
        } else if q.health.borrow().is_up() {
            // Jobs queued while this worker was leaving.
            self.ensure_worker(&q);
        }
    }

    /// A connection to the destination failed: back off, and park what is queued.
    fn dest_failed(self: &Rc<Self>, q: &Rc<DestQueue>, reply: &Reply) {
        let now = self.clock.now();
        let (until, was_up) = q.health.borrow_mut().failed(
            now,
            &reply.text,
            self.settings.backoff_min,
            self.settings.backoff_max,
        );
        q.epoch.set(q.epoch.get() + 1);
        let shard = self.shard();
        shard.destination_failures.inc();
        if was_up && let Ok(mut set) = shard.backing_off.lock() {
            set.insert(q.dest.to_string());
        }
        warn!(destination = %q.dest, error = %reply.text, backoff_secs = until.duration_since(now).as_secs(), "destination backing off");
        let why = Reply::local(
            451,
            &format!(
                "4.4.1 delivery suspended for {}s after: {}",
                until.duration_since(now).as_secs().max(1),
                reply.text
            ),
        );
        for job in q.drain() {
            shard.suspended.add(job.rcpts.len() as u64);
            q.parked
                .borrow_mut()
                .insert(job.msg.id.clone(), job.msg.clone());
            let outcomes = all(&job, &|| Outcome::Deferred(why.clone()), None);
            self.report(job, outcomes);
        }
        self.arm_probe(q, until);
    }

    /// When the backoff is over, one parked message probes the destination (unless the
    /// destination changed state meanwhile, or a message due anyway probes first).
    fn arm_probe(self: &Rc<Self>, q: &Rc<DestQueue>, until: Instant) {
        let me = self.clone();
        let q = q.clone();
        let epoch = q.epoch.get();
        glommio::spawn_local(async move {
            // On the delivery clock: checked every 200 ms, as the retry loop does.
            loop {
                let left = until.saturating_duration_since(me.clock.now());
                if left.is_zero() {
                    break;
                }
                glommio::timer::sleep(left.min(Duration::from_millis(200))).await;
            }
            if q.epoch.get() != epoch {
                return;
            }
            let probe = q
                .parked
                .borrow()
                .values()
                .find(|m| matches!(m.phase(), Phase::Waiting(_)))
                .cloned();
            if let Some(m) = probe {
                me.retry_now(m);
            }
        })
        .detach();
    }

    /// The probe job went away before it connected: another parked message probes.
    fn abandon_probe(self: &Rc<Self>, q: &Rc<DestQueue>) {
        let now = self.clock.now();
        q.health.borrow_mut().probe_abandoned(now);
        q.epoch.set(q.epoch.get() + 1);
        self.arm_probe(q, now);
    }

    /// A connection to the destination worked: if it was backing off, it is up again
    /// and everything parked behind it is tried now.
    fn dest_up(self: &Rc<Self>, q: &Rc<DestQueue>) {
        if !q.health.borrow_mut().up() {
            return;
        }
        q.epoch.set(q.epoch.get() + 1);
        if let Ok(mut set) = self.shard().backing_off.lock() {
            set.remove(&q.dest.to_string());
        }
        let parked: Vec<Rc<Message>> = q.parked.borrow_mut().drain().map(|(_, m)| m).collect();
        info!(destination = %q.dest, parked = parked.len(), "destination is up again");
        for m in parked {
            self.retry_now(m);
        }
    }

    /// Takes a waiting message out of the retry schedule and attempts it now.
    fn retry_now(self: &Rc<Self>, msg: Rc<Message>) -> bool {
        let Phase::Waiting(key) = msg.phase() else {
            return false;
        };
        self.waiting.borrow_mut().remove(&key);
        self.attempt(msg);
        true
    }

    /// A queued job whose message was held or deleted meanwhile.
    fn drop_job(self: &Rc<Self>, job: Job) {
        let settle = {
            let mut st = job.msg.state.borrow_mut();
            st.outstanding = st.outstanding.saturating_sub(1);
            st.outstanding == 0
        };
        if settle {
            self.settle(job.msg);
        }
    }

    /// The content to send: the copy in memory, a small message read back and kept for
    /// the rest of the attempt when the memory budget allows, or else the spool
    /// location, read in pieces as it is sent.
    async fn content(&self, msg: &Message) -> std::io::Result<Content> {
        if let Some(c) = msg.state.borrow().content.clone() {
            return Ok(Content::Memory(c));
        }
        let spooled = Content::Spool {
            spool: self.spool.clone(),
            location: msg.location,
        };
        if msg.location.len > CACHE_LIMIT as u64 {
            return Ok(spooled);
        }
        let Some(charge) = self.memory.try_charge(msg.location.len as usize) else {
            return Ok(spooled);
        };
        let data = self.spool.read_content(msg.location).await?;
        let c = Cached::new(Vec::new(), data, Some(charge));
        msg.state.borrow_mut().content = Some(c.clone());
        Ok(Content::Memory(c))
    }

    /// Keeps a just-spooled message's content for its first attempt, if it is small and
    /// the core's memory budget allows; `None` and delivery reads it from the spool.
    pub fn cache_content(&self, header: Vec<u8>, mut body: Vec<u8>) -> Option<Rc<Cached>> {
        let len = header.len() + body.len();
        if len > CACHE_LIMIT {
            return None;
        }
        // A buffer that grew by doubling holds up to twice its content: keep only the
        // content while it waits for delivery.
        if body.capacity() > body.len() + body.len() / 4 {
            body.shrink_to_fit();
        }
        let charge = self
            .memory
            .try_charge(header.capacity() + body.capacity())?;
        Some(Cached::new(header, body, Some(charge)))
    }

    /// Resolves and connects, trying each address in preference order, with the
    /// route's TLS policy: opportunistic (unauthenticated, plaintext when STARTTLS is
    /// missing or broken), required (a verified certificate or no delivery) or none.
    async fn connect(&self, dest: &Destination) -> Result<Connection, Failure> {
        let targets = self.resolve(dest).await?;
        let (policy, ca) = match dest {
            Destination::Route { tls, tls_ca, .. } => (*tls, tls_ca.as_str()),
            Destination::Mx { .. } => (TlsPolicy::Opportunistic, ""),
        };
        let client = match policy {
            TlsPolicy::None => None,
            TlsPolicy::Opportunistic => Some(self.tls.clone()),
            TlsPolicy::Required => match self.verifying_config(ca) {
                Ok(c) => Some(c),
                Err(e) => {
                    return Err(Failure::Temporary(Reply::local(
                        451,
                        &format!("4.7.5 TLS required but unusable: {e}"),
                    )));
                }
            },
        };
        let mut last = Failure::Temporary(Reply::local(451, "4.4.4 no address to deliver to"));
        for (host, addr) in targets {
            match Connection::open(
                &host,
                addr,
                &self.settings.hostname,
                client.as_ref(),
                self.settings.timeouts,
            )
            .await
            {
                Ok(c) if policy == TlsPolicy::Required && !c.is_tls() => {
                    info!(%host, %addr, "TLS is required but the server did not offer STARTTLS");
                    c.quit().await;
                    last = Failure::Temporary(Reply::local(
                        451,
                        "4.7.4 TLS is required, but was not offered by the host",
                    ));
                }
                Ok(c) => return Ok(c),
                Err(e @ ConnError::Tls(_)) if policy == TlsPolicy::Required => {
                    info!(%host, %addr, "{e}");
                    last = Failure::Temporary(Reply::local(451, &format!("4.7.5 {e}")));
                }
                Err(e @ ConnError::Tls(_)) => {
                    // Opportunistic TLS: a broken handshake falls back to plaintext.
                    warn!(%host, %addr, "{e}; retrying without TLS");
                    match Connection::open(
                        &host,
                        addr,
                        &self.settings.hostname,
                        None,
                        self.settings.timeouts,
                    )
                    .await
                    {
                        Ok(c) => return Ok(c),
                        Err(e) => last = Failure::Temporary(e.as_reply()),
                    }
                }
                Err(e) => {
                    info!(%host, %addr, "cannot deliver: {e}");
                    last = Failure::Temporary(e.as_reply());
                }
            }
        }
        Err(last)
    }

    /// A client configuration that verifies certificates against `ca` (a PEM file) or,
    /// when empty, the web PKI roots; built once per CA file.
    fn verifying_config(&self, ca: &str) -> Result<Arc<ClientConfig>, String> {
        if let Some(c) = self.verifying.borrow().get(ca) {
            return Ok(c.clone());
        }
        let c = crate::net::tls::verifying_client_config(ca)?;
        self.verifying
            .borrow_mut()
            .insert(ca.to_string(), c.clone());
        Ok(c)
    }

    async fn resolve(&self, dest: &Destination) -> Result<Vec<(String, SocketAddr)>, Failure> {
        let temp =
            |e: dns::TempFailure| Failure::Temporary(Reply::local(451, &format!("4.4.3 {e}")));
        match dest {
            Destination::Route { host, port, .. } => {
                if let Ok(ip) = host.parse::<IpAddr>() {
                    return Ok(vec![(host.clone(), SocketAddr::new(ip, *port))]);
                }
                let ips = self.dns.ips(host).await.map_err(temp)?;
                if ips.is_empty() {
                    return Err(Failure::Temporary(Reply::local(
                        451,
                        &format!("4.4.4 route host {host} has no address"),
                    )));
                }
                Ok(ips
                    .into_iter()
                    .map(|ip| (host.clone(), SocketAddr::new(ip, *port)))
                    .collect())
            }
            Destination::Mx { domain } => {
                let hosts = match self.dns.mx(domain).await.map_err(temp)? {
                    MxAnswer::Hosts(h) => h,
                    MxAnswer::Implicit => vec![domain.clone()],
                    MxAnswer::NullMx => {
                        return Err(Failure::Permanent(Reply::local(
                            556,
                            &format!("5.1.10 {domain} accepts no mail (null MX)"),
                        )));
                    }
                    MxAnswer::NxDomain => {
                        return Err(Failure::Permanent(Reply::local(
                            550,
                            &format!("5.1.2 domain {domain} does not exist"),
                        )));
                    }
                };
                let mut out = Vec::new();
                for h in hosts {
                    match self.dns.ips(&h).await {
                        Ok(ips) => out.extend(
                            ips.into_iter()
                                .map(|ip| (h.clone(), SocketAddr::new(ip, 25))),
                        ),
                        Err(e) => warn!(host = %h, "MX host lookup failed: {e}"),
                    }
                }
                if out.is_empty() {
                    return Err(Failure::Temporary(Reply::local(
                        451,
                        &format!("4.4.4 no address for the mail hosts of {domain}"),
                    )));
                }
                Ok(out)
            }
        }
    }

    /// Applies a job's outcomes; settles the message when its last job reports.
    fn report(self: &Rc<Self>, job: Job, outcomes: Outcomes) {
        let msg = job.msg;
        if msg.phase() == Phase::Gone {
            // Deleted while its job ran: the Done record is written already.
            return;
        }
        let shard = self.shard();
        let mut delivered = Vec::new();
        let settle;
        let delay = self.clock.unix().saturating_sub(msg.arrival);
        {
            let mut st = msg.state.borrow_mut();
            let attempt = st.attempts;
            for (i, o, remote) in outcomes {
                let r = &mut st.rcpts[i];
                if r.status != Status::Pending {
                    // Removed by an operator while the job ran.
                    continue;
                }
                let mut error = None;
                let (ev, reply) = match &o {
                    Outcome::Delivered => ("delivered", ""),
                    Outcome::Deferred(reply) => ("deferred", reply.text.as_str()),
                    Outcome::Failed(reply) => ("bounced", reply.text.as_str()),
                };
                self.tracker.record(crate::tracking::Event {
                    ev,
                    qid: &msg.id,
                    rcpt: &r.addr,
                    dest: remote.as_deref().unwrap_or_default(),
                    reply,
                    delay: Some(delay),
                    attempt: Some(attempt),
                    ..Default::default()
                });
                match o {
                    Outcome::Delivered => {
                        r.status = Status::Delivered;
                        delivered.push(i as u32);
                        shard.delivery(Delivery::Delivered, 1);
                        info!(id = %msg.id, rcpt = %r.addr, remote = remote.as_deref().unwrap_or(""), "delivered");
                    }
                    Outcome::Deferred(reply) => {
                        shard.delivery(Delivery::Deferred, 1);
                        info!(id = %msg.id, rcpt = %r.addr, reply = %reply.text, "deferred");
                        error = Some(reply.text.clone());
                        r.last = Some((reply, remote));
                    }
                    Outcome::Failed(reply) => {
                        r.status = Status::Failed;
                        shard.delivery(Delivery::Failed, 1);
                        info!(id = %msg.id, rcpt = %r.addr, reply = %reply.text, "failed");
                        r.last = Some((reply, remote));
                    }
                }
                if let Some(e) = error {
                    st.last_error = e;
                }
            }
            st.outstanding = st.outstanding.saturating_sub(1);
            settle = st.outstanding == 0;
        }
        if !delivered.is_empty() {
            self.spool.mark_delivered(msg.location, &msg.id, &delivered);
        }
        if settle {
            self.settle(msg);
        }
    }

    /// After an attempt: finished, expired, on hold, or waiting for the next attempt.
    fn settle(self: &Rc<Self>, msg: Rc<Message>) {
        let (phase, pending) = {
            let st = msg.state.borrow();
            (
                st.phase,
                st.rcpts.iter().any(|r| r.status == Status::Pending),
            )
        };
        if phase == Phase::Gone {
            return;
        }
        if !pending {
            let me = self.clone();
            glommio::spawn_local(async move { me.finish(msg).await }).detach();
            return;
        }
        let now = self.clock.unix();
        let expires = msg.arrival + self.settings.lifetime.as_secs();
        if now >= expires {
            self.expire(msg);
            return;
        }
        let (delay, warn_now, held) = {
            let mut st = msg.state.borrow_mut();
            st.content = None;
            let i =
                (st.attempts.max(1) as usize - 1).min(self.settings.retry.len().saturating_sub(1));
            let delay = self
                .settings
                .retry
                .get(i)
                .copied()
                .unwrap_or(Duration::from_secs(300))
                .min(Duration::from_secs(expires - now));
            let warn_now = !st.warned
                && !msg.sender.is_empty()
                && self
                    .settings
                    .delay_warning
                    .is_some_and(|w| now >= msg.arrival + w.as_secs());
            if warn_now {
                st.warned = true;
            }
            st.next_attempt = now + delay.as_secs();
            (delay, warn_now, st.held)
        };
        if warn_now {
            let me = self.clone();
            let m = msg.clone();
            glommio::spawn_local(async move { me.notify_delay(m).await }).detach();
        }
        if held {
            msg.state.borrow_mut().phase = Phase::Held;
        } else {
            self.schedule(msg.clone(), delay);
        }
        if worth_persisting(msg.state.borrow().attempts) || warn_now {
            self.persist(&msg);
        }
    }

    /// Records the message's queue state in the spool (durable with the next batch).
    fn persist(&self, msg: &Message) {
        let st = msg.state.borrow();
        let flags = if st.held { STATE_HELD } else { 0 } | if st.warned { STATE_WARNED } else { 0 };
        self.spool.mark_state(
            msg.location,
            &StateRecord {
                id: &msg.id,
                attempts: st.attempts,
                flags,
                next_attempt: st.next_attempt,
                last_error: &st.last_error,
            },
        );
    }

    /// Puts a message aside until `wait` has passed; the retry loop picks it up.
    fn schedule(&self, msg: Rc<Message>, wait: Duration) {
        let key = self.next_retry_key.get();
        self.next_retry_key.set(key + 1);
        {
            let mut st = msg.state.borrow_mut();
            st.phase = Phase::Waiting(key);
            st.next_attempt = self.clock.unix() + wait.as_secs();
        }
        self.waiting.borrow_mut().insert(key, msg);
        self.retries
            .borrow_mut()
            .push(Reverse((self.clock.now() + wait, key)));
    }

    /// The lifetime ran out: every pending recipient fails with its last error.
    fn expire(self: &Rc<Self>, msg: Rc<Message>) {
        let delay = self.clock.unix().saturating_sub(msg.arrival);
        {
            let mut st = msg.state.borrow_mut();
            for r in st.rcpts.iter_mut().filter(|r| r.status == Status::Pending) {
                self.tracker.record(crate::tracking::Event {
                    ev: "expired",
                    qid: &msg.id,
                    rcpt: &r.addr,
                    reply: r.last.as_ref().map_or("", |(rep, _)| rep.text.as_str()),
                    delay: Some(delay),
                    ..Default::default()
                });
                r.status = Status::Failed;
                let last = r
                    .last
                    .take()
                    .map(|(rep, _)| rep.text)
                    .unwrap_or_else(|| "no attempt succeeded".into());
                r.last = Some((
                    Reply::local(
                        451,
                        &format!("4.4.7 delivery time expired; last error: {last}"),
                    ),
                    None,
                ));
            }
        }
        info!(id = %msg.id, "queue lifetime expired");
        let me = self.clone();
        glommio::spawn_local(async move { me.finish(msg).await }).detach();
    }

    async fn retry_loop(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(Duration::from_millis(200)).await;
            let now = self.clock.now();
            loop {
                let due = {
                    let mut heap = self.retries.borrow_mut();
                    match heap.peek() {
                        Some(Reverse((at, _))) if *at <= now => heap.pop().map(|Reverse((_, k))| k),
                        _ => None,
                    }
                };
                let Some(key) = due else { break };
                let Some(msg) = self.waiting.borrow_mut().remove(&key) else {
                    continue;
                };
                if self.clock.unix() >= msg.arrival + self.settings.lifetime.as_secs() {
                    self.expire(msg);
                } else {
                    self.attempt(msg);
                }
                glommio::yield_if_needed().await;
            }
        }
    }

    /// The message has no pending recipient: bounce the failures, then mark it done.
    async fn finish(self: Rc<Self>, msg: Rc<Message>) {
        msg.state.borrow_mut().phase = Phase::Finishing;
        let failed = reported(&msg, Status::Failed, "5.0.0 delivery failed");
        if !failed.is_empty() && !msg.sender.is_empty() {
            // The bounce must be durable before the original is forgotten.
            if let Err(e) = self.report_to_sender(&msg, &failed, None).await {
                warn!(id = %msg.id, "cannot spool the bounce, will retry: {e}");
                // The failed recipients stay failed, so the next attempt comes back here.
                self.schedule(msg, Duration::from_secs(60));
                return;
            }
            self.shard().dsns.inc();
        } else if !failed.is_empty() {
            info!(id = %msg.id, "failed message from the null sender: no bounce");
        }
        self.forget(&msg);
        info!(id = %msg.id, "finished");
    }

    /// Marks a message done in the spool and drops it from the queue.
    fn forget(&self, msg: &Message) {
        let was_held = {
            let mut st = msg.state.borrow_mut();
            st.phase = Phase::Gone;
            st.content = None;
            std::mem::replace(&mut st.held, false)
        };
        self.spool.mark_done(msg.location, &msg.id);
        self.messages.borrow_mut().remove(&msg.id);
        let shard = self.shard();
        shard.queue_messages.add(-1);
        if was_held {
            shard.queue_held.add(-1);
        }
        shard
            .queue_residence
            .observe(self.clock.unix().saturating_sub(msg.arrival) as f64);
    }

    /// Sends the "delivery delayed" notice for the recipients still pending.
    async fn notify_delay(self: Rc<Self>, msg: Rc<Message>) {
        let waiting = reported(&msg, Status::Pending, "4.0.0 delivery delayed");
        if waiting.is_empty() {
            return;
        }
        let until = msg.arrival + self.settings.lifetime.as_secs();
        match self.report_to_sender(&msg, &waiting, Some(until)).await {
            Ok(()) => self.shard().delay_notices.inc(),
            Err(e) => {
                warn!(id = %msg.id, "cannot spool the delay notice, will try after the next attempt: {e}");
                msg.state.borrow_mut().warned = false;
                self.persist(&msg);
            }
        }
    }

    /// Spools and queues a message the gateway itself sends (the control service's
    /// account mail and quarantine digests, through the admin socket): durable before
    /// it returns, then delivered, retried and bounced like any other. `content` is a
    /// whole RFC 5322 message; bare LFs become CRLF. Returns the queue id.
    pub async fn submit(
        self: &Rc<Self>,
        sender: &str,
        rcpts: &[String],
        content: &str,
    ) -> Result<String, String> {
        let bad = |a: &str| {
            a.is_empty()
                || a.len() > 254
                || a.bytes()
                    .any(|b| b <= b' ' || b == b'<' || b == b'>' || b == 0x7f)
        };
        if rcpts.is_empty() || rcpts.len() > 100 {
            return Err("a submitted message has 1 to 100 recipients".into());
        }
        if let Some(r) = rcpts.iter().find(|r| bad(r) || !r.contains('@')) {
            return Err(format!("recipient {r:?} is not an address"));
        }
        if !sender.is_empty() && bad(sender) {
            return Err(format!("sender {sender:?} is not an address"));
        }
        let mut body = Vec::with_capacity(content.len() + content.len() / 32 + 2);
        let mut prev = 0u8;
        for &b in content.as_bytes() {
            if b == b'\n' && prev != b'\r' {
                body.push(b'\r');
            }
            body.push(b);
            prev = b;
        }
        if !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        let id = self.ids.next();
        let now = self.clock.unix();
        let header = format!(
            "Received: by {} (Bulwark) with local id {id};\r\n\t{}\r\n",
            self.settings.hostname,
            crate::util::rfc5322_date(now)
        )
        .into_bytes();
        let flags = if content.is_ascii() {
            0
        } else {
            crate::queue::record::FLAG_8BIT
        };
        let loc = self
            .spool
            .append_message(&id, now, flags, sender, rcpts, &header, &body)
            .await
            .map_err(|e| format!("cannot spool the message: {e}"))?;
        info!(%id, from = %sender, to = %rcpts.join(","), "local message queued");
        self.tracker.record(crate::tracking::Event {
            ev: "accepted",
            qid: &id,
            from: Some(sender),
            rcpts,
            size: Some((header.len() + body.len()) as u64),
            action: "deliver",
            stage: "local",
            ..Default::default()
        });
        let cached = self.cache_content(header, body);
        let m = Message::new(
            id.clone(),
            now,
            flags,
            sender.to_string(),
            rcpts.to_vec(),
            loc,
            cached,
        );
        self.enqueue(m);
        Ok(id)
    }

    /// Spools and queues a DSN to the message's sender: a bounce (`delayed: None`) or a
    /// "delivery delayed" notice.
    async fn report_to_sender(
        self: &Rc<Self>,
        msg: &Message,
        rcpts: &[dsn::FailedRecipient],
        delayed: Option<u64>,
    ) -> Result<(), crate::queue::SpoolError> {
        // A DSN returns the original's header only: read no more than a header can be.
        let original = match self.content(msg).await {
            Ok(c) => c.prefix(content::HEADER_MAX).await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let dsn_id = self.ids.next();
        let now = self.clock.unix();
        let body = dsn::build(&dsn::Report {
            reporting_mta: &self.settings.hostname,
            queue_id: &msg.id,
            dsn_id: &dsn_id,
            original_sender: &msg.sender,
            arrival: msg.arrival,
            now,
            failed: rcpts,
            original: &original,
            delayed,
        });
        if msg.phase() != Phase::Finishing {
            // Only the content's header was needed; a waiting message keeps no content.
            msg.state.borrow_mut().content = None;
        }
        let to = vec![msg.sender.clone()];
        let loc = self
            .spool
            .append_message(&dsn_id, now, 0, "", &to, b"", &body)
            .await?;
        let kind = if delayed.is_some() {
            "delay notice"
        } else {
            "bounce"
        };
        info!(id = %msg.id, dsn = %dsn_id, to = %msg.sender, "{kind} queued");
        self.tracker.record(crate::tracking::Event {
            ev: "dsn",
            qid: &msg.id,
            queued_as: &dsn_id,
            rcpt: &msg.sender,
            action: if delayed.is_some() {
                "delayed"
            } else {
                "failed"
            },
            ..Default::default()
        });
        self.tracker.record(crate::tracking::Event {
            ev: "accepted",
            qid: &dsn_id,
            from: Some(""),
            rcpts: &to,
            size: Some(body.len() as u64),
            action: "deliver",
            stage: "dsn",
            ..Default::default()
        });
        let cached = self.cache_content(Vec::new(), body);
        let m = Message::new(dsn_id, now, 0, String::new(), to, loc, cached);
        self.enqueue(m);
        Ok(())
    }
}

/// Whether the state after this many attempts goes to the spool: every one of the
/// first 8, then every 8th. A message deferred for days then appends a few dozen state
/// records instead of hundreds to a segment that cannot be reclaimed while it waits;
/// after a crash its count may be a few attempts behind and its next attempt earlier.
/// Holds, releases and the delay notice are always recorded.
fn worth_persisting(attempts: u32) -> bool {
    attempts <= 8 || attempts.is_multiple_of(8)
}

/// The recipients of `msg` with `status`, as a DSN lists them.
fn reported(msg: &Message, status: Status, fallback: &str) -> Vec<dsn::FailedRecipient> {
    msg.state
        .borrow()
        .rcpts
        .iter()
        .filter(|r| r.status == status)
        .map(|r| {
            let code = if status == Status::Failed { 550 } else { 451 };
            let (reply, remote) = r
                .last
                .clone()
                .unwrap_or((Reply::local(code, fallback), None));
            dsn::FailedRecipient {
                rcpt: r.addr.clone(),
                status: dsn::status_of(reply.code, &reply.text),
                diagnostic: reply.text,
                remote_mta: remote,
            }
        })
        .collect()
}

/// The same outcome for every recipient of a job.
fn all(job: &Job, o: &dyn Fn() -> Outcome, remote: Option<String>) -> Outcomes {
    job.rcpts
        .iter()
        .map(|&i| (i, o(), remote.clone()))
        .collect()
}

/// Runs one job's transaction on an open connection. Returns the per-recipient outcomes
/// and whether the connection is still usable.
async fn transact(c: &mut Connection, job: &Job, content: &Content) -> (Outcomes, bool) {
    let remote = Some(c.remote.clone());
    let rcpt_addrs: Vec<String> = {
        let st = job.msg.state.borrow();
        job.rcpts
            .iter()
            .map(|&i| st.rcpts[i].addr.clone())
            .collect()
    };
    let rcpt_refs: Vec<&str> = rcpt_addrs.iter().map(String::as_str).collect();
    let eight_bit = job.msg.flags & crate::queue::record::FLAG_8BIT != 0;
    let utf8 = job.msg.flags & crate::queue::record::FLAG_SMTPUTF8 != 0;
    match c
        .send(&job.msg.sender, &rcpt_refs, content, eight_bit, utf8)
        .await
    {
        Err(e) => {
            let r = e.as_reply();
            (all(job, &|| Outcome::Deferred(r.clone()), remote), false)
        }
        Ok(tx) => {
            let by_class = |r: &Reply| {
                if r.is_positive() {
                    Outcome::Delivered
                } else if r.is_permanent() {
                    Outcome::Failed(r.clone())
                } else {
                    Outcome::Deferred(r.clone())
                }
            };
            if !tx.mail.is_positive() {
                return (all(job, &|| by_class(&tx.mail), remote), true);
            }
            let outcomes = job
                .rcpts
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let o = match tx.rcpts.get(k) {
                        Some(r) if !r.is_positive() => by_class(r),
                        Some(_) => match &tx.data {
                            Some(d) => by_class(d),
                            None => Outcome::Deferred(Reply::local(
                                451,
                                "4.4.2 no reply to the content",
                            )),
                        },
                        None => Outcome::Deferred(Reply::local(451, "4.4.2 no reply to RCPT")),
                    };
                    (i, o, remote.clone())
                })
                .collect();
            (outcomes, true)
        }
    }
}

enum Failure {
    Temporary(Reply),
    Permanent(Reply),
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod schedule_tests;
