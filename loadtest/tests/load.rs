//! bulwark-load's send and sink, run as real processes against each other.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bulwark-load");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bulwark-load-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Sink {
    child: Child,
    port: u16,
    report: std::path::PathBuf,
}

impl Sink {
    fn start(dir: &std::path::Path, extra: &[&str]) -> Sink {
        let port = free_port();
        let report = dir.join("report.json");
        let mut child = Command::new(BIN)
            .args([
                "sink",
                "--threads",
                "1",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--report",
            ])
            .arg(&report)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("sink listening"), "{line}");
        Sink {
            child,
            port,
            report,
        }
    }

    fn report(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.report).unwrap_or_else(|_| "{}".into());
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// SIGTERM: the sink writes its final report and exits 0.
    fn stop(mut self) -> serde_json::Value {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "sink exited with {status}");
        self.report()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn send(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).arg("send").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn send_reports_json_and_the_sink_verifies_every_message() {
    let dir = tmp("json");
    let ids = dir.join("ids.txt");
    let sink = Sink::start(&dir, &["--ids", ids.to_str().unwrap()]);
    let target = format!("127.0.0.1:{}", sink.port);
    let (ok, out, err) = send(&[
        "--target",
        &target,
        "--connections",
        "5",
        "--messages",
        "300",
        "--size",
        "2048",
        "--attachment",
        "500",
        "--json",
    ]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["sent"], 300);
    assert_eq!(j["accepted"], 300);
    assert_eq!(j["rejected"], 0);
    assert_eq!(j["errors"], 0);
    for k in ["seconds", "messages_per_sec"] {
        assert!(j[k].as_f64().unwrap() > 0.0, "{k}");
    }
    for k in ["p50", "p90", "p99", "max"] {
        assert!(j["latency_ms"][k].as_f64().unwrap() > 0.0, "{k}");
    }
    let r = sink.stop();
    assert_eq!(r["received"], 300);
    assert_eq!(r["complete"], 300);
    assert_eq!(r["incomplete"], 0);
    assert!(r["first_at"].as_f64().unwrap() <= r["last_at"].as_f64().unwrap());
    let text = std::fs::read_to_string(&ids).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 300);
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 300, "Message-IDs are not unique");
}

#[test]
fn sink_injects_replies_at_the_given_rate() {
    let dir = tmp("inject");
    let sink = Sink::start(
        &dir,
        &[
            "--reply-rcpt",
            "550 5.1.1 unknown user",
            "--fail-rate",
            "0.5",
        ],
    );
    let target = format!("127.0.0.1:{}", sink.port);
    let (ok, out, err) = send(&[
        "--target",
        &target,
        "--connections",
        "4",
        "--messages",
        "400",
        "--json",
    ]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rejected = j["rejected"].as_u64().unwrap();
    assert_eq!(j["accepted"].as_u64().unwrap() + rejected, 400);
    assert!(
        (100..300).contains(&rejected),
        "rejected {rejected} of 400 at rate 0.5"
    );
    assert_eq!(j["rejected_by_code"]["550"].as_u64().unwrap(), rejected);
    let r = sink.stop();
    assert_eq!(r["rejected_rcpt"].as_u64().unwrap(), rejected);
    assert_eq!(r["received"].as_u64().unwrap(), 400 - rejected);
}

#[test]
fn sink_data_replies_and_text_report() {
    let dir = tmp("data");
    let sink = Sink::start(&dir, &["--reply-data", "451 4.3.0 try later"]);
    let target = format!("127.0.0.1:{}", sink.port);
    let (ok, out, _) = send(&[
        "--target",
        &target,
        "--connections",
        "2",
        "--messages",
        "20",
    ]);
    assert!(!ok, "a run with nothing accepted must fail");
    assert!(out.contains("rejected   20  (451: 20)"), "{out}");
    assert!(out.contains("DATA end → reply"), "{out}");
    assert_eq!(sink.stop()["rejected_data"], 20);
}

#[test]
fn hold_keeps_idle_connections_until_stopped() {
    let dir = tmp("hold");
    let sink = Sink::start(&dir, &[]);
    let mut child = Command::new(BIN)
        .args([
            "send",
            "--target",
            &format!("127.0.0.1:{}", sink.port),
            "--hold",
            "200",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("holding 200 connections"), "{line}");
    let end = Instant::now() + Duration::from_secs(5);
    while sink.report()["connections"].as_u64().unwrap_or(0) < 200 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sink.report()["connections"], 200);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    assert_eq!(sink.stop()["received"], 0);
}

#[test]
fn bad_arguments_are_named() {
    let out = Command::new(BIN)
        .args(["sink", "--listen", "127.0.0.1:0", "--reply-rcpt", "oops"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--reply-rcpt: \"oops\" must start with a 3-digit code")
    );
    let (ok, _, err) = send(&["--target", "nowhere"]);
    assert!(!ok);
    assert!(
        err.contains("'--target <TARGET>': \"nowhere\" is not HOST:PORT"),
        "{err}"
    );
}

#[test]
fn send_with_tls_uses_starttls() {
    let dir = tmp("tls");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    let plain = Sink::start(&dir, &[]);
    let (ok, _, err) = send(&[
        "--target",
        &format!("127.0.0.1:{}", plain.port),
        "--tls",
        "--messages",
        "5",
    ]);
    assert!(!ok, "--tls must fail against a server without STARTTLS");
    assert!(err.contains("did not offer STARTTLS"), "{err}");
    drop(plain);
    let dir2 = tmp("tls2");
    let sink = Sink::start(
        &dir2,
        &[
            "--tls-cert",
            c.to_str().unwrap(),
            "--tls-key",
            k.to_str().unwrap(),
        ],
    );
    let (ok, out, err) = send(&[
        "--target",
        &format!("127.0.0.1:{}", sink.port),
        "--tls",
        "--connections",
        "3",
        "--messages",
        "60",
        "--json",
    ]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["accepted"], 60);
    let r = sink.stop();
    assert_eq!(r["complete"], 60);
}
