#!/usr/bin/python3
"""Legitimate mail under a flood from blocked sources: with the XDP program, with the
engine's refusal at accept only, and with no flood.

Two network namespaces joined by a veth pair, addressed from 198.18.0.0/15 and removed
at the end: the gateway (`bulwark serve`, 2 cores, relaying to a `bulwark-load sink`,
and `bulwark-xdp` in the XDP runs) and the clients. `[ip] drop = 198.18.128.0/17`.
Legitimate mail: Postfix's `smtp-source` from 198.18.0.2 (--messages of 4 KiB over
--connections). Floods, each bounded in packets and seconds:

- syn: trafgen, --syn-rate SYNs a second from random sources in the dropped network
  (pinned to one CPU);
- connect: full TCP connections as fast as --connect-workers asyncio workers make them,
  from 64 addresses of the dropped network (each reads its reply and closes).

Without the program, SYNs reach the kernel (SYN-ACKs to spoofed sources, SYN cookies)
and completed connections reach the engine, which refuses them (554 5.7.1). Reports the
median messages/s of --runs runs per cell, the ratio to no flood, and the packets/s the
program dropped. With --results, rewrites the `flood` section of that file.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

from bench_peers import replace_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
OBJECT = os.path.join(ROOT, "target", "xdp", "bulwark-xdp.o")
GW, CL = "bflgw", "bflcl"
VG, VC = "bflvg", "bflvc"

CONNECT_FLOOD = r"""
import asyncio, random, signal, sys, time
secs, workers = float(sys.argv[1]), int(sys.argv[2])
end = [time.time() + secs]
signal.signal(signal.SIGINT, lambda *_: end.__setitem__(0, 0))
sources = ["198.18.129.%d" % i for i in range(1, 65)]
done = [0, 0]
async def worker():
    while time.time() < end[0]:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(
                "198.18.0.1", 2525, local_addr=(random.choice(sources), 0)), 1.0)
            await asyncio.wait_for(r.readline(), 1.0)
            w.close()
            done[0] += 1
        except (OSError, asyncio.TimeoutError):
            done[1] += 1
async def main():
    await asyncio.gather(*(worker() for _ in range(workers)))
asyncio.run(main())
print(done[0], done[1], flush=True)
"""


def sh(*args, check=True):
    return subprocess.run(args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ns(name, *args, **kw):
    return ["ip", "netns", "exec", name] + list(args)


def cleanup():
    for n in (GW, CL):
        sh("ip", "netns", "del", n, check=False)


def make_net():
    cleanup()
    sh("ip", "netns", "add", GW)
    sh("ip", "netns", "add", CL)
    sh("ip", "link", "add", VG, "type", "veth", "peer", "name", VC)
    sh("ip", "link", "set", VG, "netns", GW)
    sh("ip", "link", "set", VC, "netns", CL)
    sh("ip", "-n", GW, "addr", "add", "198.18.0.1/24", "dev", VG)
    sh("ip", "-n", CL, "addr", "add", "198.18.0.2/24", "dev", VC)
    for i in range(1, 65):
        sh("ip", "-n", CL, "addr", "add", "198.18.129.%d/32" % i, "dev", VC)
    for n, d in ((GW, VG), (CL, VC)):
        sh("ip", "-n", n, "link", "set", d, "up")
        sh("ip", "-n", n, "link", "set", "lo", "up")
    # Replies to the flood's sources leave by the client side, as to the Internet.
    sh("ip", "-n", GW, "route", "add", "default", "via", "198.18.0.2")
    out = sh("ip", "-n", GW, "-br", "link", "show", VG).stdout.split()
    return out[2]


def status(work):
    out = {}
    try:
        with open(os.path.join(work, "spool", "xdp.status")) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                out[k] = v
    except OSError:
        pass
    return out


def sink_count(report):
    try:
        with open(report) as f:
            return json.load(f)["received"]
    except (OSError, ValueError, KeyError):
        return 0


def legit(args, report):
    before = sink_count(report)
    t0 = time.time()
    sh(*ns(CL, "smtp-source", "-s", str(args.connections), "-m", str(args.messages), "-l", "4096",
           "-f", "a@client.test", "-t", "user@example.test", "198.18.0.1:2525"))
    end = time.time() + 60
    while sink_count(report) < before + args.messages:
        if time.time() > end:
            raise SystemExit("only %d of %d messages arrived" % (sink_count(report) - before, args.messages))
        time.sleep(0.01)
    return args.messages / (time.time() - t0)


def start_flood(args, kind, mac):
    if kind == "syn":
        return subprocess.Popen(ns(
            CL, "trafgen", "--dev", VC, "--cpus", "1", "-b", "%dpps" % args.syn_rate,
            "-n", str(args.syn_rate * args.flood_seconds), "-q",
            "{ eth(da=%s), ipv4(sa=198.18.128.1, sa[2]=drnd(128,255), sa[3]=drnd(), da=198.18.0.1, "
            "ttl=64), tcp(sp=drnd(1024,65535), dp=2525, seq=drnd(), syn, win=64240) }" % mac),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    return subprocess.Popen(ns(CL, "python3", "-c", CONNECT_FLOOD, str(args.flood_seconds),
                               str(args.connect_workers)),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--syn-rate", type=int, default=250_000)
    ap.add_argument("--connect-workers", type=int, default=400)
    ap.add_argument("--flood-seconds", type=int, default=60)
    ap.add_argument("--results")
    args = ap.parse_args()
    for tool in ("trafgen", "smtp-source"):
        if not shutil.which(tool):
            raise SystemExit("%s is missing: run scripts/setup.sh xdp" % tool)
    work = tempfile.mkdtemp(prefix="bulwark-flood-")
    procs = []
    try:
        mac = make_net()
        report = os.path.join(work, "sink.json")
        procs.append(subprocess.Popen(ns(GW, os.path.join(BIN, "bulwark-load"), "sink", "--listen",
                                         "127.0.0.1:2526", "--threads", "1", "--report", report),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        config = os.path.join(work, "bulwark.toml")
        with open(config, "w") as f:
            f.write("""[server]
hostname = "mx.flood.test"
listen = ["198.18.0.1:2525"]
metrics = "127.0.0.1:9325"
cores = 2

[spool]
dir = "%s"

[authentication]
enabled = false

[ip]
drop = ["198.18.128.0/17"]

[[domains]]
name = "example.test"
route = "127.0.0.1:2526"

[xdp]
interface = "%s"
object = "%s"
""" % (os.path.join(work, "spool"), VG, OBJECT))
        procs.append(subprocess.Popen(ns(GW, os.path.join(BIN, "bulwark"), "serve", "--config", config),
                                      stdout=subprocess.DEVNULL,
                                      stderr=open(os.path.join(work, "engine.log"), "w")))
        for _ in range(300):
            if sh(*ns(CL, "python3", "-c", "import socket; socket.create_connection(('198.18.0.1', 2525), 1)"),
                  check=False).returncode == 0:
                break
            time.sleep(0.1)
        rates = {}
        drops = {}
        floods = {}
        xdp_mode = "?"
        cells = [("none", "none"), ("xdp", "syn"), ("userspace", "syn"), ("xdp", "connect"),
                 ("userspace", "connect")]
        # Cells interleaved run by run, so that drift (caches, CPU frequency) is shared.
        for run in range(args.runs):
            for mode, kind in cells:
                loader = None
                if mode == "xdp":
                    loader = subprocess.Popen(
                        ns(GW, os.path.join(BIN, "bulwark-xdp"), "--config", config),
                        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "xdp.log"), "w"))
                    for _ in range(100):
                        if status(work).get("pid") == str(loader.pid):
                            break
                        time.sleep(0.1)
                    else:
                        raise SystemExit("bulwark-xdp did not attach")
                    with open(os.path.join(work, "xdp.log")) as f:
                        xdp_mode = "generic" if "generic mode" in f.read() else "native"
                flood = None
                if kind != "none":
                    before = status(work)
                    flood = start_flood(args, kind, mac)
                    time.sleep(1)
                t0 = time.time()
                rates.setdefault((mode, kind), []).append(legit(args, report))
                if flood:
                    # trafgen forks its senders: stop the whole group.
                    os.killpg(flood.pid, signal.SIGINT)
                    out, _ = flood.communicate()
                    elapsed = time.time() - t0 + 1
                    floods.setdefault((mode, kind), []).append(out.strip())
                    if mode == "xdp":
                        time.sleep(1.2)
                        after = status(work)
                        d = int(after.get("drop", 0)) - int(before.get("drop", 0))
                        drops.setdefault(kind, []).append(d / elapsed)
                if loader:
                    loader.terminate()
                    loader.wait()
                    time.sleep(0.5)
                print(run, mode, kind, "%.0f" % rates[(mode, kind)][-1], flush=True)
        results = {k: statistics.median(v) for k, v in rates.items()}
        base = results[("none", "none")]
        lines = [
            "<!-- flood:begin -->",
            "## Legitimate mail under a flood from blocked sources (issue 11)",
            "",
            "- Command: `scripts/bench-flood.sh` (= `scripts/bench_flood.py --messages %d --connections %d "
            "--runs %d --syn-rate %d --connect-workers %d`), as root; %s, %d CPUs." % (
                args.messages, args.connections, args.runs, args.syn_rate, args.connect_workers,
                os.uname().release, os.cpu_count()),
            "- Gateway and clients in two network namespaces joined by veth (XDP in %s mode on veth);"
            % xdp_mode,
            "  `bulwark serve` (2 cores, defaults, authentication off) relays to a `bulwark-load sink`;",
            "  `[ip] drop = [\"198.18.128.0/17\"]`. Legitimate: `smtp-source -s %d -m %d -l 4096` from"
            % (args.connections, args.messages),
            "  198.18.0.2. syn: trafgen at %d SYN/s from random sources of the dropped /17 (one CPU);"
            % args.syn_rate,
            "  connect: %d asyncio workers making full connections from 64 addresses of it."
            % args.connect_workers,
            "- Median messages/s of %d runs (cells interleaved run by run); the flood shares the"
            % args.runs,
            "  machine's 2 CPUs with the gateway and with smtp-source.",
            "",
            "| flood | no flood | with XDP | engine refusal only | XDP / no flood | XDP / refusal only |",
            "|---|---|---|---|---|---|",
        ]
        for kind in ("syn", "connect"):
            x, u = results[("xdp", kind)], results[("userspace", kind)]
            lines.append("| %s | %.0f | %.0f | %.0f | %.2f | %.2f |" % (kind, base, x, u, x / base, x / u))
        lines.append("")
        for kind in ("syn", "connect"):
            if kind in drops:
                lines.append("- %s flood: the program dropped a median %.0f packets/s (on the CPU that "
                             "receives the veth's packets: one core)." % (kind, statistics.median(drops[kind])))
        for (mode, kind), outs in sorted(floods.items()):
            if kind == "connect":
                ok = [o.split()[0] for o in outs if o.split()]
                lines.append("- connect flood, %s: connections completed per run: %s." % (
                    mode, ", ".join(ok)))
        lines.append("<!-- flood:end -->")
        table = "\n".join(lines)
        print(table)
        if args.results:
            replace_section(args.results, "flood", table)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
