//! DNS for delivery. hickory-resolver runs on a tokio runtime of its own, on a side
//! thread; executors send it queries over a channel and await the answer, so a lookup
//! never blocks a core.

use std::net::{IpAddr, SocketAddr};

use futures_channel::oneshot;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use tracing::{debug, warn};

/// What an MX query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// Exchange host names, most preferred first.
    Hosts(Vec<String>),
    /// RFC 7505: the domain accepts no mail.
    NullMx,
    /// No MX records: deliver to the domain's own address (RFC 5321 §5.1).
    Implicit,
    /// The domain does not exist.
    NxDomain,
}

/// A lookup that could not be answered now (timeout, SERVFAIL): try again later.
#[derive(Debug, Clone, thiserror::Error)]
#[error("DNS lookup failed: {0}")]
pub struct TempFailure(pub String);

/// What an A query for a DNS list entry found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListAnswer {
    /// The name does not exist (or has no A record): not listed.
    NotListed,
    /// Its A records, and their smallest TTL in seconds.
    Listed(Vec<std::net::Ipv4Addr>, u32),
}

enum Query {
    Mx(String, oneshot::Sender<Result<MxAnswer, TempFailure>>),
    Ip(String, oneshot::Sender<Result<Vec<IpAddr>, TempFailure>>),
    List(String, oneshot::Sender<Result<ListAnswer, TempFailure>>),
}

/// Handle to the resolver thread; clone it to every core.
#[derive(Clone)]
pub struct Dns {
    tx: flume::Sender<Query>,
}

impl Dns {
    /// Starts the resolver thread. `nameservers` empty means the system configuration.
    pub fn start(nameservers: &[SocketAddr]) -> anyhow::Result<Dns> {
        let resolver = build_resolver(nameservers)?;
        let (tx, rx) = flume::unbounded::<Query>();
        std::thread::Builder::new()
            .name("dns".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!("cannot start the DNS runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    while let Ok(q) = rx.recv_async().await {
                        let r = resolver.clone();
                        tokio::spawn(async move { answer(&r, q).await });
                    }
                });
            })?;
        Ok(Dns { tx })
    }

    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, TempFailure> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Query::Mx(domain.to_string(), tx))
            .map_err(|_| TempFailure("resolver thread is gone".into()))?;
        rx.await
            .map_err(|_| TempFailure("resolver dropped the query".into()))?
    }

    /// The A records of a DNS list entry (`4.3.2.1.zone.example`).
    pub async fn list(&self, name: &str) -> Result<ListAnswer, TempFailure> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Query::List(name.to_string(), tx))
            .map_err(|_| TempFailure("resolver thread is gone".into()))?;
        rx.await
            .map_err(|_| TempFailure("resolver dropped the query".into()))?
    }

    /// A and AAAA addresses of a host name. An empty list means the name has none.
    pub async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, TempFailure> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Query::Ip(host.to_string(), tx))
            .map_err(|_| TempFailure("resolver thread is gone".into()))?;
        rx.await
            .map_err(|_| TempFailure("resolver dropped the query".into()))?
    }
}

fn build_resolver(nameservers: &[SocketAddr]) -> anyhow::Result<TokioResolver> {
    build_resolver_with(nameservers, None)
}

/// A resolver for `nameservers` (the system configuration when empty), with `opts`
/// changed from the defaults when given.
pub(crate) fn build_resolver_with(
    nameservers: &[SocketAddr],
    opts: Option<&dyn Fn(&mut hickory_resolver::config::ResolverOpts)>,
) -> anyhow::Result<TokioResolver> {
    let provider = TokioRuntimeProvider::default();
    if nameservers.is_empty() {
        let mut b = Resolver::builder(provider)?;
        if let Some(f) = opts {
            f(b.options_mut());
        }
        return Ok(b.build()?);
    }
    let servers = nameservers
        .iter()
        .map(|sa| {
            let conn = |p: ProtocolConfig| {
                let mut c = ConnectionConfig::new(p);
                c.port = sa.port();
                c
            };
            NameServerConfig::new(
                sa.ip(),
                true,
                vec![conn(ProtocolConfig::Udp), conn(ProtocolConfig::Tcp)],
            )
        })
        .collect();
    let mut b = Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider);
    if let Some(f) = opts {
        f(b.options_mut());
    }
    Ok(b.build()?)
}

/// Absolute form, so no search domain is ever appended.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

async fn answer(r: &TokioResolver, q: Query) {
    match q {
        Query::Mx(domain, tx) => {
            let result = match r.mx_lookup(fqdn(&domain)).await {
                Ok(lookup) => {
                    let mut mx: Vec<(u16, String)> = lookup
                        .answers()
                        .iter()
                        .filter_map(|rec| match &rec.data {
                            RData::MX(m) => Some((m.preference, m.exchange.to_ascii())),
                            _ => None,
                        })
                        .collect();
                    mx.sort();
                    if mx.len() == 1 && (mx[0].1 == "." || mx[0].1.is_empty()) {
                        Ok(MxAnswer::NullMx)
                    } else if mx.is_empty() {
                        Ok(MxAnswer::Implicit)
                    } else {
                        Ok(MxAnswer::Hosts(
                            mx.into_iter()
                                .map(|(_, h)| h.trim_end_matches('.').to_string())
                                .collect(),
                        ))
                    }
                }
                Err(e) if e.is_nx_domain() => Ok(MxAnswer::NxDomain),
                Err(e) if e.is_no_records_found() => Ok(MxAnswer::Implicit),
                Err(e) => Err(TempFailure(e.to_string())),
            };
            debug!(%domain, ?result, "MX lookup");
            let _ = tx.send(result);
        }
        Query::Ip(host, tx) => {
            let result = match r.lookup_ip(fqdn(&host)).await {
                Ok(l) => Ok(l.iter().collect()),
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
                Err(e) => Err(TempFailure(e.to_string())),
            };
            debug!(%host, ?result, "address lookup");
            let _ = tx.send(result);
        }
        Query::List(name, tx) => {
            use hickory_resolver::proto::rr::RecordType;
            let result = match r.lookup(fqdn(&name), RecordType::A).await {
                Ok(l) => {
                    let mut ttl = u32::MAX;
                    let ips: Vec<std::net::Ipv4Addr> = l
                        .answers()
                        .iter()
                        .filter_map(|rec| match &rec.data {
                            RData::A(a) => {
                                ttl = ttl.min(rec.ttl);
                                Some(a.0)
                            }
                            _ => None,
                        })
                        .collect();
                    if ips.is_empty() {
                        Ok(ListAnswer::NotListed)
                    } else {
                        Ok(ListAnswer::Listed(ips, ttl))
                    }
                }
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(ListAnswer::NotListed),
                Err(e) => Err(TempFailure(e.to_string())),
            };
            debug!(%name, ?result, "DNS list lookup");
            let _ = tx.send(result);
        }
    }
}
