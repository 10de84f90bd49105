//! The admin sockets: every core listens on its own Unix socket
//! (`<admin_dir>/core-N.sock`, mode 0600) for queue operations, one JSON request per
//! line, one JSON response per line. The request runs on the core that owns the
//! messages, between two steps of its work, so nothing crosses cores and nothing locks.
//! `bulwark queue` asks every core and merges the answers; `bulwark quarantine` asks
//! core 0, which keeps the quarantine store's desk.

use std::io::{self, BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::deliver::Deliverer;
use crate::deliver::ops::{Request, Response};
use crate::quarantine::{self, Desk};

/// Either kind of request: they differ by their `op`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum AnyRequest {
    Queue(Request),
    Quarantine(quarantine::Request),
    Clients(ClientRequest),
    Local(LocalRequest),
}

/// Mail the gateway sends itself (`submit`), queued on the core asked.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum LocalRequest {
    Submit {
        /// The envelope sender; empty for a null sender.
        #[serde(default)]
        sender: String,
        recipients: Vec<String>,
        /// The whole message (header and body).
        content: String,
    },
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LocalResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_as: Option<String>,
}

/// The connection tier (`bulwark ip …`, `bulwark-control ip …`, the XDP loader).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ClientRequest {
    /// The dynamic blocks in force (every core knows all of them).
    DynamicList,
    /// Lifts the block and throttles of the client `address` belongs to, on every core.
    DynamicRemove { address: String },
    /// What the connection tier would decide about `address`, step by step.
    Check { address: String },
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ClientResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub blocks: Vec<crate::reputation::guard::Listed>,
    /// Whether a block was in force (`dynamic-remove`).
    #[serde(default)]
    pub removed: bool,
    /// `check`: the decision and the steps that led to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
}

/// What the connection tier would decide about an address, and why.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub address: String,
    /// The client it counts as (`192.0.2.7/32`, `2001:db8::/64`).
    pub client: String,
    /// approved, blocked, drop, early_talker, dynamic_block, dnsbl, dnsbl_dynamic,
    /// throttled or accepted.
    pub verdict: String,
    /// The reply the client would get (empty when accepted or dropped).
    pub reply: String,
    /// The sender group whose throttles apply (approved, suspect, unknown, exempt).
    pub group: String,
    /// Each step in evaluation order: its name and what it found.
    pub steps: Vec<(String, String)>,
}

fn parse_address(address: &str) -> Result<std::net::IpAddr, String> {
    // An address, or the network of a listed block (`192.0.2.0/24`).
    let text = address.split('/').next().unwrap_or_default();
    text.trim()
        .parse::<std::net::IpAddr>()
        .map_err(|_| format!("address: {address:?} is not an IP address"))
}

/// Walks the connection tier for `ip` as a connection from it would, without counting
/// anything: IP lists, pregreet memory, dynamic blocks, DNS lists, throttles.
async fn check(core: &Rc<crate::runtime::Core>, address: &str, ip: std::net::IpAddr) -> Check {
    use crate::reputation::guard::{BlockReason, Group, Guard};
    let snap = core.policy.current();
    let ips = &snap.policy().ips;
    let client = core.guard.client(ip);
    let mut c = Check {
        address: address.to_string(),
        client: client.network(),
        ..Default::default()
    };
    let find = |list: &[bulwark_policy::ArchivedCidr]| {
        list.iter().find(|n| n.contains(ip)).map(|n| {
            bulwark_policy::Cidr {
                addr: n.addr,
                prefix: n.prefix,
            }
            .to_string()
        })
    };
    let step = |c: &mut Check, name: &str, found: String| c.steps.push((name.into(), found));
    if let Some(n) = find(&ips.allow) {
        step(
            &mut c,
            "approved_ips",
            format!("listed in {n}: every later check is skipped"),
        );
        c.verdict = "approved".into();
        c.group = "approved".into();
        return c;
    }
    step(&mut c, "approved_ips", "not listed".into());
    if let Some(n) = find(&ips.block) {
        step(&mut c, "blocked_ips", format!("listed in {n}"));
        c.verdict = "blocked".into();
        c.reply = "554 5.7.1 Connection refused: your address is blocked by policy".into();
        return c;
    }
    if let Some(n) = find(&ips.drop) {
        step(
            &mut c,
            "blocked_ips",
            format!(
                "listed in {n} to drop: the XDP program drops its packets (refused at accept with 554 5.7.1 where it is not loaded)"
            ),
        );
        c.verdict = "drop".into();
        return c;
    }
    step(&mut c, "blocked_ips", "not listed".into());
    if core.pregreet.is_offender(ip) {
        step(
            &mut c,
            "pregreet",
            "talked before the greeting not long ago".into(),
        );
        c.verdict = "early_talker".into();
        c.reply = "554 5.7.1 Connection refused: you talked before the greeting".into();
        return c;
    }
    if let Some(b) = core.guard.blocked(client) {
        let left = b.until.saturating_duration_since(std::time::Instant::now());
        step(
            &mut c,
            "dynamic_block",
            format!(
                "blocked ({}) for {} s more",
                b.reason.label(),
                left.as_secs()
            ),
        );
        c.verdict = "dynamic_block".into();
        c.reply = match b.reason {
            BlockReason::Harvest => {
                "421 4.7.0 Too many unknown recipients from your address; try again later"
            }
            BlockReason::Throttle(_) => {
                "421 4.7.0 Your address is blocked for a while: it kept exceeding its limits"
            }
        }
        .into();
        return c;
    }
    step(&mut c, "dynamic_block", "none".into());
    let mut group = Group::Unknown;
    match core.dns_lists() {
        None => step(&mut c, "dns_lists", "no zones configured".into()),
        Some(lists) => {
            let deadline = std::time::Instant::now() + lists.settings.timeout;
            let outcome = lists.check(ip, deadline).await;
            let zones: Vec<String> = lists
                .settings
                .zones
                .iter()
                .zip(outcome.results.iter())
                .map(|(z, r)| format!("{} (weight {}): {r:?}", z.name, z.weight))
                .collect();
            let found = format!("score {}; {}", outcome.score, zones.join(", "));
            use crate::reputation::dnsbl::Verdict;
            match outcome.verdict(&lists.settings, ip) {
                Verdict::Refuse(reply) => {
                    step(&mut c, "dns_lists", found);
                    c.verdict = "dnsbl".into();
                    c.reply = reply;
                    return c;
                }
                Verdict::Defer(reply) => {
                    step(&mut c, "dns_lists", found);
                    c.verdict = "dnsbl_dynamic".into();
                    c.reply = reply;
                    return c;
                }
                Verdict::Allow => {
                    step(
                        &mut c,
                        "dns_lists",
                        format!("{found}: allowed, throttles skipped"),
                    );
                    c.verdict = "accepted".into();
                    c.group = "approved".into();
                    return c;
                }
                Verdict::Pass => {
                    if outcome.score > 0 {
                        group = Group::Suspect;
                    }
                    step(&mut c, "dns_lists", found);
                }
            }
        }
    }
    if Guard::exempt(ip) {
        step(
            &mut c,
            "throttles",
            "the gateway's own host is never throttled".into(),
        );
        c.verdict = "accepted".into();
        c.group = "exempt".into();
        return c;
    }
    c.group = match group {
        Group::Suspect => "suspect",
        Group::Unknown => "unknown",
    }
    .into();
    let l = core.guard.limits(group);
    let limits = format!(
        "{} group: {} connections at once, {}/min, {} messages a session, {} recipients/h, {} refused recipients/h, {} protocol errors/h (0: no limit)",
        c.group,
        l.connections,
        l.connections_per_minute,
        l.messages_per_session,
        l.recipients_per_hour,
        l.failed_recipients_per_hour,
        l.protocol_errors_per_hour
    );
    if let Some(limit) = core
        .guard
        .throttled_at_connect(client)
        .or_else(|| core.guard.throttled_at_mail(client))
    {
        step(
            &mut c,
            "throttles",
            format!("{limits}; throttled now by {}", limit.label()),
        );
        c.verdict = "throttled".into();
        c.reply = limit.reply().into();
        return c;
    }
    step(&mut c, "throttles", limits);
    c.verdict = "accepted".into();
    c
}

async fn clients(core: &Rc<crate::runtime::Core>, req: ClientRequest) -> ClientResponse {
    let guard = &core.guard;
    match req {
        ClientRequest::Check { address } => match parse_address(&address) {
            Ok(ip) => ClientResponse {
                ok: true,
                check: Some(check(core, &address, ip).await),
                ..Default::default()
            },
            Err(e) => ClientResponse {
                ok: false,
                error: Some(e),
                ..Default::default()
            },
        },
        ClientRequest::DynamicList => ClientResponse {
            ok: true,
            blocks: guard.list(),
            ..Default::default()
        },
        ClientRequest::DynamicRemove { address } => match parse_address(&address) {
            Ok(ip) => {
                let c = guard.client(ip);
                let removed = guard.remove(c);
                info!(client = %c.network(), removed, "dynamic block lifted by an operator");
                ClientResponse {
                    ok: true,
                    removed,
                    ..Default::default()
                }
            }
            Err(e) => ClientResponse {
                ok: false,
                error: Some(e),
                ..Default::default()
            },
        },
    }
}

/// The longest request line accepted.
const MAX_REQUEST: usize = 1 << 20;

pub fn socket_path(dir: &Path, core: usize) -> PathBuf {
    dir.join(format!("core-{core}.sock"))
}

/// Starts this core's admin socket.
pub fn serve(
    core: usize,
    dir: &Path,
    deliverer: Rc<Deliverer>,
    desk: Option<Rc<Desk>>,
    engine: Rc<crate::runtime::Core>,
) -> io::Result<()> {
    if !dir.exists() {
        // A directory of our own is closed to others; an existing one is left as it is.
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let path = socket_path(dir, core);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    info!(core, socket = %path.display(), "admin socket ready");
    glommio::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let d = deliverer.clone();
                    let q = desk.clone();
                    let g = engine.clone();
                    glommio::spawn_local(async move {
                        if let Err(e) = session(stream, d, q, g).await {
                            warn!(core, "admin session: {e}");
                        }
                    })
                    .detach();
                }
                Err(e) => {
                    warn!(core, "admin accept failed: {e}");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
    .detach();
    Ok(())
}

async fn session(
    mut stream: UnixStream,
    deliverer: Rc<Deliverer>,
    desk: Option<Rc<Desk>>,
    core: Rc<crate::runtime::Core>,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = memchr::memchr(b'\n', &buf) {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let response = match serde_json::from_slice::<AnyRequest>(&line) {
                Ok(AnyRequest::Queue(req)) => serde_json::to_vec(&deliverer.handle(req)),
                Ok(AnyRequest::Quarantine(req)) => match &desk {
                    Some(d) => serde_json::to_vec(&d.handle(req).await),
                    None => serde_json::to_vec(&quarantine::Response {
                        error: Some("the quarantine is kept by core 0".into()),
                        ..Default::default()
                    }),
                },
                Ok(AnyRequest::Clients(req)) => serde_json::to_vec(&clients(&core, req).await),
                Ok(AnyRequest::Local(LocalRequest::Submit {
                    sender,
                    recipients,
                    content,
                })) => serde_json::to_vec(&match deliverer
                    .submit(&sender, &recipients, &content)
                    .await
                {
                    Ok(id) => LocalResponse {
                        ok: true,
                        queued_as: Some(id),
                        ..Default::default()
                    },
                    Err(e) => LocalResponse {
                        error: Some(e),
                        ..Default::default()
                    },
                }),
                Err(_) => serde_json::to_vec(&Response {
                    ok: false,
                    error: Some(format!(
                        "bad request: {}",
                        String::from_utf8_lossy(&line).trim_end()
                    )),
                    ..Default::default()
                }),
            };
            let mut out = response.map_err(io::Error::other)?;
            out.push(b'\n');
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
        if buf.len() > MAX_REQUEST {
            let out = b"{\"ok\":false,\"error\":\"request line too long\"}\n";
            stream.write_all(out).await?;
            return Ok(());
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no running engine answered on {0} (is `bulwark serve` running with this configuration?)"
    )]
    NoEngine(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("{0}: bad response: {1}")]
    Protocol(PathBuf, String),
}

/// One request on one socket: `Ok(None)` when no engine listens there (the socket is
/// gone or refuses), else the response.
fn ask_socket<A: serde::de::DeserializeOwned>(
    path: &Path,
    line: &[u8],
) -> Result<Option<A>, ClientError> {
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(ClientError::Io(path.to_path_buf(), e)),
    };
    let io_err = |e| ClientError::Io(path.to_path_buf(), e);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io_err)?;
    stream.write_all(line).map_err(io_err)?;
    let mut reader = io::BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).map_err(io_err)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| ClientError::Protocol(path.to_path_buf(), e.to_string()))
}

fn request_line<Q: serde::Serialize>(dir: &Path, req: &Q) -> Result<Vec<u8>, ClientError> {
    let mut line =
        serde_json::to_vec(req).map_err(|e| ClientError::Protocol(dir.into(), e.to_string()))?;
    line.push(b'\n');
    Ok(line)
}

/// Sends `req` to one core's socket and returns its response.
pub fn ask_core<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
    dir: &Path,
    core: usize,
    req: &Q,
) -> Result<A, ClientError> {
    let line = request_line(dir, req)?;
    ask_socket(&socket_path(dir, core), &line)?.ok_or_else(|| ClientError::NoEngine(dir.into()))
}

/// Sends `req` to every core's socket in `dir` and returns each core's response.
/// Sockets left by an engine that is gone (connection refused) are skipped.
pub fn ask_all(dir: &Path, req: &Request) -> Result<Vec<Response>, ClientError> {
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ClientError::Io(dir.to_path_buf(), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("core-") && n.ends_with(".sock"))
        })
        .collect();
    sockets.sort();
    let line = request_line(dir, req)?;
    let mut out = Vec::new();
    for path in sockets {
        if let Some(r) = ask_socket(&path, &line)? {
            out.push(r);
        }
    }
    if out.is_empty() {
        return Err(ClientError::NoEngine(dir.to_path_buf()));
    }
    Ok(out)
}
