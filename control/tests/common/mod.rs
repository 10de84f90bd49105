//! What the control service's tests share: starting the service and an engine, the
//! CLI, raw HTTP, SMTP exchanges.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CONTROL: &str = env!("CARGO_BIN_EXE_bulwark-control");

// Binding port 0 and dropping it let another test take the port before the process
// under test bound it; the engine tests' allocator hands each port out once.
#[path = "../../../engine/tests/common/ports.rs"]
mod ports;
pub use ports::free_port;

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "bulwark-control-test-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn wait_port(port: u16) {
    wait_port_or(port, String::new);
}

/// Waits for a listener on `port`; if none comes, fails with what `log` says.
pub fn wait_port_or(port: u16, log: impl Fn() -> String) {
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < end,
            "nothing listening on {port}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_healthy(metrics: u16) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let mut body = String::new();
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", metrics)) {
            let _ = write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            let _ = s.read_to_string(&mut body);
        }
        if body.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(
            Instant::now() < end,
            "the engine never became ready: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Control {
    pub p: Proc,
    pub url: String,
    pub token: String,
    pub config: PathBuf,
}

pub fn start_control(dir: &Path, snapshot: &Path, engines: &[String]) -> Control {
    start_control_with(dir, snapshot, engines, "")
}

/// With `extra` keys in `[control]`.
pub fn start_control_with(dir: &Path, snapshot: &Path, engines: &[String], extra: &str) -> Control {
    let port = free_port();
    let config = dir.join("control.toml");
    let engines: Vec<String> = engines.iter().map(|e| format!("\"{e}\"")).collect();
    std::fs::write(
        &config,
        format!(
            // No scheduled digest: a test running in its hour would see it.
            "[control]\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\nsnapshot = \"{}\"\nengines = [{}]\ndigest_hour = -1\n{extra}\n",
            dir.join("control.sqlite").display(),
            snapshot.display(),
            engines.join(", ")
        ),
    )
    .unwrap();
    let out = Command::new(CONTROL)
        .args(["token", "create", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let p = serve(&config);
    wait_port(port);
    Control {
        p,
        url: format!("http://127.0.0.1:{port}"),
        token,
        config,
    }
}

/// Starts `bulwark-control serve` on `config`.
pub fn serve(config: &Path) -> Proc {
    Proc(
        Command::new(CONTROL)
            .args(["serve", "--config"])
            .arg(config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

impl Control {
    /// Kills the service (SIGKILL: no chance to tidy up) and starts it again.
    pub fn crash_and_restart(&mut self, down: Duration) {
        let _ = self.p.0.kill();
        let _ = self.p.0.wait();
        std::thread::sleep(down);
        self.p = serve(&self.config);
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        wait_port(port);
    }
}

pub fn cli(c: &Control, args: &[&str]) -> (bool, String) {
    let out = Command::new(CONTROL)
        .args(args)
        .args(["--url", &c.url])
        .env("BULWARK_TOKEN", &c.token)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A raw HTTP request; returns (status, body).
pub fn http(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status: u16 = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // Chunked bodies: the JSON sits between the chunk sizes.
    let json = body.find(['{', '[']).map(|i| &body[i..]).unwrap_or("");
    let end = json.rfind(['}', ']']).map(|i| i + 1).unwrap_or(0);
    (
        status,
        serde_json::from_str(&json[..end]).unwrap_or(serde_json::Value::Null),
    )
}

/// A control service and an engine following what it publishes (2 cores).
pub fn control_and_engine(dir: &Path) -> (Control, Proc, u16, u16) {
    control_and_engine_with(dir, "")
}

/// With `extra` TOML appended to the engine's configuration.
pub fn control_and_engine_with(dir: &Path, extra: &str) -> (Control, Proc, u16, u16) {
    let engine_bin = Path::new(CONTROL).with_file_name("bulwark");
    assert!(
        engine_bin.exists(),
        "build the workspace first: {} is missing",
        engine_bin.display()
    );
    let snapshot = dir.join("shm/policy");
    let (smtp, metrics) = (free_port(), free_port());
    let ecfg = dir.join("bulwark.toml");
    std::fs::write(
        &ecfg,
        format!(
            "[server]\nhostname = \"mx.test\"\nlisten = [\"127.0.0.1:{smtp}\"]\nmetrics = \"127.0.0.1:{metrics}\"\ncores = 2\n\
             [spool]\ndir = \"{}\"\n[policy]\nsnapshot = \"{}\"\n{extra}\n",
            dir.join("spool").display(),
            snapshot.display()
        ),
    )
    .unwrap();
    let c = start_control_with(
        dir,
        &snapshot,
        &[format!("127.0.0.1:{metrics}")],
        &format!(
            "engine_admin_dir = \"{}\"\ntracking_dirs = [\"{}\"]",
            dir.join("spool/admin").display(),
            dir.join("spool/tracking").display()
        ),
    );
    let engine = Proc(
        Command::new(&engine_bin)
            .args(["serve", "--config"])
            .arg(&ecfg)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(smtp);
    // Every core listens with its policy (one listening core is not enough: a slow
    // second core would answer with generation 0).
    wait_healthy(metrics);
    (c, engine, smtp, metrics)
}

/// The final reply to `RCPT TO:<to>` from `source`, or the greeting if it was refused.
pub fn rcpt_from(smtp: u16, source: &str, from: &str, to: &str) -> String {
    let Ok(mut s) = connect_from(source, smtp) else {
        return "connect failed".into();
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(
        s,
        "EHLO c\r\nMAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nQUIT\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let finals: Vec<&str> = out
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .collect();
    if finals.first().is_some_and(|g| !g.starts_with("220")) {
        return finals[0].to_string();
    }
    finals.get(3).copied().unwrap_or("").to_string()
}

/// Connects to 127.0.0.1:`port` from the loopback address `source` (std has no
/// bind-before-connect, so this uses libc directly).
pub fn connect_from(source: &str, port: u16) -> Result<TcpStream, String> {
    use std::os::fd::FromRawFd;
    let src: std::net::Ipv4Addr = source.parse().map_err(|_| "bad source".to_string())?;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err("socket".into());
        }
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_addr.s_addr = u32::from_ne_bytes(src.octets());
        if libc::bind(
            fd,
            &a as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            libc::close(fd);
            return Err("bind".into());
        }
        let mut d: libc::sockaddr_in = std::mem::zeroed();
        d.sin_family = libc::AF_INET as libc::sa_family_t;
        d.sin_port = port.to_be();
        d.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        if libc::connect(
            fd,
            &d as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
        {
            libc::close(fd);
            return Err("connect".into());
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// Retries `f` for up to two seconds until it returns something starting with `want`.
pub fn eventually(want: &str, mut f: impl FnMut() -> String) -> String {
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let got = f();
        if got.starts_with(want) || Instant::now() >= end {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The whole message exchange; the reply to the end of data.
pub fn send_message(smtp: u16, body: &str) -> String {
    send_mail(
        smtp,
        "a@b.test",
        "u@fleet.test",
        &format!("Subject: fleet\r\nFrom: a@b.test\r\n\r\n{body}"),
    )
}

/// One message from `from` to `to` (`message`: its header and body, CRLF lines); the
/// reply to the end of data, or what the server said instead of 354.
pub fn send_mail(smtp: u16, from: &str, to: &str, message: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", smtp)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "EHLO c\r\nMAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = String::new();
    while !seen.contains("354") {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return seen;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    write!(s, "{message}\r\n.\r\nQUIT\r\n").unwrap();
    let _ = s.read_to_string(&mut seen);
    seen.lines()
        .skip_while(|l| !l.starts_with("354"))
        .nth(1)
        .unwrap_or("")
        .to_string()
}

pub fn metric(port: u16, name: &str) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A `bulwark-load sink` (one thread) on a free port, with `args` (`--report FILE`,
/// `--save DIR`, …).
pub fn load_sink(args: &[&std::ffi::OsStr]) -> (Proc, u16) {
    let load = Path::new(CONTROL).with_file_name("bulwark-load");
    assert!(
        load.exists(),
        "build the workspace first: {} is missing",
        load.display()
    );
    let port = free_port();
    let p = Proc(
        Command::new(load)
            .args(["sink", "--threads", "1", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    (p, port)
}

/// Adds `domain` routed to 127.0.0.1:`port` through the CLI.
pub fn add_domain_routed_to(c: &Control, domain: &str, port: u16) {
    let route = format!("127.0.0.1:{port}");
    let (ok, out) = cli(c, &["domain", "add", domain, "--route", &route]);
    assert!(ok, "{out}");
}
