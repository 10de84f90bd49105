//! `bulwark-load send`: the SMTP load generator. Thread-per-core like the engine: each
//! thread runs a glommio executor with its share of the connections; each connection
//! sends message after message (pipelined when the server offers PIPELINING) until the
//! run's message budget or duration is spent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bulwark::deliver::client::{Connection, Timeouts};
use bulwark::deliver::content::{Cached, Content};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::message::Template;

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Server to load, HOST:PORT.
    #[arg(long, value_parser = crate::socket_addr)]
    pub target: SocketAddr,
    /// Concurrent connections, each reused for message after message.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// Messages to send in all (default 1000, or unlimited with --duration).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Approximate size of each message in octets.
    #[arg(long, default_value_t = 4096)]
    pub size: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    pub recipients: usize,
    /// Use STARTTLS (fails if the server does not offer it).
    #[arg(long)]
    pub tls: bool,
    /// Messages per second in all; default: as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Add a base64 attachment of this many octets.
    #[arg(long, default_value_t = 0)]
    pub attachment: usize,
    /// What the attachment is: `bin` (random octets, `data.bin`) or `zip` (`documents.zip`:
    /// four deflated text files holding `--attachment` octets in all).
    #[arg(long, value_enum, default_value_t = crate::message::AttachmentKind::Bin)]
    pub attachment_kind: crate::message::AttachmentKind,
    /// Open N connections, say EHLO, and hold them idle until stopped (Ctrl-C).
    #[arg(long)]
    pub hold: Option<usize>,
    /// Sender threads (one executor each); default: all CPUs.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Envelope sender.
    #[arg(long, default_value = "load@bulwark-load.test")]
    pub from: String,
    /// Envelope recipient; with --recipients N the others are numbered (user1@…).
    #[arg(long, default_value = "user@example.test")]
    pub to: String,
    /// Write the Message-ID of every message that got a 2xx here, one per line.
    #[arg(long)]
    pub ids: Option<std::path::PathBuf>,
    /// Connect from these source addresses, one after another per connection: an IPv4
    /// network (`127.0.1.0/24`: each of its addresses; on Linux every 127/8 address is
    /// local) or a comma-separated list. Default: the kernel's choice.
    #[arg(long, value_parser = parse_sources)]
    pub sources: Option<Sources>,
}

/// Source addresses to connect from.
#[derive(Debug, Clone)]
pub struct Sources(pub Vec<std::net::IpAddr>);

fn parse_sources(text: &str) -> Result<Sources, String> {
    if let Some((net, prefix)) = text.split_once('/') {
        let net: std::net::Ipv4Addr = net
            .parse()
            .map_err(|_| format!("{text:?}: {net:?} is not an IPv4 address"))?;
        let prefix: u32 = prefix
            .parse()
            .ok()
            .filter(|p| (16..=32).contains(p))
            .ok_or_else(|| format!("{text:?}: the prefix must be 16 to 32"))?;
        let base = u32::from(net) & (u32::MAX << (32 - prefix));
        let count = 1u64 << (32 - prefix);
        let mut v: Vec<std::net::IpAddr> = (0..count)
            .map(|i| std::net::IpAddr::V4((base.wrapping_add(i as u32)).into()))
            .collect();
        if prefix < 31 {
            // Not the network and broadcast addresses.
            v.remove(0);
            v.pop();
        }
        return Ok(Sources(v));
    }
    text.split(',')
        .map(|a| {
            a.trim()
                .parse()
                .map_err(|_| format!("{a:?} is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Sources)
}

/// A TCP connection to `target` from `source` (bind before connect), made without
/// blocking the executor: a non-blocking connect, then polls until it completes.
async fn connect_from(
    source: std::net::IpAddr,
    target: SocketAddr,
) -> std::io::Result<glommio::net::TcpStream> {
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
    let family = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just created and own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = |a: SocketAddr| -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: zeroed sockaddr_storage is valid; filled below per family.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match a {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in.
                unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in6.
                unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    };
    let (src, src_len) = raw(SocketAddr::new(source, 0));
    // SAFETY: a valid address of the given length.
    if unsafe {
        libc::bind(
            owned.as_raw_fd(),
            &src as *const _ as *const libc::sockaddr,
            src_len,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    let (dst, dst_len) = raw(target);
    // SAFETY: as above.
    if unsafe {
        libc::connect(
            owned.as_raw_fd(),
            &dst as *const _ as *const libc::sockaddr,
            dst_len,
        )
    } < 0
    {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        loop {
            let mut p = libc::pollfd {
                fd: owned.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one pollfd, no wait.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            if n > 0 {
                break;
            }
            glommio::timer::sleep(Duration::from_micros(200)).await;
        }
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: reads one int.
        unsafe {
            libc::getsockopt(
                owned.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
    }
    // SAFETY: a connected TCP socket handed over to glommio.
    Ok(unsafe { glommio::net::TcpStream::from_raw_fd(owned.into_raw_fd()) })
}

/// Counters every thread adds to, read by the progress bar.
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    connected: AtomicU64,
}

struct Shared {
    opts: Options,
    totals: Totals,
    /// Messages not yet claimed by a connection.
    budget: AtomicI64,
    stop: AtomicBool,
    deadline: Option<Instant>,
    run_id: String,
    /// Threads that have finished their connections.
    finished: AtomicU64,
    /// The next of `--sources` to connect from.
    next_source: AtomicU64,
}

/// What one thread measured.
struct ThreadStats {
    data_end: Histogram<u64>,
    transaction: Histogram<u64>,
    codes: BTreeMap<u16, u64>,
    /// Message-IDs that got a 2xx, when --ids is given.
    accepted_ids: Vec<String>,
}

impl ThreadStats {
    fn new() -> ThreadStats {
        let h = || {
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("histogram"))
        };
        ThreadStats {
            data_end: h(),
            transaction: h(),
            codes: BTreeMap::new(),
            accepted_ids: Vec::new(),
        }
    }
}

#[derive(Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |v: u64| v as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// The run's result; `--json` prints exactly this.
#[derive(Serialize)]
pub struct Report {
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub errors: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
    pub mb_per_sec: f64,
    /// DATA end (the final `.` sent) to the server's reply.
    pub latency_ms: Latency,
    /// MAIL sent to the final reply.
    pub transaction_ms: Latency,
    pub rejected_by_code: BTreeMap<String, u64>,
}

fn rfc5322_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    bulwark::util::rfc5322_date(now)
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.connections == 0 && opts.hold.is_none() {
        bail!("--connections must be at least 1");
    }
    if opts.recipients == 0 {
        bail!("--recipients must be at least 1");
    }
    bulwark::util::raise_nofile();
    let stop_signal = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop_signal.clone())
            .context("installing signal handlers")?;
    }
    let messages = match (opts.messages, opts.duration) {
        (Some(m), _) => m as i64,
        (None, Some(_)) => i64::MAX,
        (None, None) => 1000,
    };
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    );
    let shared = Arc::new(Shared {
        deadline: opts
            .duration
            .map(|s| Instant::now() + Duration::from_secs_f64(s)),
        opts: opts.clone(),
        totals: Totals::default(),
        budget: AtomicI64::new(messages),
        stop: AtomicBool::new(false),
        run_id,
        finished: AtomicU64::new(0),
        next_source: AtomicU64::new(0),
    });
    let threads = crate::threads(opts.threads);
    let conns = opts.hold.unwrap_or(opts.connections);
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let n = conns / threads + usize::from(t < conns % threads);
        if n == 0 {
            continue;
        }
        let shared = shared.clone();
        let h = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("load-{t}"))
            .io_memory(1 << 20)
            .spawn(move || async move { thread_main(t, n, shared).await })
            .map_err(|e| anyhow::anyhow!("starting thread {t}: {e}"))?;
        handles.push(h);
    }
    let progress = Progress::new(!opts.json && opts.hold.is_none(), messages);
    let mut held_reported = false;
    while (shared.finished.load(Relaxed) as usize) < handles.len() {
        std::thread::sleep(Duration::from_millis(100));
        if stop_signal.load(Relaxed) {
            shared.stop.store(true, Relaxed);
        }
        if let Some(hold) = opts.hold {
            let c = shared.totals.connected.load(Relaxed);
            if c as usize >= hold && !held_reported {
                eprintln!(
                    "holding {c} connections (errors: {}); stop with Ctrl-C",
                    shared.totals.errors.load(Relaxed)
                );
                held_reported = true;
            }
        }
        progress.update(&shared.totals, started);
    }
    let mut stats = ThreadStats::new();
    for h in handles {
        match h.join() {
            Ok(s) => {
                let _ = stats.data_end.add(&s.data_end);
                let _ = stats.transaction.add(&s.transaction);
                for (k, v) in s.codes {
                    *stats.codes.entry(k).or_default() += v;
                }
                stats.accepted_ids.extend(s.accepted_ids);
            }
            Err(e) => eprintln!("a load thread failed: {e}"),
        }
    }
    progress.finish();
    if let Some(path) = &opts.ids {
        let mut text = stats.accepted_ids.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(path, text)
            .with_context(|| format!("--ids: cannot write {}", path.display()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let t = &shared.totals;
    let report = Report {
        sent: t.sent.load(Relaxed),
        accepted: t.accepted.load(Relaxed),
        rejected: t.rejected.load(Relaxed),
        errors: t.errors.load(Relaxed),
        seconds,
        messages_per_sec: t.accepted.load(Relaxed) as f64 / seconds,
        mb_per_sec: t.bytes.load(Relaxed) as f64 / seconds / 1e6,
        latency_ms: Latency::of(&stats.data_end),
        transaction_ms: Latency::of(&stats.transaction),
        rejected_by_code: stats
            .codes
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
    };
    if opts.json {
        println!("{}", serde_json::to_string(&report)?);
    } else if opts.hold.is_none() {
        print_report(&report);
    }
    if opts.hold.is_none() && report.accepted == 0 && (report.sent > 0 || report.errors > 0) {
        bail!("no message was accepted");
    }
    if opts.hold.is_some() && shared.totals.connected.load(Relaxed) == 0 {
        bail!("no connection could be opened");
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!("sent       {}", r.sent);
    println!("accepted   {}", r.accepted);
    let codes: Vec<String> = r
        .rejected_by_code
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    println!(
        "rejected   {}{}",
        r.rejected,
        if codes.is_empty() {
            String::new()
        } else {
            format!("  ({})", codes.join(", "))
        }
    );
    println!("errors     {}", r.errors);
    println!("duration   {:.2} s", r.seconds);
    println!(
        "rate       {:.1} messages/s, {:.2} MB/s",
        r.messages_per_sec, r.mb_per_sec
    );
    for (name, l) in [
        ("DATA end → reply", &r.latency_ms),
        ("transaction", &r.transaction_ms),
    ] {
        println!(
            "{name:<18} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            l.p50, l.p90, l.p99, l.max
        );
    }
}

struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    /// A bar when the number of messages is known, a spinner for `--duration` runs;
    /// nothing unless stderr is a terminal.
    fn new(show: bool, total: i64) -> Progress {
        if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Progress(None);
        }
        let (bar, template) = if total == i64::MAX {
            (
                indicatif::ProgressBar::new_spinner(),
                "{spinner} {elapsed_precise} {msg}",
            )
        } else {
            (
                indicatif::ProgressBar::new(total as u64),
                "{elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
            )
        };
        let style = indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        Progress(Some(bar))
    }

    fn update(&self, t: &Totals, started: Instant) {
        let Some(bar) = &self.0 else { return };
        let accepted = t.accepted.load(Relaxed);
        let done = accepted + t.rejected.load(Relaxed) + t.errors.load(Relaxed);
        let secs = started.elapsed().as_secs_f64().max(0.001);
        bar.set_position(done);
        bar.set_message(format!(
            "{:.0} msg/s  accepted {accepted}  rejected {}  errors {}",
            accepted as f64 / secs,
            t.rejected.load(Relaxed),
            t.errors.load(Relaxed)
        ));
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

async fn thread_main(thread: usize, conns: usize, shared: Arc<Shared>) -> ThreadStats {
    let stats = Rc::new(std::cell::RefCell::new(ThreadStats::new()));
    let opts = &shared.opts;
    let template = Rc::new(Template::new(
        opts.size,
        (opts.attachment, opts.attachment_kind),
        &opts.from,
        thread as u64 + 1,
    ));
    // Each connection waits for its slot: the thread's share of the rate.
    let slot = Rc::new(std::cell::Cell::new(Instant::now()));
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(crate::threads(opts.threads) as f64 / r.max(0.001)));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (shared, stats, template, slot) = (
            shared.clone(),
            stats.clone(),
            template.clone(),
            slot.clone(),
        );
        tasks.push(glommio::spawn_local(async move {
            if shared.opts.hold.is_some() {
                hold(&shared).await;
            } else {
                connection(thread, c, &shared, &stats, &template, &slot, interval).await;
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    shared.finished.fetch_add(1, Relaxed);
    Rc::try_unwrap(stats)
        .map(|s| s.into_inner())
        .unwrap_or_else(|_| ThreadStats::new())
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(30),
        command: Duration::from_secs(300),
        data: Duration::from_secs(600),
    }
}

async fn open(shared: &Shared) -> Option<Connection> {
    let tls = shared
        .opts
        .tls
        .then(bulwark::net::tls::opportunistic_client_config);
    let host = shared.opts.target.ip().to_string();
    let opened = match &shared.opts.sources {
        Some(Sources(list)) if !list.is_empty() => {
            let i = shared.next_source.fetch_add(1, Relaxed) as usize % list.len();
            match connect_from(list[i], shared.opts.target).await {
                Ok(tcp) => {
                    Connection::over(
                        tcp,
                        &host,
                        shared.opts.target,
                        "bulwark-load.test",
                        tls.as_ref(),
                        timeouts(),
                    )
                    .await
                }
                Err(e) => Err(bulwark::deliver::client::ConnError::Connect(format!(
                    "from {}: {e}",
                    list[i]
                ))),
            }
        }
        _ => {
            Connection::open(
                &host,
                shared.opts.target,
                "bulwark-load.test",
                tls.as_ref(),
                timeouts(),
            )
            .await
        }
    };
    match opened {
        Ok(c) if shared.opts.tls && !c.is_tls() => {
            shared.totals.errors.fetch_add(1, Relaxed);
            eprintln!("--tls: the server did not offer STARTTLS");
            shared.stop.store(true, Relaxed);
            None
        }
        Ok(c) => {
            shared.totals.connected.fetch_add(1, Relaxed);
            Some(c)
        }
        Err(e) => {
            shared.totals.errors.fetch_add(1, Relaxed);
            if shared.totals.errors.load(Relaxed) <= 3 {
                eprintln!("connection failed: {e}");
            }
            None
        }
    }
}

/// `--hold`: connect, greet, and sit idle until told to stop.
async fn hold(shared: &Shared) {
    let Some(conn) = open(shared).await else {
        return;
    };
    while !shared.stop.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
    conn.quit().await;
}

fn done(shared: &Shared) -> bool {
    shared.stop.load(Relaxed) || shared.deadline.is_some_and(|d| Instant::now() >= d)
}

async fn connection(
    thread: usize,
    conn_no: usize,
    shared: &Shared,
    stats: &std::cell::RefCell<ThreadStats>,
    template: &Template,
    slot: &std::cell::Cell<Instant>,
    interval: Option<Duration>,
) {
    let opts = &shared.opts;
    let rcpts: Vec<String> = (0..opts.recipients)
        .map(|i| {
            if i == 0 {
                return opts.to.clone();
            }
            match opts.to.split_once('@') {
                Some((l, d)) => format!("{l}{i}@{d}"),
                None => format!("{}{i}", opts.to),
            }
        })
        .collect();
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let mut buf = Vec::with_capacity(opts.size + 1024);
    let mut seq = 0u64;
    let mut failures = 0;
    'connect: while !done(shared) {
        let Some(mut conn) = open(shared).await else {
            failures += 1;
            // A timed run rides out a server restart; a counted one gives up.
            if failures >= 5 && shared.deadline.is_none() {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(200)).await;
            continue;
        };
        failures = 0;
        while !done(shared) {
            if shared.budget.fetch_sub(1, Relaxed) <= 0 {
                conn.quit().await;
                return;
            }
            if let Some(iv) = interval {
                let at = slot.get().max(Instant::now());
                slot.set(at + iv);
                let wait = at.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    glommio::timer::sleep(wait).await;
                }
            }
            seq += 1;
            let id = format!("{}.{thread}.{conn_no}.{seq}", shared.run_id);
            template.render(&mut buf, &opts.to, &id, &rfc5322_now());
            shared.totals.sent.fetch_add(1, Relaxed);
            let t0 = Instant::now();
            let content = Content::Memory(Cached::new(Vec::new(), std::mem::take(&mut buf), None));
            let sent = conn
                .send(&opts.from, &rcpt_refs, &content, false, false)
                .await;
            if let Content::Memory(c) = content
                && let Ok(c) = std::rc::Rc::try_unwrap(c)
            {
                buf = c.into_body();
            }
            match sent {
                Err(e) => {
                    shared.totals.errors.fetch_add(1, Relaxed);
                    if shared.totals.errors.load(Relaxed) <= 3 {
                        eprintln!("transaction failed: {e}");
                    }
                    continue 'connect;
                }
                Ok(r) => {
                    let end = Instant::now();
                    let mut st = stats.borrow_mut();
                    let _ = st.transaction.record((end - t0).as_micros().max(1) as u64);
                    let code = match (&r.data, r.mail.is_positive()) {
                        (Some(d), _) => d.code,
                        (None, false) => r.mail.code,
                        (None, true) => r
                            .rcpts
                            .iter()
                            .find(|x| !x.is_positive())
                            .map(|x| x.code)
                            .unwrap_or(0),
                    };
                    if let Some(sent) = r.content_sent {
                        let _ = st.data_end.record((end - sent).as_micros().max(1) as u64);
                    }
                    if (200..300).contains(&code) {
                        shared.totals.accepted.fetch_add(1, Relaxed);
                        if opts.ids.is_some() {
                            st.accepted_ids.push(format!("{id}@bulwark-load"));
                        }
                        shared.totals.bytes.fetch_add(buf.len() as u64, Relaxed);
                    } else {
                        shared.totals.rejected.fetch_add(1, Relaxed);
                        *st.codes.entry(code).or_default() += 1;
                        if code == 421 {
                            // The server closed the session (a throttle, say): reconnect.
                            continue 'connect;
                        }
                    }
                }
            }
        }
        conn.quit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_a_network_or_a_list() {
        let s = parse_sources("127.0.1.0/24").unwrap();
        assert_eq!(s.0.len(), 254);
        assert_eq!(s.0[0].to_string(), "127.0.1.1");
        assert_eq!(s.0[253].to_string(), "127.0.1.254");
        assert_eq!(parse_sources("127.0.1.9/32").unwrap().0.len(), 1);
        let l = parse_sources("127.0.0.2, 127.0.0.3").unwrap();
        assert_eq!(l.0.len(), 2);
        assert!(
            parse_sources("127.0.0.0/8")
                .unwrap_err()
                .contains("16 to 32")
        );
        assert!(parse_sources("nope").is_err());
    }
}
