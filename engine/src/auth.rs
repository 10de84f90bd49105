//! Sender authentication: SPF, DKIM, DMARC, ARC and iprev with mail-auth, on a thread
//! of its own (mail-auth resolves through hickory on tokio), with one DNS cache shared
//! by every core. A session starts the envelope checks (SPF of MAIL FROM and HELO,
//! iprev) when MAIL FROM is accepted, so they run while the content arrives; at the end
//! of the data it sends a copy of the message for DKIM, ARC and DMARC, and waits for the
//! whole at most `[authentication] timeout`. Nothing here ever blocks a core.

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bulwark_inspect::native::{AuthResult, AuthSummary, DmarcPolicy};
use futures_channel::oneshot;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, IprevOutput, IprevResult,
    MX, MessageAuthenticator, Parameters, RecordSet, ResolverCache, SpfOutput, SpfResult, Txt,
};
use tracing::{debug, warn};

/// The shortest time an answer that a name has no record is kept.
const NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// Entries per record type in the shared cache.
const CACHE_ENTRIES: usize = 65_536;

/// Settings (`[authentication]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The longest the end of data waits for the results.
    pub timeout: Duration,
    /// Our authserv-id in `Authentication-Results` (the server's host name).
    pub authserv_id: String,
}

/// The envelope's results (SPF, iprev), computed from MAIL FROM on.
#[derive(Debug, Clone)]
pub struct EnvelopeAuth {
    spf: SpfOutput,
    spf_helo: SpfOutput,
    iprev: IprevOutput,
}

/// What the session gets at the end of data.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `Authentication-Results: …\r\n`, to stamp.
    pub header: String,
    pub summary: AuthSummary,
}

/// The identity of the envelope the checks are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub ip: IpAddr,
    pub helo: String,
    pub mail_from: String,
}

enum Job {
    Envelope(Identity, oneshot::Sender<EnvelopeAuth>),
    Message {
        who: Identity,
        envelope: Option<Box<EnvelopeAuth>>,
        /// `None`: a message too large to hand over whole (streamed): envelope checks only.
        raw: Option<Vec<u8>>,
        reply: oneshot::Sender<Outcome>,
    },
}

/// Handle to the authentication thread; cloned to every core.
#[derive(Clone)]
pub struct Auth {
    tx: flume::Sender<Job>,
    pub settings: std::sync::Arc<Settings>,
}

/// Envelope checks under way for one transaction.
pub struct Pending {
    who: Identity,
    rx: oneshot::Receiver<EnvelopeAuth>,
}

impl Pending {
    /// Whether these checks are for this envelope (compared without allocating).
    pub fn is_for(&self, ip: IpAddr, helo: &str, mail_from: &str) -> bool {
        self.who.ip == ip && self.who.helo == helo && self.who.mail_from == mail_from
    }
}

impl Auth {
    /// Starts the thread. `nameservers` empty means the system configuration.
    pub fn start(nameservers: &[SocketAddr], settings: Settings) -> anyhow::Result<Auth> {
        // Negative answers are kept a minute at least: most senders' domains publish no
        // DMARC record and many no SPF, and each message would ask again.
        let resolver = crate::deliver::dns::build_resolver_with(
            nameservers,
            Some(&|o: &mut hickory_resolver::config::ResolverOpts| {
                o.cache_size = 65_536;
                o.negative_min_ttl = Some(NEGATIVE_TTL);
                o.positive_min_ttl = Some(Duration::from_secs(60));
                o.timeout = Duration::from_secs(2);
            }),
        )?;
        let settings = std::sync::Arc::new(settings);
        let for_thread = settings.clone();
        let (tx, rx) = flume::unbounded::<Job>();
        std::thread::Builder::new()
            .name("auth".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!("cannot start the authentication runtime: {e}");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                let authserv_id = for_thread.authserv_id.clone();
                let shared = std::rc::Rc::new(Shared {
                    authserv_id,
                    authenticator: MessageAuthenticator(resolver),
                    caches: Caches::new(),
                });
                local.block_on(&rt, async move {
                    while let Ok(job) = rx.recv_async().await {
                        let s = shared.clone();
                        tokio::task::spawn_local(async move { s.run(job).await });
                    }
                });
            })?;
        Ok(Auth { tx, settings })
    }

    /// Starts SPF (MAIL FROM and HELO) and iprev for a transaction.
    pub fn envelope(&self, who: Identity) -> Pending {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Job::Envelope(who.clone(), tx));
        Pending { who, rx }
    }

    /// The results for a complete message, within the deadline; `None` when they did
    /// not come in time (the message goes on without them).
    pub async fn message(
        &self,
        who: Identity,
        pending: Option<Pending>,
        raw: Option<Vec<u8>>,
    ) -> Option<Outcome> {
        let deadline = glommio::timer::sleep(self.settings.timeout);
        let work = async {
            let envelope = match pending {
                Some(p) if p.who == who => p.rx.await.ok().map(Box::new),
                _ => None,
            };
            let (tx, rx) = oneshot::channel();
            self.tx
                .send(Job::Message {
                    who,
                    envelope,
                    raw,
                    reply: tx,
                })
                .ok()?;
            rx.await.ok()
        };
        futures_lite::future::or(work, async {
            deadline.await;
            None
        })
        .await
    }
}

struct Shared {
    authserv_id: String,
    authenticator: MessageAuthenticator,
    caches: Caches,
}

impl Shared {
    async fn run(&self, job: Job) {
        match job {
            Job::Envelope(who, reply) => {
                let e = self.envelope(&who).await;
                let _ = reply.send(e);
            }
            Job::Message {
                who,
                envelope,
                raw,
                reply,
            } => {
                let envelope = match envelope {
                    Some(e) => *e,
                    None => self.envelope(&who).await,
                };
                let out = self.message(&who, &envelope, raw.as_deref()).await;
                let _ = reply.send(out);
            }
        }
    }

    fn params<P>(&self, p: P) -> CachedParams<'_, P> {
        let c = &self.caches;
        Parameters::new(p)
            .with_txt_cache(&c.txt)
            .with_mx_cache(&c.mx)
            .with_ipv4_cache(&c.ipv4)
            .with_ipv6_cache(&c.ipv6)
            .with_ptr_cache(&c.ptr)
    }

    async fn envelope(&self, who: &Identity) -> EnvelopeAuth {
        let a = &self.authenticator;
        let host = "localhost";
        let helo = if who.helo.is_empty() {
            "unknown"
        } else {
            who.helo.as_str()
        };
        let spf_helo = a.verify_spf(self.params(SpfParameters::verify_ehlo(who.ip, helo, host)));
        let iprev = a.verify_iprev(self.params(who.ip));
        let (spf_helo, iprev) = futures_lite::future::zip(spf_helo, iprev).await;
        let spf = if who.mail_from.is_empty() {
            // The null sender: the HELO identity stands for it (RFC 7208 §2.4).
            spf_helo.clone()
        } else {
            a.verify_spf(self.params(SpfParameters::verify_mail_from(
                who.ip,
                helo,
                host,
                &who.mail_from,
            )))
            .await
        };
        EnvelopeAuth {
            spf,
            spf_helo,
            iprev,
        }
    }

    async fn message(&self, who: &Identity, env: &EnvelopeAuth, raw: Option<&[u8]>) -> Outcome {
        let a = &self.authenticator;
        let mut summary = AuthSummary {
            spf: spf_result(env.spf.result()),
            spf_helo: spf_result(env.spf_helo.result()),
            iprev: iprev_result(&env.iprev.result),
            rdns: match (&env.iprev.result, &env.iprev.ptr) {
                (IprevResult::Pass, Some(names)) => names
                    .first()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                    .unwrap_or_default(),
                _ => String::new(),
            },
            ..Default::default()
        };
        let helo = who.helo.as_str();
        let mail_from_domain = who
            .mail_from
            .rsplit_once('@')
            .map_or(helo, |(_, d)| d)
            .to_ascii_lowercase();
        let results = AuthenticationResults::new(&self.authserv_id);
        let Some(msg) = raw.and_then(AuthenticatedMessage::parse) else {
            // Not parseable as a message, or not here whole: the envelope results only.
            let header = results
                .with_spf_ehlo_result(&env.spf_helo, who.ip, helo)
                .with_spf_mailfrom_result(&env.spf, who.ip, &who.mail_from, helo)
                .with_iprev_result(&env.iprev, who.ip)
                .to_header();
            return Outcome { header, summary };
        };
        let dkim = a.verify_dkim(self.params(&msg)).await;
        let arc = a.verify_arc(self.params(&msg)).await;
        let dmarc = a
            .verify_dmarc(self.params(mail_auth::dmarc::verify::DmarcParameters::new(
                &msg,
                &dkim,
                &mail_from_domain,
                &env.spf,
            )))
            .await;
        let from_domain = msg
            .from
            .first()
            .and_then(|f| f.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        summary.dkim_signed = !msg.dkim_headers.is_empty();
        for d in &dkim {
            if *d.result() == DkimResult::Pass
                && let Some(sig) = d.signature()
            {
                let dom = sig.d.to_ascii_lowercase();
                if !from_domain.is_empty()
                    && (from_domain == dom || from_domain.ends_with(&format!(".{dom}")))
                {
                    summary.dkim_author = true;
                }
                if mail_from_domain == dom {
                    summary.dkim_envelope = true;
                }
                summary.dkim_valid.push(dom);
            }
        }
        summary.arc_signed = !msg.as_headers.is_empty();
        summary.arc = match arc.result() {
            DkimResult::Pass => AuthResult::Pass,
            DkimResult::None => AuthResult::None,
            DkimResult::TempError(_) => AuthResult::TempError,
            DkimResult::PermError(_) => AuthResult::PermError,
            DkimResult::Fail(_) | DkimResult::Neutral(_) => AuthResult::Fail,
        };
        summary.dmarc = match dmarc.result() {
            DmarcResult::Pass => AuthResult::Pass,
            DmarcResult::Fail(_) => AuthResult::Fail,
            DmarcResult::TempError(_) => AuthResult::TempError,
            DmarcResult::PermError(_) => AuthResult::PermError,
            DmarcResult::None => AuthResult::None,
        };
        summary.dmarc_domain = dmarc.domain().to_string();
        if dmarc.dmarc_record().is_some() {
            summary.dmarc_policy = Some(match dmarc.policy() {
                Policy::Reject => DmarcPolicy::Reject,
                Policy::Quarantine => DmarcPolicy::Quarantine,
                Policy::None | Policy::Unspecified => DmarcPolicy::None,
            });
        }
        let header = results
            .with_dkim_results(&dkim, msg.from.first().map_or("", String::as_str))
            .with_spf_ehlo_result(&env.spf_helo, who.ip, helo)
            .with_spf_mailfrom_result(&env.spf, who.ip, &who.mail_from, helo)
            .with_arc_result(&arc, who.ip)
            .with_dmarc_result(&dmarc)
            .with_iprev_result(&env.iprev, who.ip)
            .to_header();
        debug!(header = %header.trim_end(), "authentication");
        Outcome { header, summary }
    }
}

fn spf_result(r: SpfResult) -> AuthResult {
    match r {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::SoftFail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

fn iprev_result(r: &IprevResult) -> AuthResult {
    match r {
        IprevResult::Pass => AuthResult::Pass,
        IprevResult::Fail(_) => AuthResult::Fail,
        IprevResult::TempError(_) => AuthResult::TempError,
        IprevResult::PermError(_) => AuthResult::PermError,
        IprevResult::None => AuthResult::None,
    }
}

type CachedParams<'a, P> = Parameters<
    'a,
    P,
    Lru<Box<str>, Txt>,
    Lru<Box<str>, RecordSet<MX>>,
    Lru<Box<str>, RecordSet<Ipv4Addr>>,
    Lru<Box<str>, RecordSet<Ipv6Addr>>,
    Lru<IpAddr, RecordSet<Box<str>>>,
>;

/// The DNS cache every core's lookups share (they all run on the one thread).
struct Caches {
    txt: Lru<Box<str>, Txt>,
    mx: Lru<Box<str>, RecordSet<MX>>,
    ipv4: Lru<Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: Lru<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: Lru<IpAddr, RecordSet<Box<str>>>,
}

impl Caches {
    fn new() -> Caches {
        Caches {
            txt: Lru::new(),
            mx: Lru::new(),
            ipv4: Lru::new(),
            ipv6: Lru::new(),
            ptr: Lru::new(),
        }
    }
}

/// A bounded cache whose entries end at the TTL mail-auth gives them.
struct Lru<K: Hash + Eq, V> {
    map: Mutex<lru::LruCache<K, (V, Instant)>>,
}

impl<K: Hash + Eq, V> Lru<K, V> {
    fn new() -> Self {
        Lru {
            map: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(CACHE_ENTRIES).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for Lru<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut m = self.map.lock().ok()?;
        match m.get(name) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                m.pop(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.lock().ok()?.pop(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        if let Ok(mut m) = self.map.lock() {
            m.put(key, (value, valid_until));
        }
    }
}
