//! The consoles in a real browser: headless Chromium driven by Selenium
//! (tests/browser/*.py) against a real engine, control service and sink. Screenshots go
//! to $BULWARK_SCREENSHOTS when it is set (scripts/screenshots.sh sets it to
//! docs/screenshots), else to the test's directory.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn the_administrator_console_in_a_browser() {
    let dir = tmp("browser-admin");
    let load = Path::new(CONTROL).with_file_name("bulwark-load");
    let report = dir.join("sink.json");
    let sink_port = free_port();
    let _sink = Proc(
        Command::new(&load)
            .args(["sink", "--threads", "1", "--listen"])
            .arg(format!("127.0.0.1:{sink_port}"))
            .arg("--report")
            .arg(&report)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(sink_port);
    let (c, _engine, smtp, _) = control_and_engine(&dir);
    let password = "correct horse battery staple";
    let out = Command::new(CONTROL)
        .args(["account", "create", "--name", "admin", "--config"])
        .arg(&c.config)
        .env("BULWARK_PASSWORD", password)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shots = std::env::var("BULWARK_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.join("screenshots"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/admin_console.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .env("CONSOLE_URL", &c.url)
        .env("ADMIN_NAME", "admin")
        .env("ADMIN_PASSWORD", password)
        .env("API_TOKEN", &c.token)
        .env("SMTP_PORT", smtp.to_string())
        .env("SINK_PORT", sink_port.to_string())
        .env("SINK_REPORT", &report)
        .env("SHOTS", &shots)
        .output()
        .expect("python3 with selenium (scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "the browser journeys failed:\n{text}");
    assert!(text.contains("browser journeys passed"), "{text}");
    assert!(shots.join("07-quarantine.png").exists());
}

#[test]
fn the_end_user_console_in_a_browser() {
    let dir = tmp("browser-user");
    let load = Path::new(CONTROL).with_file_name("bulwark-load");
    let mailbox = dir.join("mailbox");
    let sink_port = free_port();
    let _sink = Proc(
        Command::new(&load)
            .args(["sink", "--threads", "1", "--listen"])
            .arg(format!("127.0.0.1:{sink_port}"))
            .arg("--save")
            .arg(&mailbox)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(sink_port);
    let (c, _engine, smtp, _) = control_and_engine(&dir);
    let route = format!("127.0.0.1:{sink_port}");
    let csv = dir.join("users.csv");
    std::fs::write(&csv, "Email,Name\ncarol@example.test,Carol\n").unwrap();
    for args in [
        vec!["domain", "add", "example.test", "--route", &route],
        vec!["directory", "import", "example.test", csv.to_str().unwrap()],
        vec!["verdicts", "set", "spam_action=quarantine"],
    ] {
        let (ok, out) = cli(&c, &args);
        assert!(ok, "{args:?}: {out}");
    }
    let shots = std::env::var("BULWARK_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.join("screenshots"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/enduser_console.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .env("CONSOLE_URL", &c.url)
        .env("API_TOKEN", &c.token)
        .env("SMTP_PORT", smtp.to_string())
        .env("MAILBOX", &mailbox)
        .env("SHOTS", &shots)
        .output()
        .expect("python3 with selenium (scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "the browser journeys failed:\n{text}");
    assert!(text.contains("end-user journeys passed"), "{text}");
    assert!(shots.join("14-user-quarantine.png").exists());
}
