//! Test harness: runs the real `bulwark` binary, a real downstream sink (aiosmtpd) and
//! real clients (swaks, smtplib, smtp-source) over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const PYTHON: &str = "/usr/bin/python3";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "bulwark-it-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("BULWARK_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// The one port allocator of every test process (the control tests include it too).
#[path = "ports.rs"]
mod ports;
pub use ports::free_port;

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    wait_until(timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// Settings for one engine under test.
pub struct EngineConfig {
    pub lifetime: &'static str,
    pub retry: &'static str,
    pub cores: usize,
    /// Extra TOML appended verbatim: `[[domains]]`, `[tls]`, `[dns]`, `[smtp]`, …
    /// (a `[delivery]` table here replaces the default one).
    pub extra: String,
    /// Extra keys of the `[queue]` table.
    pub queue_extra: String,
    /// Extra keys of the `[server]` table.
    pub server_extra: String,
    /// The SMTP port (default: a free one).
    pub smtp_port: Option<u16>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lifetime: "10d",
            retry: "[\"1s\"]",
            cores: 1,
            extra: String::new(),
            queue_extra: String::new(),
            server_extra: String::new(),
            smtp_port: None,
        }
    }
}

pub struct Engine {
    child: std::cell::RefCell<Option<Child>>,
    pub smtp: SocketAddr,
    pub metrics: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    pub spool: PathBuf,
    _dir: TempDir,
}

impl Engine {
    pub fn start(cfg: EngineConfig) -> Engine {
        let dir = TempDir::new("engine");
        let smtp: SocketAddr = format!("127.0.0.1:{}", cfg.smtp_port.unwrap_or_else(free_port))
            .parse()
            .unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let spool = dir.path().join("spool");
        let spool_section = if cfg.extra.contains("[spool]") {
            String::new()
        } else {
            format!("[spool]\ndir = \"{}\"\n\n", spool.display())
        };
        let delivery_section = if cfg.extra.contains("[delivery]") {
            ""
        } else {
            "[delivery]\nidle_time = \"1s\"\nconnect_timeout = \"2s\"\nbackoff_min = \"1s\"\nbackoff_max = \"2s\"\n\n"
        };
        let text = format!(
            "[server]\nhostname = \"mx.bulwark.test\"\nlisten = [\"{smtp}\"]\nmetrics = \"{metrics}\"\ncores = {}\n{}\n{spool_section}[queue]\nlifetime = \"{}\"\nretry = {}\n{}\n{delivery_section}{}\n",
            cfg.cores, cfg.server_extra, cfg.lifetime, cfg.retry, cfg.queue_extra, cfg.extra
        );
        let config = dir.path().join("bulwark.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("engine.log");
        let mut e = Engine {
            child: std::cell::RefCell::new(None),
            smtp,
            metrics,
            config,
            log,
            spool,
            _dir: dir,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("BULWARK_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bulwark");
        *self.child.borrow_mut() = Some(child);
        // Ready means every core listens with its policy: /healthz says so (a port
        // that accepts proves only that one core does).
        if !wait_for_port(self.metrics, Duration::from_secs(20))
            || !wait_until(Duration::from_secs(20), || {
                match try_http_get(self.metrics, "/healthz") {
                    Ok(body) => body == "ok\n",
                    // Not a reason to wait: an endpoint that accepts and then resets
                    // is a fault to see, with the time to find it in the log.
                    Err(e) => panic!(
                        "GET /healthz on {} failed at {}: {e}",
                        self.metrics,
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs_f64())
                            .unwrap_or_default()
                    ),
                }
            })
        {
            panic!("bulwark did not become ready; log:\n{}", self.log_text());
        }
    }

    /// The engine's peak resident memory so far (`VmHWM`), in KiB.
    #[allow(dead_code)]
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.borrow().as_ref().map(|c| c.id()).unwrap_or(0);
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.borrow_mut().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs `bulwark queue ARGS` against this engine: (success, stdout and stderr).
    pub fn queue(&self, args: &[&str]) -> (bool, String) {
        self.admin("queue", args)
    }

    /// Runs `bulwark quarantine ARGS` against this engine.
    pub fn quarantine(&self, args: &[&str]) -> (bool, String) {
        self.admin("quarantine", args)
    }

    fn admin(&self, command: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args([command, "--config"])
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run bulwark");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// `bulwark queue list --json`, parsed.
    pub fn queue_list(&self) -> Vec<serde_json::Value> {
        let (ok, text) = self.queue(&["list", "--json"]);
        assert!(ok, "bulwark queue list failed: {text}");
        serde_json::from_str::<Vec<serde_json::Value>>(&text)
            .unwrap_or_else(|e| panic!("bad JSON from queue list ({e}): {text}"))
    }

    /// The value of an unlabelled metric, or of `name{labels}` when given in full.
    pub fn metric(&self, name: &str) -> f64 {
        let exited = self
            .child
            .borrow_mut()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            panic!("bulwark exited with {status}; log:\n{}", self.log_text());
        }
        let text = http_get(self.metrics, "/metrics");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(name)
                && let Some(v) = rest.strip_prefix(' ')
            {
                return v.trim().parse().unwrap_or(f64::NAN);
            }
        }
        panic!("metric {name} not found in:\n{text}");
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The engine logs through a background writer: give it time to write what
            // it has before the kill, so the log shown is the whole story.
            std::thread::sleep(Duration::from_millis(500));
        }
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- engine log ----\n{}", self.log_text());
        }
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    try_http_get(addr, path).unwrap()
}

/// The body of `GET path`.
pub fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// A message the sink stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub tls: bool,
    pub content: String,
}

impl Stored {
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.content.split("\r\n\r\n").next().unwrap_or("");
        let prefix = format!("{}:", name.to_ascii_lowercase());
        head.split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_string())
    }
}

/// The downstream server (tests/support/sink.py).
pub struct Sink {
    child: Child,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

impl Sink {
    pub fn start(addr: SocketAddr) -> Sink {
        Self::start_with(addr, &[])
    }

    pub fn start_with(addr: SocketAddr, extra: &[&str]) -> Sink {
        let dir = TempDir::new("sink");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/sink.py");
        let mut child = Command::new(PYTHON)
            .arg(script)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sink.py (needs python3-aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "sink did not start");
        Sink { child, addr, dir }
    }

    pub fn messages(&self) -> Vec<Stored> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|p| {
                let meta: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(p.with_extension("json")).unwrap(),
                )
                .unwrap();
                Stored {
                    mail_from: meta["mail_from"].as_str().unwrap_or("").to_string(),
                    rcpts: meta["rcpt_tos"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect(),
                    tls: meta["tls"].as_bool().unwrap_or(false),
                    content: String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned(),
                }
            })
            .collect()
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Stored> {
        wait_until(timeout, || self.messages().len() >= n);
        self.messages()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a Python snippet with /usr/bin/python3; returns stdout, panics on failure.
pub fn python(script: &str) -> String {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .output()
        .expect("run python3");
    if !out.status.success() {
        panic!(
            "python failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command; returns (success, stdout + stderr).
pub fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A raw SMTP conversation: send bytes, read what comes back until a final reply line
/// for each expected reply.
pub struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = Raw { s, buf: Vec::new() };
        let g = r.replies(1);
        assert!(g[0].starts_with("220 "), "{g:?}");
        r
    }

    /// How long a read waits for the server (10 s unless set).
    pub fn read_timeout(&mut self, t: Duration) {
        self.s.set_read_timeout(Some(t)).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads `n` complete replies; each is its final line.
    pub fn replies(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while out.len() < n {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                if line.as_bytes().get(3) == Some(&b' ') || line.len() == 3 {
                    out.push(line);
                }
                continue;
            }
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        out
    }

    /// True when the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0))
    }
}

/// A self-signed certificate and key for `name`, written as PEM files in `dir`.
pub fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k)
}

pub fn domain(name: &str, route: SocketAddr) -> String {
    format!("[[domains]]\nname = \"{name}\"\nroute = \"{route}\"\n\n")
}

/// A test CA and a certificate it signed for `name` (an IP literal becomes an IP SAN).
/// Returns (ca.pem, leaf cert, leaf key) paths in `dir`.
pub fn make_ca_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Bulwark Test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (ca, crt, key) = (
        dir.join("ca.pem"),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&crt, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca, crt, key)
}

/// Sends `n` messages from `from` to `rcpts` with smtplib over one connection (each with
/// `Subject: TAG i` and `Message-ID: <TAG-i@client.test>`); returns the queue ids given.
pub fn send_messages(
    engine: &Engine,
    from: &str,
    rcpts: &[&str],
    n: usize,
    tag: &str,
) -> Vec<String> {
    let rcpts = rcpts
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let out = python(&format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port})
s.ehlo("client.test")
for i in range({n}):
    msg = "From: <{from}>\r\nSubject: {tag} {{0}}\r\nMessage-ID: <{tag}-{{0}}@client.test>\r\n\r\nbody {{0}}\r\n".format(i)
    s.mail("{from}")
    for r in [{rcpts}]:
        code, _ = s.rcpt(r)
        assert code == 250, code
    code, reply = s.data(msg)
    assert code == 250, (code, reply)
    print(reply.decode().split("queued as ")[1])
s.quit()
"#,
        port = engine.smtp.port()
    ));
    out.lines().map(str::to_string).collect()
}

/// A DNS server for a test (dnsmasq), stopped on drop.
pub struct Dnsmasq(Child);

impl Dnsmasq {
    /// Serves only `records` (dnsmasq options such as `--mx-host=…`) on 127.0.0.1:`port`.
    pub fn start(port: u16, records: &[&str]) -> Dnsmasq {
        Dnsmasq(
            Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--user=root",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    &format!("--port={port}"),
                ])
                .args(records)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq (dnsmasq-base) is required"),
        )
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of a file; none if it does not exist (yet).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
