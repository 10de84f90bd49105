//! The process as a supervisor sees it: a panic on any core ends the whole process (so
//! `Restart=always` brings it back and the spool recovery takes over), and `/healthz`
//! says ok only once every core serves.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_panic_on_one_core_ends_the_whole_process() {
    let dir = TempDir::new("panic");
    let smtp = free_port();
    let metrics = free_port();
    let config = dir.path().join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{smtp}\"]\nmetrics = \"127.0.0.1:{metrics}\"\ncores = 2\n\n[spool]\ndir = \"{}\"\n\n[[domains]]\nname = \"example.test\"\nroute = \"127.0.0.1:9\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("BULWARK_FAULT", "panic-core-1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the engine went on running after a core panicked");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "the process should abort, not exit: {status:?}"
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("core 1 panics on purpose"), "{err}");
}

#[test]
fn healthz_says_ok_once_every_core_listens() {
    let engine = Engine::start(EngineConfig {
        cores: 2,
        ..Default::default()
    });
    // Engine::start waits for /healthz; by then both cores take mail.
    let r = http_get(engine.metrics, "/healthz");
    assert_eq!(r, "ok\n");
    for _ in 0..4 {
        // Raw::connect reads and checks the 220 greeting.
        let mut raw = Raw::connect(engine.smtp);
        raw.send(b"QUIT\r\n");
        assert_eq!(raw.replies(1), ["221 2.0.0 Bye"]);
    }
}

/// Regression: with glommio's channel mesh linking the cores, about one start in a dozen
/// hung while the cores joined it (both executors up, neither ready). Twenty starts in a
/// row must all become ready.
#[test]
fn a_two_core_engine_becomes_ready_every_time_it_starts() {
    let mut engine = Engine::start(EngineConfig {
        cores: 2,
        ..Default::default()
    });
    for _ in 0..20 {
        // Engine::restart waits for /healthz to say ok, and panics if it never does.
        engine.restart();
    }
    assert_eq!(http_get(engine.metrics, "/healthz"), "ok\n");
}

/// Regression: the engine's listener set only `SO_REUSEPORT`, so a port whose last
/// connections (closed by the server first) were in TIME_WAIT could not be listened on
/// for a minute: "Address already in use" at start (seen when a test's clamd had used
/// the port just before).
#[test]
fn the_engine_listens_on_a_port_whose_last_connections_are_in_time_wait() {
    use std::io::Read;
    let port = free_port();
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (s, _) = l.accept().unwrap();
    // The server side closes first: its end of the connection stays in TIME_WAIT.
    drop(s);
    let mut b = [0u8; 1];
    assert_eq!(c.read(&mut b).unwrap(), 0);
    drop(c);
    drop(l);
    let ss = Command::new("ss")
        .args(["-tan", "state", "time-wait", "sport", &format!("= :{port}")])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&ss.stdout);
    assert!(
        listing.contains(&format!(":{port}")),
        "no TIME_WAIT: {listing}"
    );
    let engine = Engine::start(EngineConfig {
        smtp_port: Some(port),
        ..Default::default()
    });
    // Raw::connect reads and checks the 220 greeting.
    let mut r = Raw::connect(engine.smtp);
    r.send(b"QUIT\r\n");
    assert!(r.replies(1)[0].starts_with("221 "));
}
