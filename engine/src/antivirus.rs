//! Attachments and viruses in the engine: the built-in scan (archive walk and
//! signatures, `bulwark_inspect::malware`) runs on the core's blocking thread under a
//! deadline, never on the core; clamd is asked over its INSTREAM protocol from the core
//! itself (asynchronous sockets), with a pool of `IDSESSION` connections per core.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark_inspect::attach::Limits;
use bulwark_inspect::av::Antivirus;
use bulwark_inspect::inspector::External;
use bulwark_inspect::malware;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

/// Scratch spaces of the built-in engine, shared by a core's blocking thread(s).
pub type ScratchPool = Arc<Mutex<Vec<bulwark_inspect::av::AvScratch>>>;

/// Whether a message may carry attachments: its top-level type is not text (multipart,
/// a message, a file). A plain text message is scanned on the core (a lookup of one
/// part); anything else goes to the blocking thread.
pub fn may_carry_attachments(raw: &[u8]) -> bool {
    let head_end = memchr::memmem::find(raw, b"\r\n\r\n")
        .or_else(|| memchr::memmem::find(raw, b"\n\n"))
        .unwrap_or(raw.len());
    let head = &raw[..head_end];
    let mut at = 0;
    while at < head.len() {
        let line_end = memchr::memchr(b'\n', &head[at..]).map_or(head.len(), |p| at + p);
        let line = &head[at..line_end];
        if line.len() >= 13 && line[..13].eq_ignore_ascii_case(b"content-type:") {
            let value = line[13..].trim_ascii();
            return !(value.len() >= 5 && value[..5].eq_ignore_ascii_case(b"text/"));
        }
        at = line_end + 1;
    }
    false
}

/// How a core scans: the deadline, and what a clamd that cannot answer means.
#[derive(Debug, Clone)]
pub struct Settings {
    pub timeout: Duration,
    /// How long a streamed message's whole scan may wait for its turn and for memory.
    pub queue_timeout: Duration,
    pub tempfail: bool,
    /// The most of a streamed message read back to scan it (the message size limit).
    pub max_scan: u64,
}

/// What the engines found.
#[derive(Debug, Default)]
pub struct Scan {
    pub builtin: Option<malware::Report>,
    pub external: Option<External>,
}

/// The most the built-in scan decompresses on the core before it moves to the blocking
/// thread (a text part that turns out to hold an archive).
const ON_CORE_BYTES: u64 = 256 * 1024;

/// Scans a message (the content as received): the built-in engine, then clamd unless a
/// virus was found already. `Err` carries why an engine could not answer when that
/// defers the message (`tempfail`: `[antivirus] on_failure` or the recipients' domain's
/// `antivirus_on_failure`). Counted in the metrics.
pub async fn scan_message(
    core: &crate::runtime::Core,
    content: Vec<u8>,
    tempfail: bool,
) -> (Result<Scan, String>, Vec<u8>) {
    let mut out = Scan::default();
    let Some(ci) = core.inspector() else {
        return (Ok(out), content);
    };
    let settings = &ci.inspector.settings;
    let shard = core.shard();
    let mut content = content;
    if let Some(av) = settings.antivirus.clone() {
        let t0 = Instant::now();
        let offload = may_carry_attachments(&content);
        let mut limits = settings.attachment_limits.clone();
        if !offload {
            limits.max_member_bytes = limits.max_member_bytes.min(ON_CORE_BYTES);
            limits.max_total_bytes = limits.max_total_bytes.min(ON_CORE_BYTES);
        }
        let timeout = core.antivirus.timeout;
        let (mut report, c) = builtin(
            av.clone(),
            ci.av_pool.clone(),
            &limits,
            timeout,
            content,
            offload,
        )
        .await;
        content = c;
        let size_limited = |r: &Option<malware::Report>| {
            r.as_ref().is_some_and(|r| {
                matches!(
                    r.violation,
                    Some(
                        bulwark_inspect::attach::Violation::MemberBytes { .. }
                            | bulwark_inspect::attach::Violation::TotalBytes { .. }
                            | bulwark_inspect::attach::Violation::Ratio { .. }
                    )
                )
            })
        };
        if !offload && size_limited(&report) {
            // More than the core should decompress: again on the blocking thread, with
            // the real limits.
            let (r, c) = builtin(
                av,
                ci.av_pool.clone(),
                &settings.attachment_limits,
                timeout.saturating_sub(t0.elapsed()),
                content,
                true,
            )
            .await;
            report = r;
            content = c;
            shard.av_offloaded.inc();
        } else if offload {
            shard.av_offloaded.inc();
        }
        shard.av_seconds.observe_duration(t0.elapsed());
        if let Some(r) = &report {
            let result = if r.viruses.is_empty() { 0 } else { 1 };
            shard.av_scans[0][result].inc();
            if let Some(v) = &r.violation {
                let i = crate::metrics::ATTACHMENT_LIMITS
                    .iter()
                    .position(|l| *l == v.label())
                    .unwrap_or(0);
                shard.attachment_limits[i].inc();
            }
            shard
                .attachments_unscannable
                .add(r.unscannable.len() as u64);
            shard
                .attachments_encrypted
                .add(r.objects.iter().filter(|o| o.encrypted).count() as u64);
        }
        out.builtin = report;
    }
    let found = out.builtin.as_ref().is_some_and(|r| !r.viruses.is_empty());
    if let Some(clamd) = core.clamd.as_ref()
        && !found
    {
        let answer = clamd.scan(&content).await;
        let result = match &answer {
            External::Clean => 0,
            External::Virus(_) => 1,
            External::Failed(_) => 2,
        };
        shard.av_scans[1][result].inc();
        shard.clamd_connections.add(clamd.take_opened());
        if let External::Failed(why) = &answer
            && tempfail
        {
            return (Err(format!("clamd: {why}")), content);
        }
        out.external = Some(answer);
    }
    (Ok(out), content)
}

/// Runs the built-in scan of `content` within `limits` (the deadline set from
/// `timeout`); on the blocking thread when `offload`, else here. Gives the content back.
pub async fn builtin(
    av: Arc<Antivirus>,
    pool: ScratchPool,
    limits: &Limits,
    timeout: Duration,
    content: Vec<u8>,
    offload: bool,
) -> (Option<malware::Report>, Vec<u8>) {
    let mut limits = limits.clone();
    let started = Instant::now();
    limits.deadline = Some(started + timeout);
    let job = move || {
        let scratch = pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .or_else(|| av.scratch().ok().flatten());
        let report = malware::scan(&content, &av, scratch.as_ref(), &limits);
        if let (Some(s), Ok(mut p)) = (scratch, pool.lock()) {
            p.push(s);
        }
        (Some(report), content)
    };
    if !offload {
        return job();
    }
    // The walk stops itself at its deadline; the job is awaited whole so the content
    // comes back.
    glommio::executor().spawn_blocking(job).await
}

/// Where clamd is, resolved once at start.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Endpoint {
    pub fn resolve(a: &crate::config::ClamdAddr) -> anyhow::Result<Endpoint> {
        use std::net::ToSocketAddrs;
        Ok(match a {
            crate::config::ClamdAddr::Unix(p) => Endpoint::Unix(p.clone()),
            crate::config::ClamdAddr::Tcp(s) => Endpoint::Tcp(
                s.to_socket_addrs()
                    .map_err(|e| anyhow::anyhow!("antivirus.clamd: {s}: {e}"))?
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("antivirus.clamd: {s} has no address"))?,
            ),
        })
    }
}

enum Conn {
    Tcp(glommio::net::TcpStream),
    Unix(glommio::net::UnixStream),
}

impl Conn {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(b).await,
            Conn::Unix(s) => s.write_all(b).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush().await,
            Conn::Unix(s) => s.flush().await,
        }
    }

    async fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(b).await,
            Conn::Unix(s) => s.read(b).await,
        }
    }
}

/// A session with clamd: `zIDSESSION` sent, commands numbered from 1.
struct Session {
    conn: Conn,
    next_id: u64,
}

/// Pieces of the stream sent to clamd (each a 4-byte length and the bytes).
const CHUNK: usize = 64 * 1024;
/// Idle sessions kept per core.
const POOL: usize = 8;
/// The longest reply line read from clamd.
const MAX_REPLY: usize = 4096;

/// One core's clamd client.
pub struct Clamd {
    endpoint: Endpoint,
    timeout: Duration,
    pub max_size: u64,
    idle: RefCell<Vec<Session>>,
    /// Connections opened since last taken (for the metrics).
    opened: std::cell::Cell<u64>,
}

impl Clamd {
    pub fn new(endpoint: Endpoint, timeout: Duration, max_size: u64) -> Rc<Clamd> {
        Rc::new(Clamd {
            endpoint,
            timeout,
            max_size,
            idle: RefCell::new(Vec::new()),
            opened: std::cell::Cell::new(0),
        })
    }

    /// Connections opened since the last call.
    pub fn take_opened(&self) -> u64 {
        self.opened.replace(0)
    }

    async fn connect(&self) -> std::io::Result<Session> {
        let mut conn = match &self.endpoint {
            Endpoint::Tcp(a) => Conn::Tcp(glommio::net::TcpStream::connect(*a).await?),
            Endpoint::Unix(p) => Conn::Unix(glommio::net::UnixStream::connect(p).await?),
        };
        self.opened.set(self.opened.get() + 1);
        conn.write_all(b"zIDSESSION\0").await?;
        Ok(Session { conn, next_id: 1 })
    }

    /// Scans `content` within the deadline: clean, a virus, or why it could not tell.
    pub async fn scan(&self, content: &[u8]) -> External {
        if content.len() as u64 > self.max_size {
            return External::Failed(format!(
                "the message is larger than clamd_max_size ({} bytes)",
                self.max_size
            ));
        }
        let deadline = async {
            glommio::timer::sleep(self.timeout).await;
            External::Failed(format!("no answer within {:?}", self.timeout))
        };
        futures_lite::future::or(self.scan_now(content), deadline).await
    }

    async fn scan_now(&self, content: &[u8]) -> External {
        // A pooled session may have been closed by clamd (its idle timeout): one retry
        // on a fresh connection.
        for attempt in 0..2 {
            let pooled = if attempt == 0 {
                self.idle.borrow_mut().pop()
            } else {
                None
            };
            let fresh = pooled.is_none();
            let mut session = match pooled {
                Some(s) => s,
                None => match self.connect().await {
                    Ok(s) => s,
                    Err(e) => return External::Failed(format!("{}: {e}", self.endpoint)),
                },
            };
            match instream(&mut session, content).await {
                Ok(answer) => {
                    let verdict = parse_answer(&answer);
                    if !matches!(verdict, External::Failed(_)) {
                        let mut idle = self.idle.borrow_mut();
                        if idle.len() < POOL {
                            idle.push(session);
                        }
                    }
                    return verdict;
                }
                Err(e) if !fresh => {
                    debug!("clamd session closed ({e}); reconnecting");
                    continue;
                }
                Err(e) => return External::Failed(format!("{}: {e}", self.endpoint)),
            }
        }
        External::Failed("no session".into())
    }
}

/// Sends one `zINSTREAM` in a session and reads its reply line (without the id).
async fn instream(s: &mut Session, content: &[u8]) -> std::io::Result<String> {
    let id = s.next_id;
    s.next_id += 1;
    s.conn.write_all(b"zINSTREAM\0").await?;
    for piece in content.chunks(CHUNK) {
        s.conn
            .write_all(&(piece.len() as u32).to_be_bytes())
            .await?;
        s.conn.write_all(piece).await?;
    }
    s.conn.write_all(&0u32.to_be_bytes()).await?;
    s.conn.flush().await?;
    let mut line = Vec::with_capacity(64);
    let mut buf = [0u8; 512];
    loop {
        let n = s.conn.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "clamd closed the connection",
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = memchr::memchr(0, &line) {
            line.truncate(end);
            break;
        }
        if line.len() > MAX_REPLY {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "clamd's reply is too long",
            ));
        }
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    // `ID: stream: …` in a session.
    let want = format!("{id}: ");
    match text.strip_prefix(&want) {
        Some(rest) => Ok(rest.to_string()),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("clamd answered out of turn: {text:?}"),
        )),
    }
}

/// `stream: OK`, `stream: NAME FOUND`, or an error line.
fn parse_answer(answer: &str) -> External {
    let body = answer.strip_prefix("stream: ").unwrap_or(answer).trim();
    if body == "OK" {
        return External::Clean;
    }
    if let Some(name) = body.strip_suffix(" FOUND") {
        return External::Virus(name.trim().to_string());
    }
    warn!("clamd could not scan: {answer}");
    External::Failed(body.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamd_answers_are_read() {
        assert_eq!(parse_answer("stream: OK"), External::Clean);
        assert_eq!(
            parse_answer("stream: Eicar-Test-Signature FOUND"),
            External::Virus("Eicar-Test-Signature".into())
        );
        assert!(matches!(
            parse_answer("INSTREAM size limit exceeded. ERROR"),
            External::Failed(_)
        ));
    }

    #[test]
    fn only_text_messages_stay_on_the_core() {
        assert!(!may_carry_attachments(b"Subject: x\r\n\r\nbody"));
        assert!(!may_carry_attachments(
            b"Subject: x\r\nContent-Type: TEXT/plain; charset=utf-8\r\n\r\nbody"
        ));
        assert!(may_carry_attachments(
            b"Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b"
        ));
        assert!(may_carry_attachments(
            b"Content-Type: application/zip\n\nPK"
        ));
        // In the body, it is not the message's type.
        assert!(!may_carry_attachments(
            b"Subject: x\r\n\r\nContent-Type: application/zip\r\n"
        ));
    }
}
