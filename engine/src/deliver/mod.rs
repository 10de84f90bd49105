//! Delivery: per-destination queues, the SMTP client, retries and bounces.
//!
//! Each core delivers what it spooled. A message's pending recipients are grouped by
//! destination (a managed domain's route, or MX hosts for anything else); each group is
//! a job on that destination's queue. A destination has up to
//! `connections_per_destination` workers, each holding one connection and running job
//! after job on it until the queue has been empty for `idle_time`. When every job of a
//! message has reported, the message is finished (delivered, or bounced with a DSN) or
//! scheduled for its next attempt on the `[queue] retry` schedule, until its lifetime
//! runs out.

pub mod client;
pub mod dns;
pub mod dsn;

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use rustls::ClientConfig;
use tracing::{info, warn};

use crate::metrics::{Delivery, Metrics};
use crate::policy::{CorePolicy, Destination, destination};
use crate::queue::{Location, QueueIds, Spool, unix_now};
use bulwark_policy::TlsPolicy;
use client::{ConnError, Connection, Reply, Timeouts};
use dns::{Dns, MxAnswer};

/// Fixed settings of delivery.
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    pub lifetime: Duration,
    pub retry: Vec<Duration>,
    pub timeouts: Timeouts,
    pub connections_per_destination: usize,
    pub idle_time: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Delivered,
    Failed,
}

struct Rcpt {
    addr: String,
    status: Status,
    /// The last reply about this recipient and who gave it.
    last: Option<(Reply, Option<String>)>,
}

struct State {
    rcpts: Vec<Rcpt>,
    attempts: u32,
    /// Jobs of the current attempt that have not reported.
    outstanding: usize,
    /// Content kept in memory between spooling and the first attempt, and during an
    /// attempt; dropped while the message waits for a retry.
    content: Option<Rc<Vec<u8>>>,
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
    /// `finished[i]` marks recipients already done before a restart.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        arrival: u64,
        flags: u8,
        sender: String,
        rcpts: Vec<String>,
        finished: Option<&[bool]>,
        location: Location,
        content: Option<Rc<Vec<u8>>>,
    ) -> Rc<Message> {
        let rcpts = rcpts
            .into_iter()
            .enumerate()
            .map(|(i, addr)| {
                let done = finished.and_then(|f| f.get(i).copied()).unwrap_or(false);
                Rcpt {
                    addr,
                    status: if done {
                        Status::Delivered
                    } else {
                        Status::Pending
                    },
                    last: None,
                }
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
            }),
        })
    }
}

/// One destination's share of a message.
struct Job {
    msg: Rc<Message>,
    rcpts: Vec<usize>,
}

/// Outcome for one recipient of a job.
enum Outcome {
    Delivered,
    Deferred(Reply),
    Failed(Reply),
}

struct DestQueue {
    dest: Destination,
    tx: LocalSender<Job>,
    rx: Rc<LocalReceiver<Job>>,
    workers: Cell<usize>,
    idle: Cell<usize>,
}

pub struct Deliverer {
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
    /// Verifying TLS client configurations, by CA file ("" is the web PKI).
    verifying: RefCell<HashMap<String, Arc<ClientConfig>>>,
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
    ) -> Rc<Deliverer> {
        let d = Rc::new(Deliverer {
            core,
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
            verifying: RefCell::new(HashMap::new()),
        });
        let ticker = d.clone();
        glommio::spawn_local(async move { ticker.retry_loop().await }).detach();
        d
    }

    /// Takes a newly spooled (or recovered) message into the queue.
    pub fn enqueue(self: &Rc<Self>, msg: Rc<Message>) {
        self.metrics.shard(self.core).queue_messages.add(1);
        self.attempt(msg);
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
        msg.state.borrow_mut().outstanding = groups.len();
        for (dest, rcpts) in groups {
            let q = self.dest_queue(&dest);
            let _ = q.tx.try_send(Job {
                msg: msg.clone(),
                rcpts,
            });
            if q.idle.get() == 0 && q.workers.get() < self.settings.connections_per_destination {
                q.workers.set(q.workers.get() + 1);
                let me = self.clone();
                glommio::spawn_local(async move { me.worker(q).await }).detach();
            }
        }
    }

    fn dest_queue(&self, dest: &Destination) -> Rc<DestQueue> {
        if let Some(q) = self.dests.borrow().get(dest) {
            return q.clone();
        }
        let (tx, rx) = local_channel::new_unbounded();
        let q = Rc::new(DestQueue {
            dest: dest.clone(),
            tx,
            rx: Rc::new(rx),
            workers: Cell::new(0),
            idle: Cell::new(0),
        });
        self.dests.borrow_mut().insert(dest.clone(), q.clone());
        q
    }

    /// One connection's worth of work for a destination.
    async fn worker(self: Rc<Self>, q: Rc<DestQueue>) {
        let mut conn: Option<Connection> = None;
        loop {
            q.idle.set(q.idle.get() + 1);
            let rx = q.rx.clone();
            let job = futures_lite::future::or(async { rx.recv().await }, async {
                glommio::timer::sleep(self.settings.idle_time).await;
                None
            })
            .await;
            q.idle.set(q.idle.get() - 1);
            let Some(job) = job else {
                if q.tx.len() > 0 {
                    continue;
                }
                break;
            };
            let started = Instant::now();
            let outcomes = self.run_job(&q.dest, &mut conn, &job).await;
            self.metrics
                .shard(self.core)
                .delivery_latency
                .observe_duration(started.elapsed());
            self.report(job, outcomes);
        }
        q.workers.set(q.workers.get() - 1);
        if let Some(c) = conn {
            c.quit().await;
        }
    }

    async fn run_job(
        &self,
        dest: &Destination,
        conn: &mut Option<Connection>,
        job: &Job,
    ) -> Vec<(usize, Outcome, Option<String>)> {
        let all = |o: &dyn Fn() -> Outcome, remote: Option<String>| {
            job.rcpts
                .iter()
                .map(|&i| (i, o(), remote.clone()))
                .collect::<Vec<_>>()
        };
        let content = match self.content(&job.msg).await {
            Ok(c) => c,
            Err(e) => {
                warn!(id = %job.msg.id, "cannot read spooled content: {e}");
                let r = Reply::local(451, &format!("4.3.0 spool read failed: {e}"));
                return all(&|| Outcome::Deferred(r.clone()), None);
            }
        };
        if conn.is_none() {
            match self.connect(dest).await {
                Ok(c) => *conn = Some(c),
                Err(Failure::Temporary(r)) => return all(&|| Outcome::Deferred(r.clone()), None),
                Err(Failure::Permanent(r)) => return all(&|| Outcome::Failed(r.clone()), None),
            }
        }
        let Some(c) = conn.as_mut() else {
            return Vec::new();
        };
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
            .send(&job.msg.sender, &rcpt_refs, &content, eight_bit, utf8)
            .await
        {
            Err(e) => {
                *conn = None;
                let r = e.as_reply();
                all(&|| Outcome::Deferred(r.clone()), remote)
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
                    return all(&|| by_class(&tx.mail), remote);
                }
                job.rcpts
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
                    .collect()
            }
        }
    }

    async fn content(&self, msg: &Message) -> std::io::Result<Rc<Vec<u8>>> {
        if let Some(c) = msg.state.borrow().content.clone() {
            return Ok(c);
        }
        let c = Rc::new(self.spool.read_content(msg.location).await?);
        msg.state.borrow_mut().content = Some(c.clone());
        Ok(c)
    }

    /// Resolves and connects, trying each address in preference order.
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
    fn report(self: &Rc<Self>, job: Job, outcomes: Vec<(usize, Outcome, Option<String>)>) {
        let msg = job.msg;
        let shard = self.metrics.shard(self.core);
        let mut delivered = Vec::new();
        let settle;
        {
            let mut st = msg.state.borrow_mut();
            for (i, o, remote) in outcomes {
                let r = &mut st.rcpts[i];
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
                        r.last = Some((reply, remote));
                    }
                    Outcome::Failed(reply) => {
                        r.status = Status::Failed;
                        shard.delivery(Delivery::Failed, 1);
                        info!(id = %msg.id, rcpt = %r.addr, reply = %reply.text, "failed");
                        r.last = Some((reply, remote));
                    }
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

    /// After an attempt: finished, or wait for the next one.
    fn settle(self: &Rc<Self>, msg: Rc<Message>) {
        let pending = msg
            .state
            .borrow()
            .rcpts
            .iter()
            .any(|r| r.status == Status::Pending);
        if !pending {
            let me = self.clone();
            glommio::spawn_local(async move { me.finish(msg).await }).detach();
            return;
        }
        let now = unix_now();
        let expires = msg.arrival + self.settings.lifetime.as_secs();
        let delay = {
            let mut st = msg.state.borrow_mut();
            st.attempts += 1;
            st.content = None;
            let i = (st.attempts as usize - 1).min(self.settings.retry.len().saturating_sub(1));
            self.settings
                .retry
                .get(i)
                .copied()
                .unwrap_or(Duration::from_secs(300))
        };
        if now >= expires {
            self.expire(msg);
            return;
        }
        self.schedule(msg, delay.min(Duration::from_secs(expires - now)));
    }

    /// Puts a message aside until `wait` has passed; the retry loop picks it up.
    fn schedule(&self, msg: Rc<Message>, wait: Duration) {
        let key = self.next_retry_key.get();
        self.next_retry_key.set(key + 1);
        self.waiting.borrow_mut().insert(key, msg);
        self.retries
            .borrow_mut()
            .push(Reverse((Instant::now() + wait, key)));
    }

    /// The lifetime ran out: every pending recipient fails with its last error.
    fn expire(self: &Rc<Self>, msg: Rc<Message>) {
        {
            let mut st = msg.state.borrow_mut();
            for r in st.rcpts.iter_mut().filter(|r| r.status == Status::Pending) {
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
            let now = Instant::now();
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
                if unix_now() >= msg.arrival + self.settings.lifetime.as_secs() {
                    self.expire(msg);
                } else {
                    self.attempt(msg);
                }
            }
        }
    }

    /// The message has no pending recipient: bounce the failures, then mark it done.
    async fn finish(self: Rc<Self>, msg: Rc<Message>) {
        let failed: Vec<dsn::FailedRecipient> = msg
            .state
            .borrow()
            .rcpts
            .iter()
            .filter(|r| r.status == Status::Failed)
            .map(|r| {
                let (reply, remote) = r
                    .last
                    .clone()
                    .unwrap_or((Reply::local(550, "5.0.0 delivery failed"), None));
                dsn::FailedRecipient {
                    rcpt: r.addr.clone(),
                    status: dsn::status_of(reply.code, &reply.text),
                    diagnostic: reply.text,
                    remote_mta: remote,
                }
            })
            .collect();
        if !failed.is_empty() && !msg.sender.is_empty() {
            // The bounce must be durable before the original is forgotten.
            if let Err(e) = self.bounce(&msg, &failed).await {
                warn!(id = %msg.id, "cannot spool the bounce, will retry: {e}");
                // The failed recipients stay failed, so the next attempt comes back here.
                self.schedule(msg, Duration::from_secs(60));
                return;
            }
        } else if !failed.is_empty() {
            info!(id = %msg.id, "failed message from the null sender: no bounce");
        }
        self.spool.mark_done(msg.location, &msg.id);
        let shard = self.metrics.shard(self.core);
        shard.queue_messages.add(-1);
        shard
            .queue_residence
            .observe(unix_now().saturating_sub(msg.arrival) as f64);
        info!(id = %msg.id, "finished");
    }

    async fn bounce(
        self: &Rc<Self>,
        msg: &Message,
        failed: &[dsn::FailedRecipient],
    ) -> Result<(), crate::queue::SpoolError> {
        let original = match self.content(msg).await {
            Ok(c) => c,
            Err(_) => Rc::new(Vec::new()),
        };
        let dsn_id = self.ids.next();
        let now = unix_now();
        let body = dsn::build(&dsn::Report {
            reporting_mta: &self.settings.hostname,
            queue_id: &msg.id,
            dsn_id: &dsn_id,
            original_sender: &msg.sender,
            arrival: msg.arrival,
            now,
            failed,
            original: &original,
        });
        let rcpts = vec![msg.sender.clone()];
        let loc = self
            .spool
            .append_message(&dsn_id, now, 0, "", &rcpts, b"", &body)
            .await?;
        self.metrics.shard(self.core).dsns.inc();
        info!(id = %msg.id, dsn = %dsn_id, to = %msg.sender, "bounce queued");
        let m = Message::new(
            dsn_id,
            now,
            0,
            String::new(),
            rcpts,
            None,
            loc,
            Some(Rc::new(body)),
        );
        self.enqueue(m);
        Ok(())
    }
}

enum Failure {
    Temporary(Reply),
    Permanent(Reply),
}
