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

/// The binaries, the namespaces joined by a veth pair (the gateway at 198.18.0.1, the
/// clients at 198.18.0.2 and .3), and a work directory.
struct Setup {
    net: Net,
    dir: PathBuf,
    object: PathBuf,
    loader: PathBuf,
    engine: PathBuf,
    vg: String,
}

fn setup(tag: &str) -> Setup {
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
    let (vg, vc) = (format!("bg{tag}{id}"), format!("bc{tag}{id}"));
    let dir = std::env::temp_dir().join(format!("bulwark-xdp-test-{tag}-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let net = Net {
        gw: format!("bwgw{tag}{id}"),
        cl: format!("bwcl{tag}{id}"),
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
    Setup {
        net,
        dir,
        object,
        loader,
        engine,
        vg,
    }
}

/// Starts the engine in the gateway namespace and waits until 198.18.0.3 gets a banner.
fn start_engine(s: &mut Setup, config: &Path) {
    s.net.children.push(
        Command::new("ip")
            .args(["netns", "exec", &s.net.gw])
            .arg(&s.engine)
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(s.dir.join("engine.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !connect(&s.net, "198.18.0.3").starts_with("220") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the engine did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `bulwark-xdp` in the gateway namespace and waits until it attached.
fn start_loader(s: &mut Setup, config: &Path) {
    s.net.children.push(
        Command::new("ip")
            .args(["netns", "exec", &s.net.gw])
            .arg(&s.loader)
            .args(["--config"])
            .arg(config)
            .arg("--object")
            .arg(&s.object)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(s.dir.join("xdp.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = s.dir.join("spool/xdp.status");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&status).is_ok_and(|t| t.contains("mode=")) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "bulwark-xdp did not attach: {}",
            std::fs::read_to_string(s.dir.join("xdp.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A counter from the loader's status file.
fn status_counter(s: &Setup, key: &str) -> u64 {
    std::fs::read_to_string(s.dir.join("spool/xdp.status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_dropped_source_gets_no_syn_ack_and_an_approved_one_inside_it_gets_its_banner() {
    let mut setup = setup("d");
    let dir = setup.dir.clone();
    let (engine, vg) = (setup.engine.clone(), setup.vg.clone());
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
    start_engine(&mut setup, &config);
    let net = &setup.net;
    // Without the program: the engine itself refuses the dropped network.
    let r = connect(net, "198.18.0.2");
    assert!(r.starts_with("554 5.7.1"), "{r}");

    start_loader(&mut setup, &config);
    let net = &setup.net;
    let gw = net.gw.clone();
    assert_eq!(
        connect(net, "198.18.0.2"),
        "timeout",
        "no SYN-ACK for a dropped source"
    );
    assert!(
        connect(net, "198.18.0.3").starts_with("220"),
        "the approved address inside the dropped network gets its banner"
    );
    // The counters reach the status file within a second or two.
    let t0 = Instant::now();
    while status_counter(&setup, "drop") == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "no drops counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A published generation replaces the lists in the other set of tries: 198.18.0.2 is
    // let through, then dropped again; the approved address gets its banner throughout.
    publish("\"198.18.0.9\"");
    let t0 = Instant::now();
    loop {
        let r = connect(net, "198.18.0.2");
        if r.starts_with("220") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "still refused: {r}");
    }
    publish("\"198.18.0.2\"");
    let t0 = Instant::now();
    loop {
        let r = connect(net, "198.18.0.2");
        if r == "timeout" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not dropped again: {r}"
        );
    }
    assert!(connect(net, "198.18.0.3").starts_with("220"));
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
    if let Some(mut l) = setup.net.children.pop() {
        let _ = l.kill();
        let _ = l.wait();
    }
    let t0 = Instant::now();
    loop {
        let r = connect(&setup.net, "198.18.0.2");
        if r.starts_with("554 5.7.1") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "still dropped: {r}");
    }
}

/// A dynamic block the engine imposes reaches the program's map: the client's SYNs
/// are dropped (counted as `drop_dynamic`) while it lasts, it expires on time, and an
/// operator lifting the next one (twice as long) lets the client in again within about a
/// second. Another address of the same network is not affected.
#[test]
fn a_dynamic_block_is_dropped_in_xdp_until_it_expires_or_is_lifted() {
    let mut setup = setup("y");
    let config = setup.dir.join("bulwark.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
hostname = "mx.xdp.test"
listen = ["198.18.0.1:2525"]
metrics = "127.0.0.1:9325"
cores = 2

[spool]
dir = "{}"

[authentication]
enabled = false

[throttle]
block_after = 2
block = "4s"

[throttle.unknown]
max_connections = 1

[xdp]
interface = "{}"
"#,
            setup.dir.join("spool").display(),
            setup.vg
        ),
    )
    .unwrap();
    start_engine(&mut setup, &config);
    start_loader(&mut setup, &config);
    // One connection held from 198.18.0.2; two more are refused (421) and the second
    // refusal blocks the client; once the loader copied the block (within a second or
    // so) its SYNs get no answer.
    let provoke = r#"
import socket, time
def open_(hold=None):
    s = socket.create_connection(("198.18.0.1", 2525), source_address=("198.18.0.2", 0), timeout=3)
    f = s.makefile("rb")
    line = f.readline().decode().strip()
    if line.startswith("220"):
        s.sendall(b"NOOP\r\n")
        line = f.readline().decode().strip()
    if hold is not None:
        hold.append(s)
    else:
        s.close()
    return line
held = []
print("held", open_(held))
print("refused", open_())
print("refused", open_())
"#;
    let run_client = |script: &str| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &setup.net.cl, "python3", "-c", script])
            .output()
            .expect("python3");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let out = run_client(provoke);
    assert!(out.contains("held 250"), "{out}");
    assert_eq!(out.matches("refused 421 4.7.0").count(), 2, "{out}");
    let blocked_at = Instant::now();
    let t0 = Instant::now();
    while connect(&setup.net, "198.18.0.2") != "timeout" {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the block did not reach the program: {}",
            std::fs::read_to_string(setup.dir.join("xdp.log")).unwrap_or_default()
        );
    }
    assert!(
        status_counter(&setup, "drop_dynamic") > 0 || {
            std::thread::sleep(Duration::from_millis(1200));
            status_counter(&setup, "drop_dynamic") > 0
        }
    );
    assert!(
        connect(&setup.net, "198.18.0.3").starts_with("220"),
        "another client is not affected"
    );
    // It ends on its own after 4 s.
    let t0 = Instant::now();
    loop {
        let r = connect(&setup.net, "198.18.0.2");
        if r.starts_with("220") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(8), "never expired: {r}");
    }
    let lasted = blocked_at.elapsed();
    assert!(
        lasted >= Duration::from_millis(3500),
        "released early: {lasted:?}"
    );
    // The next block lasts 8 s; an operator lifts it.
    let out = run_client(provoke);
    assert_eq!(out.matches("refused 421 4.7.0").count(), 2, "{out}");
    let t0 = Instant::now();
    while connect(&setup.net, "198.18.0.2") != "timeout" {
        assert!(t0.elapsed() < Duration::from_secs(3), "not dropped again");
    }
    let lifted = Command::new(&setup.engine)
        .args(["ip", "dynamic", "remove", "198.18.0.2", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&lifted.stdout).contains("block lifted"),
        "{lifted:?}"
    );
    let t0 = Instant::now();
    loop {
        let r = connect(&setup.net, "198.18.0.2");
        if r.starts_with("220") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "still dropped after it was lifted: {r}"
        );
    }
}
