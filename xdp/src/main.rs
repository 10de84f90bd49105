//! `bulwark-xdp`: the small privileged loader of Bulwark's XDP program (CAP_BPF and
//! CAP_NET_ADMIN; the engine itself needs neither). It reads the engine's configuration,
//! loads the program (`ebpf/`, built by `scripts/build-xdp.sh`), tells it the SMTP ports
//! the engine listens on, fills its approved and drop tries from `[ip] allow` and
//! `[ip] drop`, attaches it to `[xdp] interface` (native mode where the driver has it,
//! generic otherwise) and, every second, writes its packet counters to a status file
//! the engine reports in its metrics. The program stays attached while the loader runs.
//!
//! With `[policy] snapshot`, it follows the published policy as the engine does: a new
//! generation whose lists differ is written into the set of tries the program does not
//! read, then one index switches the program to it, so no packet ever sees a half-written
//! list (the old set is emptied at the next change). A generation that cannot be applied
//! (a map refuses an entry) leaves the lists in force and the loader running.
//!
//! Every second it also copies the engine's dynamic blocks (harvest and throttles, asked
//! of its admin socket) into the program's `DYNAMIC` map with their expiry, and removes
//! those the engine no longer lists (expired or lifted by an operator).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use bulwark_policy::Cidr;
use clap::Parser;
use tracing::{info, warn};

#[derive(Parser)]
#[command(name = "bulwark-xdp", version, about)]
struct Args {
    /// The engine's configuration file.
    #[arg(long, short)]
    config: PathBuf,
    /// The compiled program (default: `[xdp] object`).
    #[arg(long)]
    object: Option<PathBuf>,
    /// The interface to attach to (default: `[xdp] interface`).
    #[arg(long)]
    interface: Option<String>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("bulwark-xdp: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = bulwark::config::Config::load(&args.config)
        .map_err(|e| anyhow!("{}: {e}", args.config.display()))?;
    let interface = args
        .interface
        .or_else(|| config.xdp.interface.clone())
        .ok_or_else(|| anyhow!("no interface: set [xdp] interface or pass --interface"))?;
    let object = args.object.unwrap_or_else(|| config.xdp.object.clone());
    let mut ebpf =
        aya::Ebpf::load_file(&object).with_context(|| format!("loading {}", object.display()))?;

    let mut ports: Array<&mut MapData, u16> = Array::try_from(
        ebpf.map_mut("PORTS")
            .ok_or_else(|| anyhow!("the program has no PORTS map"))?,
    )?;
    let mut listen: Vec<u16> = config.server.listen.iter().map(|a| a.port()).collect();
    listen.sort_unstable();
    listen.dedup();
    if listen.len() > 8 {
        bail!("at most 8 listening ports can be watched");
    }
    for (i, p) in listen.iter().enumerate() {
        ports.set(i as u32, p, 0)?;
    }
    let policy = config.policy();
    set_prefixes(
        &mut ebpf,
        policy.throttle.ipv4_prefix,
        policy.throttle.ipv6_prefix,
    )?;
    fill(&mut ebpf, "ALLOW_A", &policy.ips.allow)?;
    fill(&mut ebpf, "DROP_A", &policy.ips.drop)?;
    set_active(&mut ebpf, 0)?;
    let mut lists = (policy.ips.allow.clone(), policy.ips.drop.clone());
    let mut active = 0u32;
    let follower = match &config.policy.snapshot {
        Some(path) => Some(
            bulwark_policy::shm::Follower::open(path)
                .with_context(|| format!("policy.snapshot: cannot follow {}", path.display()))?,
        ),
        None => None,
    };
    let mut seen = 0u64;

    let program: &mut Xdp = ebpf
        .program_mut("bulwark_xdp")
        .ok_or_else(|| anyhow!("the object has no bulwark_xdp program"))?
        .try_into()?;
    program.load().context("the kernel refused the program")?;
    let mode = match program.attach(&interface, XdpMode::Driver) {
        Ok(_) => "native",
        Err(e) => {
            warn!(%interface, "native XDP not available ({e}); attaching in generic mode");
            program
                .attach(&interface, XdpMode::Skb)
                .with_context(|| format!("attaching to {interface}"))?;
            "generic"
        }
    };
    info!(
        %interface,
        mode,
        ports = ?listen,
        allow = policy.ips.allow.len(),
        drop = policy.ips.drop.len(),
        "XDP program attached"
    );
    let status = config.xdp_status_path();
    let admin = config.admin_dir();
    let mut dynamic: std::collections::HashSet<[u8; 16]> = Default::default();
    let mut tick = 0u64;
    loop {
        if let Some(f) = &follower {
            let generation = f.generation();
            if generation != 0 && generation != seen {
                seen = generation;
                match f.load(generation) {
                    Ok(snapshot) => {
                        let ips = &snapshot.policy().ips;
                        let native = |l: &[bulwark_policy::ArchivedCidr]| -> Vec<Cidr> {
                            l.iter()
                                .map(|c| Cidr {
                                    addr: c.addr,
                                    prefix: c.prefix,
                                })
                                .collect()
                        };
                        let t = &snapshot.policy().throttle;
                        if let Err(e) = set_prefixes(&mut ebpf, t.ipv4_prefix, t.ipv6_prefix) {
                            warn!(generation, "client prefixes not set: {e:#}");
                        }
                        let next = (native(&ips.allow), native(&ips.drop));
                        if next != lists {
                            match swap(&mut ebpf, 1 - active, &next.0, &next.1) {
                                Ok(()) => {
                                    active = 1 - active;
                                    info!(
                                        generation,
                                        allow = next.0.len(),
                                        drop = next.1.len(),
                                        "XDP lists replaced"
                                    );
                                    lists = next;
                                }
                                // The set in force was not touched.
                                Err(e) => warn!(
                                    generation,
                                    "XDP lists not replaced, the previous ones stay in force: {e:#}"
                                ),
                            }
                        }
                    }
                    Err(e) => warn!(generation, "policy snapshot refused, lists unchanged: {e}"),
                }
            }
        }
        tick += 1;
        if tick % 4 != 1 {
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        if let Err(e) = sync_dynamic(&mut ebpf, &admin, &mut dynamic) {
            warn!("dynamic blocks not copied: {e:#}");
        }
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            ebpf.map("COUNTERS")
                .ok_or_else(|| anyhow!("the program has no COUNTERS map"))?,
        )?;
        let sum = |i: u32| -> u64 { counters.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0) };
        let (pass, dropped, dynamic) = (sum(0), sum(1), sum(2));
        if let Err(e) = write_status(&status, mode, &interface, pass, dropped, dynamic) {
            warn!(path = %status.display(), "cannot write the status file: {e}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn set_prefixes(ebpf: &mut aya::Ebpf, v4: u8, v6: u8) -> anyhow::Result<()> {
    let mut prefixes: Array<&mut MapData, u32> = Array::try_from(
        ebpf.map_mut("PREFIXES")
            .ok_or_else(|| anyhow!("the program has no PREFIXES map"))?,
    )?;
    prefixes.set(0, v4 as u32, 0)?;
    prefixes.set(1, v6 as u32, 0)?;
    Ok(())
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn parse_key(hex: &str) -> Option<[u8; 16]> {
    let mut k = [0u8; 16];
    if hex.len() != 32 {
        return None;
    }
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// Copies the engine's dynamic blocks into `DYNAMIC` (expiry on the program's clock) and
/// removes the ones it copied before that the engine no longer lists. An engine that
/// does not answer leaves the map as it is (the entries expire by themselves).
fn sync_dynamic(
    ebpf: &mut aya::Ebpf,
    admin: &Path,
    copied: &mut std::collections::HashSet<[u8; 16]>,
) -> anyhow::Result<()> {
    use bulwark::admin::{ClientRequest, ClientResponse};
    let r: ClientResponse = match bulwark::admin::ask_core(admin, 0, &ClientRequest::DynamicList) {
        Ok(r) => r,
        Err(bulwark::admin::ClientError::NoEngine(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut map: BpfHashMap<&mut MapData, [u8; 16], u64> = BpfHashMap::try_from(
        ebpf.map_mut("DYNAMIC")
            .ok_or_else(|| anyhow!("the program has no DYNAMIC map"))?,
    )?;
    let now = ktime_ns();
    let mut listed = std::collections::HashSet::new();
    for b in &r.blocks {
        let Some(key) = parse_key(&b.key) else {
            warn!(key = %b.key, "the engine listed a block with a bad key");
            continue;
        };
        map.insert(key, now + b.remaining_ms * 1_000_000, 0)
            .with_context(|| format!("DYNAMIC: {}", b.network))?;
        if !copied.contains(&key) {
            info!(client = %b.network, reason = %b.reason, "dynamic block copied to XDP");
        }
        listed.insert(key);
    }
    for gone in copied.difference(&listed) {
        let _ = map.remove(gone);
    }
    *copied = listed;
    Ok(())
}

fn set_active(ebpf: &mut aya::Ebpf, set: u32) -> anyhow::Result<()> {
    let mut active: Array<&mut MapData, u32> = Array::try_from(
        ebpf.map_mut("ACTIVE")
            .ok_or_else(|| anyhow!("the program has no ACTIVE map"))?,
    )?;
    active.set(0, set, 0)?;
    Ok(())
}

/// Writes `allow` and `drop` into set `set` (emptied first), then switches the program
/// to it.
fn swap(ebpf: &mut aya::Ebpf, set: u32, allow: &[Cidr], drop: &[Cidr]) -> anyhow::Result<()> {
    let (a, d) = if set == 1 {
        ("ALLOW_B", "DROP_B")
    } else {
        ("ALLOW_A", "DROP_A")
    };
    clear(ebpf, a)?;
    clear(ebpf, d)?;
    fill(ebpf, a, allow)?;
    fill(ebpf, d, drop)?;
    set_active(ebpf, set)
}

fn clear(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<()> {
    let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(
        ebpf.map_mut(name)
            .ok_or_else(|| anyhow!("the program has no {name} map"))?,
    )?;
    let keys: Vec<Key<[u8; 16]>> = trie.keys().filter_map(Result::ok).collect();
    for k in &keys {
        trie.remove(k)
            .with_context(|| format!("{name}: removing an entry"))?;
    }
    Ok(())
}

/// Fills an (empty) trie with `cidrs`, keyed in the 128-bit form.
fn fill(ebpf: &mut aya::Ebpf, name: &str, cidrs: &[Cidr]) -> anyhow::Result<()> {
    let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(
        ebpf.map_mut(name)
            .ok_or_else(|| anyhow!("the program has no {name} map"))?,
    )?;
    for c in cidrs {
        trie.insert(&Key::new(c.prefix as u32, c.addr), 1, 0)
            .with_context(|| format!("{name}: {c}"))?;
    }
    Ok(())
}

/// `mode=…`, the interface and the counters, one `key=value` per line, replaced
/// atomically.
fn write_status(
    path: &Path,
    mode: &str,
    interface: &str,
    pass: u64,
    dropped: u64,
    dynamic: u64,
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    write!(
        f,
        "mode={mode}\ninterface={interface}\npid={}\npass={pass}\ndrop={dropped}\ndrop_dynamic={dynamic}\n",
        std::process::id()
    )?;
    std::fs::rename(&tmp, path)
}
