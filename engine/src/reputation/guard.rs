//! What the engine remembers about each client across cores, by message passing only:
//! directory-harvest protection, the throttles of the sender groups, and dynamic blocks.
//!
//! A client is an IPv4 address (or /24, `[throttle] ipv4_prefix`) or an IPv6 network
//! (/64 by default, `[throttle] ipv6_prefix`). Each client has an *owner core* (a hash of
//! the client over the cores) that alone keeps its counts, so they are exact: connections
//! open at once, a GCRA per rate (connections per minute; recipients, refused recipients
//! and protocol errors per hour) and unknown recipients for harvest protection. Other
//! cores report events to the owner and ask it to admit each new connection (the answer
//! is awaited before the client's first command is read, overlapping the greeting).
//!
//! Past a rate, the owner *throttles* the client (`421 4.7.0` or `451 4.7.1`, never a
//! permanent refusal) and tells every core, which then refuses locally until the rate
//! allows more. A client that keeps hitting its limits (`block_after` refusals within
//! `block_window`) gets a *dynamic block*: refused at connect on every core (and dropped
//! by the XDP program, whose loader copies the list) for `block`, doubled at each next
//! block up to `block_max`. Refused recipients never lead to a block: a big sender is
//! not blocked for its unknown users (harvest protection has its own limit).
//!
//! What a core remembers is bounded: each map is an LRU of [`TRACKED`] clients, so a
//! flood of distinct sources evicts the least recently seen ones in constant time.

use std::cell::RefCell;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::policy::CorePolicy;

/// A client: its dynamic-block key ([`bulwark_policy::dynamic_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client(pub [u8; 16]);

impl Client {
    pub fn of(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> Client {
        Client(bulwark_policy::dynamic_key(ip, ipv4_prefix, ipv6_prefix))
    }

    /// The network, for people (`192.0.2.7/32`, `2001:db8::/64`).
    pub fn network(&self) -> String {
        bulwark_policy::dynamic_key_network(self.0)
    }
}

/// The throttled sender groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Unknown,
    /// Listed by DNS lists whose weights stay under the threshold.
    Suspect,
}

/// A limit of a sender group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    ConnectionRate,
    Messages,
    Recipients,
    FailedRecipients,
    ProtocolErrors,
}

impl Limit {
    /// The reply refusing the client while the limit holds.
    pub fn reply(self) -> &'static str {
        match self {
            Limit::Connections => {
                "421 4.7.0 Too many connections from your address; try again later"
            }
            Limit::ConnectionRate => {
                "421 4.7.0 Too many new connections from your address; try again later"
            }
            Limit::Messages => "421 4.7.0 Too many messages in one session; reconnect to send more",
            Limit::Recipients => "451 4.7.1 Too many recipients from your address; try again later",
            Limit::FailedRecipients => {
                "421 4.7.0 Too many refused recipients from your address; try again later"
            }
            Limit::ProtocolErrors => {
                "421 4.7.0 Too many protocol errors from your address; try again later"
            }
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::ConnectionRate => "connection_rate",
            Limit::Messages => "messages",
            Limit::Recipients => "recipients",
            Limit::FailedRecipients => "failed_recipients",
            Limit::ProtocolErrors => "protocol_errors",
        }
    }

    /// Whether the limit refuses new connections (else transactions).
    fn at_connect(self) -> bool {
        !matches!(self, Limit::Recipients | Limit::Messages)
    }

    /// Whether hitting it again and again leads to a dynamic block.
    fn strikes(self) -> bool {
        !matches!(self, Limit::Messages | Limit::FailedRecipients)
    }
}

/// Why a client is blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// Too many unknown recipients (`[harvest]`).
    Harvest,
    /// Kept hitting this limit.
    Throttle(Limit),
}

impl BlockReason {
    pub fn label(self) -> &'static str {
        match self {
            BlockReason::Harvest => "harvest",
            BlockReason::Throttle(l) => l.label(),
        }
    }
}

/// A dynamic block in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub until: Instant,
    pub reason: BlockReason,
}

/// Events a session reports to a client's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Unknown recipients (harvest protection).
    Unknown,
    /// Accepted recipients.
    Recipients,
    /// Refused recipients.
    Failed,
    /// Protocol errors.
    Errors,
    /// A refusal by a throttle the core applied from its copy (a strike).
    Refused(Limit),
}

/// What cores tell each other.
#[derive(Debug)]
enum Message {
    /// A new connection from the client (sent to its owner); the owner answers on
    /// `reply` whether a limit refuses it.
    Open {
        client: Client,
        group: Group,
        reply: flume::Sender<Option<Limit>>,
    },
    /// The DNS lists put the client in `group`: whether its limits refuse the
    /// connection already counted.
    Recheck {
        client: Client,
        group: Group,
        reply: flume::Sender<Option<Limit>>,
    },
    /// One of its connections ended.
    Close(Client),
    Count(Client, Group, Counted, u32),
    /// The client is throttled by this limit until then (to every core).
    Throttle(Client, Limit, Instant),
    /// The client is blocked (to every core).
    Block(Client, Block),
    /// The block and throttles are lifted (to every core).
    Unblock(Client),
}

/// Clients remembered per core, in each map.
pub const TRACKED: usize = 100_000;

/// What the owner keeps of a client.
#[derive(Debug, Clone, Default)]
struct Owned {
    open: u32,
    connection_tat: Option<Instant>,
    recipient_tat: Option<Instant>,
    failed_tat: Option<Instant>,
    error_tat: Option<Instant>,
    unknown: u32,
    unknown_since: Option<Instant>,
    strikes: u32,
    strikes_since: Option<Instant>,
    /// Dynamic blocks so far (each next one is twice as long), and when the last ends.
    blocks: u32,
    last_block_end: Option<Instant>,
}

/// GCRA (a burst of `limit`, then one every `period / limit`): admits one more event,
/// or answers when one would be admitted.
fn admit(
    tat: &mut Option<Instant>,
    now: Instant,
    limit: u32,
    period: Duration,
) -> Result<(), Instant> {
    if limit == 0 {
        return Ok(());
    }
    let next = tat.map_or(now, |x| x.max(now)) + period / limit;
    if next <= now + period {
        *tat = Some(next);
        return Ok(());
    }
    Err(next - period)
}

/// GCRA for `n` events that happened: counts them, and when the budget is spent (one
/// more would not conform) answers when one more would.
fn spend(
    tat: &mut Option<Instant>,
    now: Instant,
    limit: u32,
    period: Duration,
    n: u32,
) -> Option<Instant> {
    if limit == 0 {
        return None;
    }
    let t = period / limit;
    let next = (tat.map_or(now, |x| x.max(now)) + t * n).min(now + period * 2);
    *tat = Some(next);
    let one_more = next + t;
    (one_more > now + period).then(|| one_more - period)
}

/// One core's memory of clients.
pub struct Tracker {
    owned: LruCache<Client, Owned>,
    blocked: LruCache<Client, Block>,
    throttled: LruCache<Client, (Limit, Instant)>,
}

/// What the owner decided, for the guard to pass on.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decision {
    throttle: Option<(Limit, Instant)>,
    block: Option<(Block, Duration)>,
}

/// The limits and block settings in force, natively.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub throttle: bulwark_policy::Throttle,
    pub harvest: bulwark_policy::Harvest,
}

impl Settings {
    fn limits(&self, g: Group) -> &bulwark_policy::GroupLimits {
        match g {
            Group::Unknown => &self.throttle.unknown,
            Group::Suspect => &self.throttle.suspect,
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

impl Tracker {
    pub fn new(capacity: usize) -> Tracker {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Tracker {
            owned: LruCache::new(cap),
            blocked: LruCache::new(cap),
            throttled: LruCache::new(cap),
        }
    }

    /// Owner: counts a new connection and admits it or names the limit that refuses it.
    fn open(
        &mut self,
        c: Client,
        g: Group,
        s: &Settings,
        now: Instant,
    ) -> (Option<Limit>, Decision) {
        self.owned.get_or_insert_mut(c, Owned::default).open += 1;
        self.admit(c, g, s, now)
    }

    /// Owner: whether the limits of `g` refuse a connection already counted.
    fn admit(
        &mut self,
        c: Client,
        g: Group,
        s: &Settings,
        now: Instant,
    ) -> (Option<Limit>, Decision) {
        let l = *s.limits(g);
        let o = self.owned.get_or_insert_mut(c, Owned::default);
        let refused = if l.connections != 0 && o.open > l.connections {
            Some((Limit::Connections, None))
        } else {
            match admit(&mut o.connection_tat, now, l.connections_per_minute, MINUTE) {
                Ok(()) => None,
                Err(at) => Some((Limit::ConnectionRate, Some(at))),
            }
        };
        let Some((limit, until)) = refused else {
            return (None, Decision::default());
        };
        let mut d = Decision {
            throttle: until.map(|u| (limit, u)),
            block: None,
        };
        d.block = Self::strike(o, limit, s, now);
        (Some(limit), d)
    }

    fn close(&mut self, c: Client) {
        if let Some(o) = self.owned.peek_mut(&c) {
            o.open = o.open.saturating_sub(1);
        }
    }

    /// Owner: counts events; what follows from them.
    fn count(
        &mut self,
        c: Client,
        g: Group,
        what: Counted,
        n: u32,
        s: &Settings,
        now: Instant,
    ) -> Decision {
        let l = *s.limits(g);
        let o = self.owned.get_or_insert_mut(c, Owned::default);
        let (limit, tat, per_hour) = match what {
            Counted::Unknown => {
                let h = s.harvest;
                if h.max_unknown == 0 {
                    return Decision::default();
                }
                let window = Duration::from_secs(h.window_secs as u64);
                if o.unknown_since
                    .is_none_or(|t| now.duration_since(t) >= window)
                {
                    o.unknown = 0;
                    o.unknown_since = Some(now);
                }
                o.unknown = o.unknown.saturating_add(n);
                if o.unknown <= h.max_unknown {
                    return Decision::default();
                }
                o.unknown = 0;
                o.unknown_since = None;
                let first = Duration::from_secs(h.block_secs as u64);
                let cap = first.max(Duration::from_secs(s.throttle.block_max_secs as u64));
                let ttl = Self::next_block(o, first, cap, now);
                let block = Block {
                    until: now + ttl,
                    reason: BlockReason::Harvest,
                };
                return Decision {
                    throttle: None,
                    block: Some((block, ttl)),
                };
            }
            Counted::Refused(limit) => {
                return Decision {
                    throttle: None,
                    block: Self::strike(o, limit, s, now),
                };
            }
            Counted::Recipients => (
                Limit::Recipients,
                &mut o.recipient_tat,
                l.recipients_per_hour,
            ),
            Counted::Failed => (
                Limit::FailedRecipients,
                &mut o.failed_tat,
                l.failed_recipients_per_hour,
            ),
            Counted::Errors => (
                Limit::ProtocolErrors,
                &mut o.error_tat,
                l.protocol_errors_per_hour,
            ),
        };
        // Throttled once the hour's budget is spent; the refusals that follow are the
        // strikes (reported by the cores that refuse).
        Decision {
            throttle: spend(tat, now, per_hour, HOUR, n).map(|until| (limit, until)),
            block: None,
        }
    }

    /// One more refusal of `o` by `limit`; the block it earns, if it does.
    fn strike(
        o: &mut Owned,
        limit: Limit,
        s: &Settings,
        now: Instant,
    ) -> Option<(Block, Duration)> {
        let t = &s.throttle;
        if t.block_after == 0 || !limit.strikes() {
            return None;
        }
        let window = Duration::from_secs(t.block_window_secs as u64);
        if o.strikes_since
            .is_none_or(|since| now.duration_since(since) >= window)
        {
            o.strikes = 0;
            o.strikes_since = Some(now);
        }
        o.strikes += 1;
        if o.strikes < t.block_after {
            return None;
        }
        o.strikes = 0;
        o.strikes_since = None;
        let first = Duration::from_secs(t.block_secs as u64);
        let cap = Duration::from_secs(t.block_max_secs as u64).max(first);
        let ttl = Self::next_block(o, first, cap, now);
        Some((
            Block {
                until: now + ttl,
                reason: BlockReason::Throttle(limit),
            },
            ttl,
        ))
    }

    /// The length of the client's next block: `first`, doubled for each block before it
    /// (forgotten once a whole `cap` has passed since the last one ended), at most `cap`.
    fn next_block(o: &mut Owned, first: Duration, cap: Duration, now: Instant) -> Duration {
        if o.last_block_end.is_some_and(|end| now > end + cap) {
            o.blocks = 0;
        }
        let ttl = first.saturating_mul(1u32 << o.blocks.min(20)).min(cap);
        o.blocks += 1;
        o.last_block_end = Some(now + ttl);
        ttl
    }

    pub fn block(&mut self, c: Client, b: Block) {
        self.blocked.put(c, b);
    }

    pub fn throttle(&mut self, c: Client, limit: Limit, until: Instant) {
        match self.throttled.get(&c) {
            Some((_, u)) if *u >= until => {}
            _ => {
                self.throttled.put(c, (limit, until));
            }
        }
    }

    fn unblock(&mut self, c: Client) {
        self.blocked.pop(&c);
        self.throttled.pop(&c);
        if let Some(o) = self.owned.peek_mut(&c) {
            o.strikes = 0;
            o.strikes_since = None;
            o.unknown = 0;
            o.unknown_since = None;
            o.blocks = 0;
            o.recipient_tat = None;
            o.connection_tat = None;
            o.error_tat = None;
            o.failed_tat = None;
        }
    }

    pub fn blocked(&mut self, c: Client, now: Instant) -> Option<Block> {
        match self.blocked.get(&c) {
            Some(b) if b.until > now => Some(*b),
            Some(_) => {
                self.blocked.pop(&c);
                None
            }
            None => None,
        }
    }

    pub fn throttled(&mut self, c: Client, now: Instant) -> Option<(Limit, Instant)> {
        match self.throttled.get(&c) {
            Some(t) if t.1 > now => Some(*t),
            Some(_) => {
                self.throttled.pop(&c);
                None
            }
            None => None,
        }
    }

    /// Entries held: (owned, blocks, throttles).
    pub fn len(&self) -> (usize, usize, usize) {
        (self.owned.len(), self.blocked.len(), self.throttled.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0, 0)
    }
}

/// One core's links to the others: a bounded inbox, and a sender into every core's
/// inbox. (Plain channels: glommio's channel mesh could hang while the cores joined it at
/// start-up.) Admissions, events and blocks travel here, never per-command traffic.
pub struct Links {
    me: usize,
    peers: Vec<flume::Sender<Message>>,
    inbox: flume::Receiver<Message>,
}

impl Links {
    /// The links of `cores` cores, in core order.
    pub fn new(cores: usize) -> Vec<Links> {
        let (senders, inboxes): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::bounded(4096)).unzip();
        inboxes
            .into_iter()
            .enumerate()
            .map(|(me, inbox)| Links {
                me,
                peers: senders.clone(),
                inbox,
            })
            .collect()
    }

    /// Hands `m` to core `to` without waiting; gives it back when its inbox is full.
    fn send(&self, to: usize, m: Message) -> Result<(), Message> {
        match self.peers.get(to) {
            Some(p) => p.try_send(m).map_err(|e| e.into_inner()),
            None => Err(m),
        }
    }
}

fn owner(c: Client, peers: usize) -> usize {
    // FNV-1a: every core computes the same owner for a client.
    let h = c.0.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    (h % peers.max(1) as u64) as usize
}

/// The owner's answer to an admission, awaited before the client's first command.
pub enum Admission {
    Ready(Option<Limit>),
    Pending(flume::Receiver<Option<Limit>>),
}

/// How long a connection waits for its owner's answer before it is admitted anyway.
const ADMISSION_WAIT: Duration = Duration::from_secs(1);

impl Admission {
    pub async fn verdict(self) -> Option<Limit> {
        match self {
            Admission::Ready(v) => v,
            Admission::Pending(rx) => {
                futures_lite::future::or(async { rx.recv_async().await.ok().flatten() }, async {
                    glommio::timer::sleep(ADMISSION_WAIT).await;
                    None
                })
                .await
            }
        }
    }
}

/// A connection counted at its owner; dropping it tells the owner it ended.
pub struct Opened {
    guard: Rc<Guard>,
    client: Client,
    /// The core that counted the connection (its owner, or this core when the owner's
    /// inbox was full): the end goes to the same core, so the counts stay paired.
    counted_at: usize,
}

impl Drop for Opened {
    fn drop(&mut self) {
        let (c, at) = (self.client, self.counted_at);
        if at == self.guard.me {
            self.guard.handle(Message::Close(c));
        } else if self.guard.links.send(at, Message::Close(c)).is_err() {
            // That core's inbox is full: try again shortly rather than leave it counted.
            let guard = self.guard.clone();
            glommio::spawn_local(async move {
                for _ in 0..1000 {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    if guard.links.send(at, Message::Close(c)).is_ok() {
                        return;
                    }
                }
                warn!(client = %c.network(), "a connection's end could not be counted");
            })
            .detach();
        }
    }
}

/// A dynamic block, as the admin socket lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    pub network: String,
    /// The XDP map's key, hex.
    pub key: String,
    pub reason: String,
    /// Unix seconds when it ends.
    pub until: u64,
    pub remaining_ms: u64,
}

pub struct Guard {
    me: usize,
    peers: usize,
    links: Links,
    policy: Rc<CorePolicy>,
    metrics: Arc<Metrics>,
    tracker: RefCell<Tracker>,
}

impl Guard {
    /// Starts the guard of one core; its inbox carries the other cores' messages.
    pub fn start(links: Links, policy: Rc<CorePolicy>, metrics: Arc<Metrics>) -> Rc<Guard> {
        let inbox = links.inbox.clone();
        let g = Rc::new(Guard {
            me: links.me,
            peers: links.peers.len().max(1),
            links,
            policy,
            metrics,
            tracker: RefCell::new(Tracker::new(TRACKED)),
        });
        let guard = g.clone();
        glommio::spawn_local(async move {
            while let Ok(m) = inbox.recv_async().await {
                guard.handle(m);
            }
        })
        .detach();
        g
    }

    fn settings(&self) -> Settings {
        let snap = self.policy.current();
        let p = snap.policy();
        Settings {
            throttle: p.throttle.to_native(),
            harvest: bulwark_policy::Harvest {
                max_unknown: p.harvest.max_unknown.to_native(),
                window_secs: p.harvest.window_secs.to_native(),
                block_secs: p.harvest.block_secs.to_native(),
            },
        }
    }

    /// The client `ip` belongs to under the policy in force.
    pub fn client(&self, ip: IpAddr) -> Client {
        let snap = self.policy.current();
        let t = &snap.policy().throttle;
        Client::of(ip, t.ipv4_prefix, t.ipv6_prefix)
    }

    /// The gateway's own host is never throttled (local injection, health checks).
    pub fn exempt(ip: IpAddr) -> bool {
        match crate::reputation::dnsbl::canonical(ip) {
            IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
            IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
        }
    }

    /// The limits of `group` in force.
    pub fn limits(&self, group: Group) -> bulwark_policy::GroupLimits {
        *self.settings().limits(group)
    }

    /// The block in force against the client, if any.
    pub fn blocked(&self, c: Client) -> Option<Block> {
        self.tracker.borrow_mut().blocked(c, Instant::now())
    }

    /// A throttle in force that refuses connections.
    pub fn throttled_at_connect(&self, c: Client) -> Option<Limit> {
        self.tracker
            .borrow_mut()
            .throttled(c, Instant::now())
            .map(|(l, _)| l)
            .filter(|l| l.at_connect())
    }

    /// A throttle in force that refuses transactions.
    pub fn throttled_at_mail(&self, c: Client) -> Option<Limit> {
        self.tracker
            .borrow_mut()
            .throttled(c, Instant::now())
            .map(|(l, _)| l)
            .filter(|l| !l.at_connect())
    }

    /// Counts a new connection at the client's owner; the answer comes with the
    /// admission. The returned ticket tells the owner when the connection ends.
    pub fn open(self: &Rc<Self>, c: Client, group: Group) -> (Opened, Admission) {
        let mut ticket = Opened {
            guard: self.clone(),
            client: c,
            counted_at: self.me,
        };
        let h = owner(c, self.peers);
        if h == self.me {
            return (ticket, Admission::Ready(self.admit(c, group)));
        }
        let (tx, rx) = flume::bounded(1);
        let m = Message::Open {
            client: c,
            group,
            reply: tx,
        };
        match self.links.send(h, m) {
            Ok(()) => {
                ticket.counted_at = h;
                (ticket, Admission::Pending(rx))
            }
            // The owner is far behind: decide here rather than wait.
            Err(_) => (ticket, Admission::Ready(self.admit(c, group))),
        }
    }

    /// The DNS lists put an opened connection's client in `group`: asks the core that
    /// counted it whether that group's limits refuse it.
    pub fn recheck(&self, ticket: &Opened, group: Group) -> Admission {
        let c = ticket.client;
        if ticket.counted_at == self.me {
            return Admission::Ready(self.readmit(c, group));
        }
        let (tx, rx) = flume::bounded(1);
        let m = Message::Recheck {
            client: c,
            group,
            reply: tx,
        };
        match self.links.send(ticket.counted_at, m) {
            Ok(()) => Admission::Pending(rx),
            Err(_) => Admission::Ready(None),
        }
    }

    /// Reports events of the client to its owner.
    pub fn count(&self, c: Client, group: Group, what: Counted, n: u32) {
        if n > 0 {
            self.route(c, Message::Count(c, group, what, n));
        }
    }

    /// Lifts the block and throttles of the client of `ip` on every core.
    pub fn remove(&self, c: Client) -> bool {
        let was = self.blocked(c).is_some();
        self.broadcast(Message::Unblock(c), || Message::Unblock(c));
        was
    }

    /// The dynamic blocks in force, as this core knows them (every core knows all).
    pub fn list(&self) -> Vec<Listed> {
        let now = Instant::now();
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.tracker
            .borrow()
            .blocked
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(c, b)| {
                let left = b.until - now;
                Listed {
                    network: c.network(),
                    key: c.0.iter().map(|b| format!("{b:02x}")).collect(),
                    reason: b.reason.label().to_string(),
                    until: (wall + left).as_secs(),
                    remaining_ms: left.as_millis() as u64,
                }
            })
            .collect()
    }

    /// Sends `m` to the client's owner (handled here when that is this core or when its
    /// inbox is full).
    fn route(&self, c: Client, m: Message) {
        let h = owner(c, self.peers);
        if h == self.me {
            self.handle(m);
        } else if let Err(m) = self.links.send(h, m) {
            self.handle(m);
        }
    }

    /// Applies `m` here and sends copies (`make`) to every other core.
    fn broadcast(&self, m: Message, make: impl Fn() -> Message) {
        for peer in 0..self.peers {
            if peer != self.me && self.links.send(peer, make()).is_err() {
                warn!(peer, "could not pass a client block or throttle to a core");
            }
        }
        self.handle(m);
    }

    fn admit(&self, c: Client, group: Group) -> Option<Limit> {
        let s = self.settings();
        let (verdict, d) = self.tracker.borrow_mut().open(c, group, &s, Instant::now());
        self.apply(c, d);
        verdict
    }

    fn readmit(&self, c: Client, group: Group) -> Option<Limit> {
        let s = self.settings();
        let (verdict, d) = self
            .tracker
            .borrow_mut()
            .admit(c, group, &s, Instant::now());
        self.apply(c, d);
        verdict
    }

    fn apply(&self, c: Client, d: Decision) {
        if let Some((limit, until)) = d.throttle {
            self.broadcast(Message::Throttle(c, limit, until), || {
                Message::Throttle(c, limit, until)
            });
        }
        if let Some((block, ttl)) = d.block {
            let client = c.network();
            info!(%client, reason = block.reason.label(), block_secs = ttl.as_secs(), "client blocked dynamically");
            if block.reason == BlockReason::Harvest {
                info!(%client, "directory harvest: client blocked");
            }
            self.metrics
                .shard(self.me)
                .dynamic_block(matches!(block.reason, BlockReason::Harvest));
            self.broadcast(Message::Block(c, block), || Message::Block(c, block));
        }
    }

    fn handle(&self, m: Message) {
        match m {
            Message::Open {
                client,
                group,
                reply,
            } => {
                let v = self.admit(client, group);
                let _ = reply.try_send(v);
            }
            Message::Recheck {
                client,
                group,
                reply,
            } => {
                let v = self.readmit(client, group);
                let _ = reply.try_send(v);
            }
            Message::Close(c) => self.tracker.borrow_mut().close(c),
            Message::Count(c, g, what, n) => {
                let s = self.settings();
                let d = self
                    .tracker
                    .borrow_mut()
                    .count(c, g, what, n, &s, Instant::now());
                self.apply(c, d);
            }
            Message::Throttle(c, l, until) => self.tracker.borrow_mut().throttle(c, l, until),
            Message::Block(c, b) => self.tracker.borrow_mut().block(c, b),
            Message::Unblock(c) => self.tracker.borrow_mut().unblock(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(s: &str) -> Client {
        Client::of(s.parse().unwrap(), 32, 64)
    }

    fn settings() -> Settings {
        Settings {
            throttle: bulwark_policy::Throttle::defaults(),
            harvest: bulwark_policy::Harvest {
                max_unknown: 3,
                window_secs: 600,
                block_secs: 60,
            },
        }
    }

    #[test]
    fn every_core_agrees_on_the_owner() {
        let ip = client("192.0.2.1");
        let v6 = client("::ffff:192.0.2.1");
        assert_eq!(ip, v6, "an IPv4 address and its mapped form are one client");
        assert_eq!(owner(ip, 8), owner(v6, 8));
        assert_eq!(owner(ip, 1), 0);
        let spread: std::collections::HashSet<usize> = (0..64u8)
            .map(|i| owner(Client::of(IpAddr::from([10, 0, 0, i]), 32, 64), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client_for_harvest() {
        assert_eq!(
            client("2001:db8:1:2::1"),
            client("2001:db8:1:2:ffff:eeee:dddd:cccc")
        );
        assert_ne!(client("2001:db8:1:2::1"), client("2001:db8:1:3::1"));
        let mut t = Tracker::new(100);
        let now = Instant::now();
        let s = settings();
        // Rotating through the hosts of one /64 does not reset the count.
        let blocked: Vec<bool> = (0..4u16)
            .map(|i| {
                t.count(
                    client(&format!("2001:db8:1:2::{i:x}")),
                    Group::Unknown,
                    Counted::Unknown,
                    1,
                    &s,
                    now,
                )
                .block
                .is_some()
            })
            .collect();
        assert_eq!(blocked, [false, false, false, true]);
    }

    #[test]
    fn concurrent_connections_are_counted_exactly_and_released() {
        let mut t = Tracker::new(100);
        let s = settings();
        let now = Instant::now();
        let c = client("198.18.0.9");
        for _ in 0..5 {
            assert_eq!(t.open(c, Group::Suspect, &s, now).0, None);
        }
        assert_eq!(
            t.open(c, Group::Suspect, &s, now).0,
            Some(Limit::Connections)
        );
        t.close(c);
        t.close(c);
        assert_eq!(t.open(c, Group::Suspect, &s, now).0, None);
    }

    #[test]
    fn the_connection_rate_is_a_gcra_that_recovers() {
        let mut t = Tracker::new(100);
        let mut s = settings();
        s.throttle.suspect.connections = 0;
        let now = Instant::now();
        let c = client("198.18.0.10");
        // 20 a minute: a burst of 20, then one every 3 s.
        for i in 0..20 {
            assert_eq!(t.open(c, Group::Suspect, &s, now).0, None, "{i}");
        }
        let (v, d) = t.open(c, Group::Suspect, &s, now);
        assert_eq!(v, Some(Limit::ConnectionRate));
        let (limit, until) = d.throttle.unwrap();
        assert_eq!(limit, Limit::ConnectionRate);
        assert_eq!(until, now + Duration::from_secs(3));
        assert_eq!(
            t.open(c, Group::Suspect, &s, now + Duration::from_secs(3))
                .0,
            None
        );
    }

    #[test]
    fn sustained_refusals_block_with_a_doubling_ttl() {
        let mut t = Tracker::new(100);
        let mut s = settings();
        s.throttle.block_after = 3;
        s.throttle.block_secs = 900;
        s.throttle.block_max_secs = 3000;
        let c = client("198.18.0.11");
        let mut now = Instant::now();
        let mut ttls = Vec::new();
        for _ in 0..4 {
            let mut block = None;
            for _ in 0..3 {
                block = t
                    .count(
                        c,
                        Group::Unknown,
                        Counted::Refused(Limit::Recipients),
                        1,
                        &s,
                        now,
                    )
                    .block;
            }
            let (b, ttl) = block.expect("the third refusal blocks");
            assert_eq!(b.reason, BlockReason::Throttle(Limit::Recipients));
            ttls.push(ttl.as_secs());
            now += Duration::from_secs(60);
        }
        assert_eq!(ttls, [900, 1800, 3000, 3000]);
        // Refused recipients are throttled, never blocked.
        for _ in 0..10 {
            let d = t.count(
                c,
                Group::Unknown,
                Counted::Refused(Limit::FailedRecipients),
                1,
                &s,
                now,
            );
            assert!(d.block.is_none());
        }
        // Long after the last block, the doubling starts over.
        now += Duration::from_secs(3000 + 3000 + 1);
        let mut block = None;
        for _ in 0..3 {
            block = t
                .count(
                    c,
                    Group::Unknown,
                    Counted::Refused(Limit::Connections),
                    1,
                    &s,
                    now,
                )
                .block;
        }
        assert_eq!(block.unwrap().1.as_secs(), 900);
    }

    #[test]
    fn recipients_per_hour_throttle_with_a_retry_time() {
        let mut t = Tracker::new(100);
        let s = settings();
        let now = Instant::now();
        let c = client("198.18.0.12");
        // Suspect: 100 an hour; once they are spent, one more every 36 s.
        assert_eq!(
            t.count(c, Group::Suspect, Counted::Recipients, 99, &s, now),
            Decision::default()
        );
        let d = t.count(c, Group::Suspect, Counted::Recipients, 1, &s, now);
        let (limit, until) = d.throttle.unwrap();
        assert_eq!(limit, Limit::Recipients);
        assert_eq!(until, now + Duration::from_secs(36));
        assert!(
            d.block.is_none(),
            "refusals strike, not the throttle itself"
        );
        let later = now + Duration::from_secs(36);
        let d = t.count(c, Group::Suspect, Counted::Recipients, 1, &s, later);
        assert_eq!(d.throttle.unwrap().1, later + Duration::from_secs(36));
        // Unknown clients have no recipient rate by default.
        let u = client("198.18.0.13");
        assert_eq!(
            t.count(u, Group::Unknown, Counted::Recipients, 100_000, &s, now),
            Decision::default()
        );
    }

    #[test]
    fn a_million_distinct_sources_stay_within_the_bound() {
        let mut t = Tracker::new(TRACKED);
        let s = settings();
        let now = Instant::now();
        for i in 0..1_000_000u64 {
            // A fresh /64 each time, and every 5th one blocked and throttled.
            let ip = std::net::Ipv6Addr::from(((0x2001_0db8u128 << 96) | ((i as u128) << 64)) | 1);
            let c = Client::of(IpAddr::V6(ip), 32, 64);
            assert_eq!(t.open(c, Group::Unknown, &s, now).0, None);
            t.count(c, Group::Unknown, Counted::Unknown, 1, &s, now);
            if i % 5 == 0 {
                let b = Block {
                    until: now + Duration::from_secs(600),
                    reason: BlockReason::Harvest,
                };
                t.block(c, b);
                t.throttle(c, Limit::Recipients, now + Duration::from_secs(60));
            }
        }
        assert_eq!(t.len(), (TRACKED, TRACKED, TRACKED));
        // The most recent ones are remembered; the oldest were evicted.
        let last = std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (999_990u128 << 64));
        assert!(
            t.blocked(Client::of(IpAddr::V6(last), 32, 64), now)
                .is_some()
        );
        let first = std::net::Ipv6Addr::from(0x2001_0db8u128 << 96);
        assert!(
            t.blocked(Client::of(IpAddr::V6(first), 32, 64), now)
                .is_none()
        );
    }

    #[test]
    fn only_the_gateways_own_host_is_exempt() {
        assert!(Guard::exempt("127.0.0.1".parse().unwrap()));
        assert!(Guard::exempt("::ffff:127.0.0.1".parse().unwrap()));
        assert!(Guard::exempt("::1".parse().unwrap()));
        assert!(!Guard::exempt("127.0.0.5".parse().unwrap()));
        assert!(!Guard::exempt("198.18.0.1".parse().unwrap()));
    }
}
