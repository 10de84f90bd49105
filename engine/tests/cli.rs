//! The `bulwark` command line.

mod common;

use std::process::Command;

use common::TempDir;

fn bulwark(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bulwark.toml");
    let (ok, out, err) = bulwark(&["check-config", example]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("OK (1 domain, listening on 127.0.0.1:2525)"),
        "{out}"
    );
}

#[test]
fn check_config_names_every_bad_key_with_its_line() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"localhost\"]\n\n[queue]\nlifetime = \"forever\"\nretry = []\n\n[[domains]]\nname = \"example.test\"\nroute = \"mail.example.test:0\"\n\n[tls]\ncert = \"/nonexistent.pem\"\n",
    )
    .unwrap();
    let (ok, _, err) = bulwark(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    for expected in [
        "line 2: server.listen[0]: \"localhost\" is not an IP:port address",
        "line 5: queue.lifetime: \"forever\" is not a duration",
        "line 4: queue.retry: needs at least one delay",
        "line 10: domains[0].route: \"mail.example.test:0\": port must be 1..=65535",
        "line 12: tls.key: is required",
        "line 13: tls.cert: cannot read \"/nonexistent.pem\"",
        "6 errors",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn check_config_reports_syntax_errors_with_a_line() {
    let dir = TempDir::new("cli");
    let path = dir.path().join("syntax.toml");
    std::fs::write(&path, "[server]\nhostname = \"a\"\n[spool\n").unwrap();
    let (ok, _, err) = bulwark(&["check-config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("line 3: TOML syntax"), "{err}");
}

#[test]
fn serve_refuses_a_taken_port_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new("cli");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = [\"127.0.0.1:{port}\"]\nmetrics = \"\"\ncores = 1\n[spool]\ndir = \"{}\"\n", dir.path().join("spool").display()),
    )
    .unwrap();
    let (ok, _, err) = bulwark(&["serve", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(&format!("server.listen: cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn queue_options_go_before_or_after_the_operation() {
    // No engine runs here: both orders must get as far as reading the configuration.
    for args in [
        &["queue", "--config", "/nonexistent/bulwark.toml", "list"][..],
        &["queue", "list", "--config", "/nonexistent/bulwark.toml"][..],
        &["queue", "show", "X", "--admin-dir", "/nonexistent/admin"][..],
    ] {
        let (ok, _, err) = bulwark(args);
        assert!(!ok);
        assert!(
            !err.contains("unexpected argument") && err.contains("/nonexistent"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn the_example_systemd_unit_verifies() {
    // The unit as shipped, pointed at this build's binary and the example configuration.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/bulwark.service"
    ))
    .unwrap();
    assert!(unit.contains("Restart=always"));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/bulwark.toml");
    let unit = unit
        .replace("/usr/local/bin/bulwark", env!("CARGO_BIN_EXE_bulwark"))
        .replace("/etc/bulwark/bulwark.toml", example);
    let dir = TempDir::new("unit");
    let path = dir.path().join("bulwark.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd) is needed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("bulwark.service:"), "{text}");
}
