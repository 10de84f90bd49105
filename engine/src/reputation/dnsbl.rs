//! DNS reputation (DNSBL / DNSWL), in the manner of postscreen's `postscreen_dnsbl_sites`:
//! every zone is asked about the client at once, each listing that passes the zone's
//! answer filter adds the zone's weight, and the sum decides. Answers in
//! `127.255.255.0/24` are the list refusing to answer (quota, public resolver), never a
//! listing: counted, and the zone is left out of the sum. A zone that does not answer
//! within the deadline is left out too: DNS trouble never blocks mail.
//!
//! Each core keeps its own cache (positive answers for their TTL clamped to [60 s, 1 h],
//! negative ones for `negative_ttl`) and merges queries in flight for the same key.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use crate::deliver::dns::{Dns, ListAnswer};

/// What a listing means, as the product has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListClass {
    /// `550 5.7.1`, the zone named.
    Standard,
    /// `450 4.7.1`: a briefly compromised server re-queues.
    Dynamic,
}

pub use bulwark_policy::dnsbl::AnswerFilter;

/// One DNS list.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Lower case, without a trailing dot.
    pub name: String,
    /// Added to the score when the client is listed; negative for allow lists.
    pub weight: i32,
    pub class: ListClass,
    /// An answer counts when one of these matches (none: any answer outside
    /// `127.255.255.0/24`).
    pub answers: Vec<AnswerFilter>,
}

/// `[reputation]` settings of the DNS lists.
#[derive(Debug, Clone)]
pub struct Settings {
    pub zones: Vec<Zone>,
    /// Score from which a client is refused.
    pub threshold: i32,
    /// Score at or below which (when negative) a client skips the later tests.
    pub allow_threshold: i32,
    /// How long the lookups may take, from the connection's accept.
    pub timeout: Duration,
    /// How long "not listed" is remembered.
    pub negative_ttl: Duration,
    /// Cache entries per core (one per zone and client).
    pub cache_entries: usize,
}

impl Settings {
    /// The lists of a policy (its zones and thresholds) with this configuration's
    /// timing and cache size. A zone whose definition does not parse is left out (the
    /// control service and the configuration check refuse them before).
    pub fn with_policy(&self, p: &bulwark_policy::ArchivedDnsblPolicy) -> Settings {
        let zones = p
            .zones
            .iter()
            .filter_map(|z| {
                let answers: Result<Vec<AnswerFilter>, String> = z
                    .answers
                    .iter()
                    .map(|a| AnswerFilter::parse(a.as_str()))
                    .collect();
                match answers {
                    Ok(answers) => Some(Zone {
                        name: z.zone.as_str().to_string(),
                        weight: z.weight.to_native(),
                        class: if z.dynamic {
                            ListClass::Dynamic
                        } else {
                            ListClass::Standard
                        },
                        answers,
                    }),
                    Err(e) => {
                        tracing::warn!(zone = z.zone.as_str(), "DNS list left out: {e}");
                        None
                    }
                }
            })
            .collect();
        Settings {
            zones,
            threshold: p.threshold.to_native(),
            allow_threshold: p.allow_threshold.to_native(),
            ..self.clone()
        }
    }

    /// The zones and thresholds as the policy holds them.
    pub fn to_policy(&self) -> bulwark_policy::DnsblPolicy {
        bulwark_policy::DnsblPolicy {
            zones: self
                .zones
                .iter()
                .map(|z| bulwark_policy::DnsblZone {
                    zone: z.name.clone(),
                    weight: z.weight,
                    dynamic: z.class == ListClass::Dynamic,
                    answers: z.answers.iter().map(|a| a.text()).collect(),
                })
                .collect(),
            threshold: self.threshold,
            allow_threshold: self.allow_threshold,
        }
    }
}

/// A listing's TTL is kept within these bounds.
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(3600);

/// What one zone said about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneResult {
    /// Listed with an answer that passes the zone's filter.
    Listed,
    NotListed,
    /// The list refused to answer (`127.255.255.x`) or answered outside 127/8.
    Refused,
    /// No answer (DNS failure or past the deadline).
    Failed,
}

/// The sum over every zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub score: i32,
    /// Zones that listed the client with a positive weight, with their class.
    pub listed: Vec<(String, ListClass)>,
    /// Per zone, in configuration order.
    pub results: Vec<ZoneResult>,
}

/// The decision the sum leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// At or past the threshold with a standard list among the listings: `550 5.7.1`.
    Refuse(String),
    /// At or past the threshold on dynamic lists only: `450 4.7.1`.
    Defer(String),
    /// At or below a negative allow threshold: later tests are skipped.
    Allow,
    Pass,
}

impl Outcome {
    pub fn verdict(&self, s: &Settings, ip: IpAddr) -> Verdict {
        if s.allow_threshold < 0 && self.score <= s.allow_threshold {
            return Verdict::Allow;
        }
        if self.score < s.threshold || self.listed.is_empty() {
            return Verdict::Pass;
        }
        let standard: Vec<&str> = self
            .listed
            .iter()
            .filter(|(_, c)| *c == ListClass::Standard)
            .map(|(z, _)| z.as_str())
            .collect();
        if let Some(zone) = standard.first() {
            Verdict::Refuse(format!(
                "550 5.7.1 Service unavailable; client [{ip}] blocked using {zone}"
            ))
        } else {
            Verdict::Defer(format!(
                "450 4.7.1 Service unavailable; client [{ip}] listed by {}, try again later",
                self.listed[0].0
            ))
        }
    }
}

/// The name to ask `zone` about `ip`: reversed octets (IPv4) or nibbles (IPv6).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(64 + zone.len());
            for b in v6.octets().iter().rev() {
                s.push(char::from_digit((b & 0xf) as u32, 16).unwrap_or('0'));
                s.push('.');
                s.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
                s.push('.');
            }
            s.push_str(zone);
            s
        }
    }
}

/// `::ffff:a.b.c.d` is IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What one zone's answer counts as.
fn classify(zone: &Zone, answer: &ListAnswer) -> ZoneResult {
    let ListAnswer::Listed(ips, _) = answer else {
        return ZoneResult::NotListed;
    };
    // 127.255.255.0/24: the list's way of refusing; anything outside 127/8 is not a
    // list's answer at all (a resolver that rewrites NXDOMAIN, say).
    if ips
        .iter()
        .any(|ip| ip.octets()[0] != 127 || ip.octets()[..3] == [127, 255, 255])
    {
        return ZoneResult::Refused;
    }
    let counts =
        |ip: &Ipv4Addr| zone.answers.is_empty() || zone.answers.iter().any(|f| f.matches(*ip));
    if ips.iter().any(counts) {
        ZoneResult::Listed
    } else {
        ZoneResult::NotListed
    }
}

type Key = (usize, IpAddr);

/// One core's DNS list cache and the lookups it has in flight.
pub struct Lists {
    pub settings: Settings,
    /// Each zone's counter slot in the metrics.
    pub slots: Vec<Option<usize>>,
    dns: Dns,
    cache: RefCell<lru::LruCache<Key, (ZoneResult, Instant)>>,
    in_flight: RefCell<HashMap<Key, Vec<oneshot::Sender<ZoneResult>>>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    core: usize,
}

impl Lists {
    pub fn new(
        settings: Settings,
        dns: Dns,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        core: usize,
    ) -> Rc<Lists> {
        let cap = NonZeroUsize::new(settings.cache_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        let slots = settings
            .zones
            .iter()
            .map(|z| metrics.dnsbl_slot(&z.name))
            .collect();
        Rc::new(Lists {
            settings,
            slots,
            dns,
            cache: RefCell::new(lru::LruCache::new(cap)),
            in_flight: RefCell::new(HashMap::new()),
            metrics,
            core,
        })
    }

    /// Asks every zone about `ip` at once; a zone without an answer by `deadline` is
    /// left out.
    pub async fn check(self: &Rc<Self>, ip: IpAddr, deadline: Instant) -> Outcome {
        let ip = canonical(ip);
        let tasks: Vec<_> = (0..self.settings.zones.len())
            .map(|i| {
                let me = self.clone();
                glommio::spawn_local(async move { me.zone(i, ip, deadline).await }).detach()
            })
            .collect();
        let mut out = Outcome {
            score: 0,
            listed: Vec::new(),
            results: Vec::with_capacity(tasks.len()),
        };
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.unwrap_or(ZoneResult::Failed);
            let zone = &self.settings.zones[i];
            if r == ZoneResult::Listed {
                out.score += zone.weight;
                if zone.weight > 0 {
                    out.listed.push((zone.name.clone(), zone.class));
                }
            }
            out.results.push(r);
        }
        out
    }

    async fn zone(self: Rc<Self>, i: usize, ip: IpAddr, deadline: Instant) -> ZoneResult {
        let key = (i, ip);
        let now = Instant::now();
        let cached = self.cache.borrow_mut().get(&key).cloned();
        if let Some((r, until)) = cached
            && until > now
        {
            self.cache_counted(0);
            return r;
        }
        // Already being asked: wait for that answer.
        let waiting = {
            let mut flights = self.in_flight.borrow_mut();
            match flights.get_mut(&key) {
                Some(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                None => {
                    flights.insert(key, Vec::new());
                    None
                }
            }
        };
        let left = deadline.saturating_duration_since(now);
        if let Some(rx) = waiting {
            self.cache_counted(2);
            return futures_lite::future::or(
                async { rx.await.unwrap_or(ZoneResult::Failed) },
                async {
                    glommio::timer::sleep(left).await;
                    ZoneResult::Failed
                },
            )
            .await;
        }
        self.cache_counted(1);
        let name = query_name(ip, &self.settings.zones[i].name);
        // The lookup itself is not cut short by this client's deadline: its answer is
        // cached for the next one, and other clients may be waiting on it.
        let me = self.clone();
        let lookup = glommio::spawn_local(async move {
            let answer = me.dns.list(&name).await;
            let zone = &me.settings.zones[i];
            let (result, ttl) = match &answer {
                Ok(a @ ListAnswer::Listed(_, ttl)) => (
                    classify(zone, a),
                    Duration::from_secs(*ttl as u64).clamp(MIN_TTL, MAX_TTL),
                ),
                Ok(ListAnswer::NotListed) => (ZoneResult::NotListed, me.settings.negative_ttl),
                // A failure is not remembered long: the next client asks again soon.
                Err(_) => (ZoneResult::Failed, Duration::from_secs(5)),
            };
            me.cache
                .borrow_mut()
                .put(key, (result.clone(), Instant::now() + ttl));
            if let Some(waiters) = me.in_flight.borrow_mut().remove(&key) {
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
            result
        })
        .detach();
        futures_lite::future::or(
            async { lookup.await.unwrap_or(ZoneResult::Failed) },
            async {
                glommio::timer::sleep(left).await;
                ZoneResult::Failed
            },
        )
        .await
    }

    /// Counts an answer: 0 from the cache, 1 asked, 2 joined to a lookup in flight.
    fn cache_counted(&self, how: usize) {
        self.metrics.shard(self.core).dnsbl_cache[how].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_filters() {
        let f = AnswerFilter::parse("127.0.0.[2..11]").unwrap();
        assert!(f.matches(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(f.matches(Ipv4Addr::new(127, 0, 0, 11)));
        assert!(!f.matches(Ipv4Addr::new(127, 0, 0, 12)));
        let f = AnswerFilter::parse("127.0.0.[2;4;8]").unwrap();
        assert!(f.matches(Ipv4Addr::new(127, 0, 0, 4)));
        assert!(!f.matches(Ipv4Addr::new(127, 0, 0, 3)));
        let f = AnswerFilter::parse("127.0.*.&4").unwrap();
        assert!(f.matches(Ipv4Addr::new(127, 0, 9, 6)));
        assert!(!f.matches(Ipv4Addr::new(127, 0, 9, 3)));
        for bad in [
            "127.0.0",
            "127.0.0.[5..2]",
            "127.&1.0.0",
            "127.0.0.x",
            "127.0.0.256",
        ] {
            assert!(AnswerFilter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_names() {
        let v4: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(query_name(v4, "bl.test"), "99.2.0.192.bl.test");
        let mapped: IpAddr = "::ffff:192.0.2.99".parse().unwrap();
        assert_eq!(query_name(mapped, "bl.test"), "99.2.0.192.bl.test");
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            query_name(v6, "bl.test"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
        );
    }

    #[test]
    fn refusals_and_strange_answers_are_not_listings() {
        let zone = Zone {
            name: "bl.test".into(),
            weight: 1,
            class: ListClass::Standard,
            answers: vec![AnswerFilter::parse("127.0.0.[2..11]").unwrap()],
        };
        let a = |ips: &[[u8; 4]]| {
            ListAnswer::Listed(ips.iter().map(|o| Ipv4Addr::from(*o)).collect(), 300)
        };
        assert_eq!(classify(&zone, &a(&[[127, 0, 0, 2]])), ZoneResult::Listed);
        assert_eq!(
            classify(&zone, &a(&[[127, 0, 0, 20]])),
            ZoneResult::NotListed
        );
        assert_eq!(
            classify(&zone, &a(&[[127, 255, 255, 254]])),
            ZoneResult::Refused
        );
        assert_eq!(classify(&zone, &a(&[[10, 0, 0, 1]])), ZoneResult::Refused);
        assert_eq!(
            classify(&zone, &ListAnswer::NotListed),
            ZoneResult::NotListed
        );
    }

    #[test]
    fn verdicts_by_score_and_class() {
        let s = Settings {
            zones: Vec::new(),
            threshold: 2,
            allow_threshold: -1,
            timeout: Duration::from_secs(1),
            negative_ttl: Duration::from_secs(60),
            cache_entries: 10,
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let o = |score, listed: Vec<(&str, ListClass)>| Outcome {
            score,
            listed: listed
                .into_iter()
                .map(|(z, c)| (z.to_string(), c))
                .collect(),
            results: Vec::new(),
        };
        assert_eq!(
            o(1, vec![("a.test", ListClass::Standard)]).verdict(&s, ip),
            Verdict::Pass
        );
        assert!(matches!(
            o(2, vec![("dyn.test", ListClass::Dynamic), ("a.test", ListClass::Standard)]).verdict(&s, ip),
            Verdict::Refuse(r) if r == "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using a.test"
        ));
        assert!(matches!(
            o(3, vec![("dyn.test", ListClass::Dynamic)]).verdict(&s, ip),
            Verdict::Defer(r) if r.starts_with("450 4.7.1")
        ));
        assert_eq!(o(-1, vec![]).verdict(&s, ip), Verdict::Allow);
    }
}
