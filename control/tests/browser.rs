//! The consoles in a real browser: headless Chromium driven by Selenium
//! (tests/browser/*.py) against a real engine, control service and sink. Screenshots go
//! to $BULWARK_SCREENSHOTS when it is set (scripts/screenshots.sh sets it to
//! docs/screenshots), else to the test's directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn screenshots(dir: &Path) -> PathBuf {
    std::env::var("BULWARK_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.join("screenshots"))
}

/// Runs `tests/browser/SCRIPT` with `env`; fails unless it prints `passed`.
fn journeys(script: &str, env: &[(&str, &std::ffi::OsStr)], passed: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser")
        .join(script);
    let out = Command::new("python3")
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .expect("python3 with selenium (scripts/setup.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "the browser journeys failed:\n{text}");
    assert!(text.contains(passed), "{text}");
}

#[test]
fn the_administrator_console_in_a_browser() {
    let dir = tmp("browser-admin");
    let report = dir.join("sink.json");
    let (_sink, sink_port) = load_sink(&["--report".as_ref(), report.as_os_str()]);
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
    let shots = screenshots(&dir);
    let (smtp, sink) = (smtp.to_string(), sink_port.to_string());
    journeys(
        "admin_console.py",
        &[
            ("CONSOLE_URL", c.url.as_ref()),
            ("ADMIN_NAME", "admin".as_ref()),
            ("ADMIN_PASSWORD", password.as_ref()),
            ("API_TOKEN", c.token.as_ref()),
            ("SMTP_PORT", smtp.as_ref()),
            ("SINK_PORT", sink.as_ref()),
            ("SINK_REPORT", report.as_os_str()),
            ("SHOTS", shots.as_os_str()),
        ],
        "browser journeys passed",
    );
    assert!(shots.join("07-quarantine.png").exists());
}

#[test]
fn the_end_user_console_in_a_browser() {
    let dir = tmp("browser-user");
    let mailbox = dir.join("mailbox");
    let (_sink, sink_port) = load_sink(&["--save".as_ref(), mailbox.as_os_str()]);
    let (c, _engine, smtp, _) = control_and_engine(&dir);
    add_domain_routed_to(&c, "example.test", sink_port);
    let csv = dir.join("users.csv");
    std::fs::write(&csv, "Email,Name\ncarol@example.test,Carol\n").unwrap();
    for args in [
        vec!["directory", "import", "example.test", csv.to_str().unwrap()],
        vec!["verdicts", "set", "spam_action=quarantine"],
    ] {
        let (ok, out) = cli(&c, &args);
        assert!(ok, "{args:?}: {out}");
    }
    let shots = screenshots(&dir);
    let smtp = smtp.to_string();
    journeys(
        "enduser_console.py",
        &[
            ("CONSOLE_URL", c.url.as_ref()),
            ("API_TOKEN", c.token.as_ref()),
            ("SMTP_PORT", smtp.as_ref()),
            ("MAILBOX", mailbox.as_os_str()),
            ("SHOTS", shots.as_os_str()),
        ],
        "end-user journeys passed",
    );
    assert!(shots.join("14-user-quarantine.png").exists());
}
