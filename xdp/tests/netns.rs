//! The XDP program end to end, as root, in two network namespaces joined by a veth pair
//! (addresses from the benchmarking range 198.18.0.0/15), made and removed by the test:
//! the engine and `bulwark-xdp` in one, clients in the other. A source on `[ip] drop`
//! never gets a SYN-ACK while the program is attached, an approved address inside that
//! network gets its banner, a published policy generation replaces the lists, and
//! without the program the engine refuses the same source at accept.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and what runs in them; all removed on drop.
struct Net {
    gw: String,
    cl: String,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.gw, &self.cl] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What a client at `source` gets when it connects to the engine: its first line, or
/// `timeout` when no connection is made within two seconds.
fn connect(net: &Net, source: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.cl, "python3", "-c"])
        .arg(format!(
            r#"
import socket
s = socket.socket()
s.settimeout(2)
s.bind(("{source}", 0))
try:
    s.connect(("198.18.0.1", 2525))
    print(s.recv(512).decode().strip())
except socket.timeout:
    print("timeout")
except OSError as e:
    print("error", e)
"#
        ))
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_dropped_source_gets_no_syn_ack_and_an_approved_one_inside_it_gets_its_banner() {
    let object = workspace().join("target/xdp/bulwark-xdp.o");
    assert!(
        object.exists(),
        "{} is missing: run scripts/build-xdp.sh",
        object.display()
    );
    let loader = PathBuf::from(env!("CARGO_BIN_EXE_bulwark-xdp"));
    let engine = loader.with_file_name("bulwark");
    assert!(
        engine.exists(),
        "{} is missing: build the workspace (cargo build -p bulwark) first",
        engine.display()
    );
    let id = std::process::id() % 100_000;
    let (vg, vc) = (format!("bwg{id}"), format!("bwc{id}"));
    let dir = std::env::temp_dir().join(format!("bulwark-xdp-test-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut net = Net {
        gw: format!("bwgw{id}"),
        cl: format!("bwcl{id}"),
        children: Vec::new(),
        dir: dir.clone(),
    };
    let (gw, cl) = (net.gw.clone(), net.cl.clone());
    sh(&["ip", "netns", "add", &gw]);
    sh(&["ip", "netns", "add", &cl]);
    sh(&[
        "ip", "link", "add", &vg, "type", "veth", "peer", "name", &vc,
    ]);
    sh(&["ip", "link", "set", &vg, "netns", &gw]);
    sh(&["ip", "link", "set", &vc, "netns", &cl]);
    sh(&["ip", "-n", &gw, "addr", "add", "198.18.0.1/24", "dev", &vg]);
    sh(&["ip", "-n", &cl, "addr", "add", "198.18.0.2/24", "dev", &vc]);
    sh(&["ip", "-n", &cl, "addr", "add", "198.18.0.3/24", "dev", &vc]);
    for (ns, dev) in [(&gw, &vg), (&cl, &vc)] {
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let config = dir.join("bulwark.toml");
    let write_config = |drop: &str| {
        std::fs::write(
            &config,
            format!(
                r#"[server]
hostname = "mx.xdp.test"
listen = ["198.18.0.1:2525"]
metrics = "127.0.0.1:9325"
cores = 1

[spool]
dir = "{}"

[policy]
snapshot = "{}"

[authentication]
enabled = false

[ip]
drop = [{drop}]
allow = ["198.18.0.3"]

[xdp]
interface = "{vg}"
"#,
                dir.join("spool").display(),
                dir.join("policy").display(),
            ),
        )
        .unwrap()
    };
    write_config("\"198.18.0.0/24\"");
    // A new generation of the lists, published as `bulwark publish-policy` does.
    let publish = |drop: &str| {
        write_config(drop);
        let out = Command::new(&engine)
            .args(["publish-policy", "--config"])
            .arg(&config)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    net.children.push(
        Command::new("ip")
            .args(["netns", "exec", &gw])
            .arg(&engine)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("engine.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !connect(&net, "198.18.0.3").starts_with("220") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the engine did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Without the program: the engine itself refuses the dropped network.
    let r = connect(&net, "198.18.0.2");
    assert!(r.starts_with("554 5.7.1"), "{r}");

    net.children.push(
        Command::new("ip")
            .args(["netns", "exec", &gw])
            .arg(&loader)
            .args(["--config"])
            .arg(&config)
            .arg("--object")
            .arg(&object)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("xdp.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = dir.join("spool/xdp.status");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&status).is_ok_and(|s| s.contains("mode=")) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "bulwark-xdp did not attach: {}",
            std::fs::read_to_string(dir.join("xdp.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        connect(&net, "198.18.0.2"),
        "timeout",
        "no SYN-ACK for a dropped source"
    );
    assert!(
        connect(&net, "198.18.0.3").starts_with("220"),
        "the approved address inside the dropped network gets its banner"
    );
    // The counters reach the status file within a second or two.
    let t0 = Instant::now();
    loop {
        let s = std::fs::read_to_string(&status).unwrap_or_default();
        let dropped: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("drop="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if dropped > 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no drops counted: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A published generation replaces the lists in the other set of tries: 198.18.0.2 is
    // let through, then dropped again; the approved address gets its banner throughout.
    publish("\"198.18.0.9\"");
    let t0 = Instant::now();
    loop {
        let r = connect(&net, "198.18.0.2");
        if r.starts_with("220") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "still refused: {r}");
    }
    publish("\"198.18.0.2\"");
    let t0 = Instant::now();
    loop {
        let r = connect(&net, "198.18.0.2");
        if r == "timeout" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not dropped again: {r}"
        );
    }
    assert!(connect(&net, "198.18.0.3").starts_with("220"));
    assert!(
        std::fs::read_to_string(dir.join("xdp.log"))
            .unwrap_or_default()
            .matches("XDP lists replaced")
            .count()
            >= 2
    );
    // The engine reports what the loader wrote.
    let out = Command::new("ip")
        .args(["netns", "exec", &gw, "python3", "-c"])
        .arg("import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9325/metrics').read().decode())")
        .output()
        .expect("python3");
    let metrics = String::from_utf8_lossy(&out.stdout);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    assert!(
        value("bulwark_xdp_packets_total{action=\"drop\"} ") > 0.0,
        "{metrics}"
    );
    assert_eq!(
        value("bulwark_xdp_attached{mode=\"native\"} ")
            + value("bulwark_xdp_attached{mode=\"generic\"} "),
        1.0,
        "{metrics}"
    );
    // The loader gone, the program goes with it: the engine refuses at accept again.
    if let Some(mut l) = net.children.pop() {
        let _ = l.kill();
        let _ = l.wait();
    }
    let t0 = Instant::now();
    loop {
        let r = connect(&net, "198.18.0.2");
        if r.starts_with("554 5.7.1") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "still dropped: {r}");
    }
}
