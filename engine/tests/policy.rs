//! Policy snapshots published through shared memory, followed by a running engine.

mod common;

use std::time::Duration;

use common::*;

fn rcpt_code(engine: &Engine, rcpt: &str) -> String {
    let mut c = Raw::connect(engine.smtp);
    c.send(
        format!("EHLO c\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<{rcpt}>\r\nQUIT\r\n").as_bytes(),
    );
    let r = c.replies(4);
    r[2][..9.min(r[2].len())].to_string()
}

fn publish(config: &std::path::Path) -> (bool, String) {
    run(
        env!("CARGO_BIN_EXE_bulwark"),
        &["publish-policy", "--config", config.to_str().unwrap()],
    )
}

#[test]
fn published_policy_is_followed_without_restart_and_bad_images_are_refused() {
    let shm = TempDir::new("shm");
    let header = shm.path().join("policy");
    let sink = Sink::start(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let policy = format!("[policy]\nsnapshot = \"{}\"\n\n", header.display());
    let mut engine = Engine::start(EngineConfig {
        cores: 2,
        extra: format!("{policy}{}", domain("example.test", sink.addr)),
        ..Default::default()
    });
    assert_eq!(engine.metric("bulwark_policy_generation"), 1.0);
    assert_eq!(rcpt_code(&engine, "u@new.test"), "550 5.7.1");

    // The operator adds a domain and publishes: no restart.
    let text = std::fs::read_to_string(&engine.config).unwrap();
    let second = shm.path().join("second.toml");
    std::fs::write(
        &second,
        format!("{text}\n{}", domain("new.test", sink.addr)),
    )
    .unwrap();
    let (ok, out) = publish(&second);
    assert!(ok, "{out}");
    assert!(out.contains("published generation 2"), "{out}");
    assert!(wait_until(Duration::from_secs(2), || engine
        .metric("bulwark_policy_generation")
        == 2.0));
    assert_eq!(rcpt_code(&engine, "u@new.test"), "250 2.1.5");
    let (ok, out) = run(
        "swaks",
        &[
            "--server",
            &engine.smtp.to_string(),
            "--from",
            "s@sender.test",
            "--to",
            "u@new.test",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(sink.wait_for(1, Duration::from_secs(10)).len(), 1);

    // A damaged image under a raised generation: refused by every core, generation 2 stays.
    let image = std::fs::read(header.with_file_name("policy.0000000000000002")).unwrap();
    let mut bad = image.clone();
    let n = bad.len() - 7;
    bad[n] ^= 0x55;
    std::fs::write(header.with_file_name("policy.0000000000000003"), &bad).unwrap();
    let mut h = std::fs::read(&header).unwrap();
    h[8..16].copy_from_slice(&3u64.to_ne_bytes());
    std::fs::write(&header, &h).unwrap();
    assert!(wait_until(Duration::from_secs(2), || engine
        .metric("bulwark_policy_snapshots_refused_total")
        == 2.0));
    assert_eq!(engine.metric("bulwark_policy_generation"), 2.0);
    assert_eq!(rcpt_code(&engine, "u@new.test"), "250 2.1.5");
    assert!(
        engine
            .log_text()
            .contains("policy snapshot refused, keeping generation 2")
    );

    // The next good publication is taken, and survives a restart.
    let (ok, out) = publish(&engine.config);
    assert!(ok, "{out}");
    assert!(out.contains("published generation 4"), "{out}");
    assert!(wait_until(Duration::from_secs(2), || engine
        .metric("bulwark_policy_generation")
        == 4.0));
    assert_eq!(rcpt_code(&engine, "u@new.test"), "550 5.7.1");
    engine.restart();
    assert_eq!(engine.metric("bulwark_policy_generation"), 4.0);
}

#[test]
fn publish_policy_needs_a_snapshot_path() {
    let dir = TempDir::new("nopolicy");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[server]\ncores = 1\n").unwrap();
    let (ok, out) = publish(&cfg);
    assert!(!ok);
    assert!(out.contains("policy.snapshot is not set"), "{out}");
}
