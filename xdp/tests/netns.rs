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
    // The engine said it was not attached at start, then that it was.
    let t0 = Instant::now();
    loop {
        let log = std::fs::read_to_string(dir.join("engine.log")).unwrap_or_default();
        if log.contains("XDP program not attached") && log.contains("XDP program attached") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(8), "{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
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

/// Counts, in the client namespace, the SYN-ACKs the gateway sends: to the flood's
/// (blocked) sources and to the others, for `secs` seconds. Prints `blocked N other M`.
const SNIFFER: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0800))
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
blocked = other = 0
while time.time() < end:
    try:
        p = s.recv(2048)
    except socket.timeout:
        continue
    ip = p[14:]
    if len(ip) < 40 or ip[9] != 6:
        continue
    ihl = (ip[0] & 15) * 4
    tcp = ip[ihl:]
    if len(tcp) < 14 or struct.unpack("!H", tcp[0:2])[0] != 2525 or tcp[13] & 0x12 != 0x12:
        continue
    if ip[16] == 198 and ip[17] == 18 and ip[18] >= 128 and not (ip[18] == 200 and ip[19] == 5):
        blocked += 1
    else:
        other += 1
print("blocked", blocked, "other", other, flush=True)
"#;

/// A SYN flood (trafgen, 200,000 packets at 50,000 a second, random sources in the
/// dropped 198.18.128.0/17) while smtp-source sends 300 messages from an allowed address
/// and the drop list is swapped six times: no blocked source ever gets a SYN-ACK, the
/// approved address inside the dropped network gets its banner, every message arrives,
/// and no packet of allowed traffic is counted as dropped.
#[test]
fn a_syn_flood_from_blocked_sources_never_gets_a_syn_ack_while_mail_flows() {
    let mut setup = setup("f");
    let (gw, cl) = (setup.net.gw.clone(), setup.net.cl.clone());
    // SYN-ACKs to other sources leave by the client side (so the sniffer would see any).
    sh(&[
        "ip",
        "-n",
        &gw,
        "route",
        "add",
        "default",
        "via",
        "198.18.0.2",
    ]);
    sh(&[
        "ip",
        "-n",
        &cl,
        "addr",
        "add",
        "198.18.200.5/32",
        "dev",
        &format!("bc{}", &setup.vg[2..]),
    ]);
    let load = setup.engine.with_file_name("bulwark-load");
    assert!(
        load.exists(),
        "{} is missing: build the workspace",
        load.display()
    );
    let report = setup.dir.join("sink.json");
    setup.net.children.push(
        Command::new("ip")
            .args(["netns", "exec", &gw])
            .arg(&load)
            .args([
                "sink",
                "--listen",
                "127.0.0.1:2526",
                "--threads",
                "1",
                "--report",
            ])
            .arg(&report)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let config = setup.dir.join("bulwark.toml");
    let (work, vg) = (setup.dir.clone(), setup.vg.clone());
    let write_config = |drop: &str| {
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

[policy]
snapshot = "{}"

[authentication]
enabled = false

[ip]
drop = [{drop}]
allow = ["198.18.200.5"]

[[domains]]
name = "example.test"
route = "127.0.0.1:2526"

[xdp]
interface = "{}"
"#,
                work.join("spool").display(),
                work.join("policy").display(),
                vg
            ),
        )
        .unwrap()
    };
    let lists = [
        "\"198.18.128.0/17\"",
        "\"198.18.128.0/17\", \"198.18.99.0/24\"",
    ];
    write_config(lists[0]);
    start_engine(&mut setup, &config);
    start_loader(&mut setup, &config);
    let drops_before = status_counter(&setup, "drop");
    let mac = {
        let out = Command::new("ip")
            .args(["-n", &gw, "-br", "link", "show", &setup.vg])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .unwrap()
            .to_string()
    };
    let in_cl = |prog: &str, args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &cl, prog])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let sniffer = in_cl("python3", &["-c", SNIFFER, "6"]);
    std::thread::sleep(Duration::from_millis(300));
    const FLOOD: u64 = 200_000;
    let flood = in_cl(
        "trafgen",
        &[
            "--dev",
            &format!("bc{}", &setup.vg[2..]),
            "--cpus",
            "1",
            "-b",
            "50000pps",
            "-n",
            &FLOOD.to_string(),
            "-q",
            &format!(
                "{{ eth(da={mac}), ipv4(sa=198.18.128.1, sa[2]=drnd(128,255), sa[3]=drnd(), \
                 da=198.18.0.1, ttl=64), tcp(sp=drnd(1024,65535), dp=2525, seq=drnd(), syn, win=64240) }}"
            ),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let mail = in_cl(
        "smtp-source",
        &[
            "-s",
            "10",
            "-m",
            "300",
            "-l",
            "2048",
            "-f",
            "a@client.test",
            "-t",
            "user@example.test",
            "198.18.0.1:2525",
        ],
    );
    for i in 0..6 {
        let engine = setup.engine.clone();
        write_config(lists[(i + 1) % 2]);
        let out = Command::new(&engine)
            .args(["publish-policy", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            connect(&setup.net, "198.18.200.5").starts_with("220"),
            "the approved address inside the dropped network gets its banner"
        );
        std::thread::sleep(Duration::from_millis(400));
    }
    let mail = mail.wait_with_output().unwrap();
    assert!(mail.status.success(), "{mail:?}");
    let flood = flood.wait_with_output().unwrap();
    assert!(flood.status.success(), "trafgen: {flood:?}");
    let sniffed = String::from_utf8_lossy(&sniffer.wait_with_output().unwrap().stdout).to_string();
    let count = |k: &str| -> u64 {
        let mut it = sniffed.split_whitespace();
        while let Some(w) = it.next() {
            if w == k {
                return it.next().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
            }
        }
        u64::MAX
    };
    assert_eq!(
        count("blocked"),
        0,
        "a blocked source got a SYN-ACK: {sniffed}"
    );
    assert!(
        count("other") >= 10,
        "the sniffer saw the legitimate SYN-ACKs: {sniffed}"
    );
    let t0 = Instant::now();
    loop {
        let received = std::fs::read_to_string(&report)
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
            .and_then(|v| v["received"].as_u64())
            .unwrap_or(0);
        if received == 300 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{received} of 300 messages arrived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1300));
    let dropped = status_counter(&setup, "drop") - drops_before;
    assert!(
        dropped <= FLOOD,
        "{dropped} packets dropped for a flood of {FLOOD}: allowed traffic was dropped"
    );
    assert!(
        dropped >= FLOOD / 2,
        "only {dropped} of {FLOOD} flood packets dropped"
    );
    assert!(
        std::fs::read_to_string(setup.dir.join("xdp.log"))
            .unwrap_or_default()
            .matches("XDP lists replaced")
            .count()
            >= 6
    );
}
