#!/usr/bin/python3
"""The relay with the connection tier on and off, and the DNS lists' cache under load.

Two engines in turn (2 cores, inspection and authentication off, as the relay figure of
record), each relaying to the same `bulwark-load sink`:

- off: no DNS lists, every throttle 0 (off), harvest protection off;
- on: two DNS lists (a standard and a dynamic one, with answer filters) served by a local
  dnsmasq that lists none of the clients (an empty block list), and the throttles of the
  sender groups at their defaults (50 connections at once, 100 messages a session, …).

The client is `bulwark-load send --sources 127.0.1.0/26` (62 client addresses taken in
turn by each new connection, so the throttles count 62 clients and the DNS lists see 62
keys a zone), --connections over --messages of 4 KiB; runs interleaved. Reports the median messages/s of each, the ratio,
and the DNS list cache's hit rate (`bulwark_dnsbl_cache_total`) over the `on` runs. With
--results, rewrites the `reputation` section of that file.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request

from bench_peers import free_port, replace_section, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def metrics(port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def engine_config(work, name, smtp, mport, sink, dns, on):
    spool = os.path.join(work, name)
    text = """[server]
hostname = "mx.bench.test"
listen = ["127.0.0.1:%d"]
metrics = "127.0.0.1:%d"
cores = 2

[spool]
dir = "%s"

[inspection]
enabled = false

[authentication]
enabled = false

[[domains]]
name = "example.test"
route = "127.0.0.1:%d"
""" % (smtp, mport, spool, sink)
    if on:
        text += """
[dns]
nameservers = ["127.0.0.1:%d"]

[reputation]
dnsbl_threshold = 2

[[reputation.dnsbl]]
zone = "bl.bench.test"
weight = 2
answers = ["127.0.0.[2..11]"]

[[reputation.dnsbl]]
zone = "dyn.bench.test"
weight = 2
class = "dynamic"
""" % dns
    else:
        text += """
[harvest]
max_unknown = 0

[throttle]
block_after = 0

[throttle.unknown]
max_connections = 0
messages_per_session = 0
"""
    path = os.path.join(work, name + ".toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sources", default="127.0.1.0/26")
    ap.add_argument("--results")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bulwark-reputation-")
    procs = []
    try:
        dns = free_port()
        procs.append(subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--port=%d" % dns,
             "--listen-address=127.0.0.1", "--bind-interfaces", "--local=/bench.test/",
             "--host-record=2.0.0.127.bl.bench.test,127.0.0.2", "--local-ttl=300",
             "--pid-file=%s" % os.path.join(work, "dnsmasq.pid")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sink = free_port()
        procs.append(subprocess.Popen(
            [os.path.join(BIN, "bulwark-load"), "sink", "--listen", "127.0.0.1:%d" % sink,
             "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(sink)
        rates = {"off": [], "on": []}
        codes = {"off": {}, "on": {}}
        cache = {"hit": 0, "lookup": 0, "merged": 0}
        for run in range(args.runs):
            for mode in ("off", "on"):
                smtp, mport = free_port(), free_port()
                cfg = engine_config(work, "%s%d" % (mode, run), smtp, mport, sink, dns, mode == "on")
                e = subprocess.Popen([os.path.join(BIN, "bulwark"), "serve", "--config", cfg],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(work, "engine-%s.log" % mode), "w"))
                try:
                    wait_port(smtp)
                    out = subprocess.run(
                        [os.path.join(BIN, "bulwark-load"), "send", "--target", "127.0.0.1:%d" % smtp,
                         "--connections", str(args.connections), "--messages", str(args.messages),
                         "--size", "4096", "--sources", args.sources, "--json"],
                        check=True, stdout=subprocess.PIPE, text=True).stdout
                    r = json.loads(out)
                    rates[mode].append(r["accepted"] / r["seconds"])
                    for c, n in r.get("rejected_by_code", {}).items():
                        codes[mode][c] = codes[mode].get(c, 0) + n
                    codes[mode]["closed"] = codes[mode].get("closed", 0) + r["errors"]
                    if mode == "on":
                        m = metrics(mport)
                        for k in cache:
                            cache[k] += m.get('bulwark_dnsbl_cache_total{result="%s"}' % k, 0)
                finally:
                    e.terminate()
                    e.wait()
                print(run, mode, "%.0f" % rates[mode][-1], flush=True)
        off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
        asked = sum(cache.values())
        lines = [
            "<!-- reputation:begin -->",
            "## The relay with the connection tier on (issue 11)",
            "",
            "- Command: `scripts/bench-reputation.sh` (= `scripts/bench_reputation.py --messages %d "
            "--connections %d --runs %d --sources %s`); %s, %d CPUs." % (
                args.messages, args.connections, args.runs, args.sources, os.uname().release,
                os.cpu_count()),
            "- `bulwark serve`, 2 cores, inspection and authentication off, relaying to a `bulwark-load sink`;",
            "  client `bulwark-load send` with 4 KiB messages from %s (every address a client)." % args.sources,
            "  off: no DNS lists, throttles and harvest protection off. on: two DNS lists (standard",
            "  and dynamic, answer filter `127.0.0.[2..11]`) on a local dnsmasq listing none of the",
            "  clients, the sender groups' default throttles (50 connections at once, 100 messages",
            "  a session: the session closes with `421` and bulwark-load reconnects).",
            "",
            "| median of %d | connection tier off | on | on / off |" % args.runs,
            "|---|---|---|---|",
            "| msgs/s | %.0f | %.0f | %.3f |" % (off, on, on / off),
            "",
            "- Runs: off %s; on %s." % (", ".join("%.0f" % r for r in rates["off"]),
                                        ", ".join("%.0f" % r for r in rates["on"])),
            "- Refused or closed transactions seen by the client (all runs; `closed`: the session",
            "  closed under a pipelined transaction, as after a `421`): off %s, on %s." % (
                json.dumps(codes["off"], sort_keys=True), json.dumps(codes["on"], sort_keys=True)),
            "- DNS list cache over the `on` runs: %d answers from the cache, %d lookups, %d merged "
            "with one in flight: hit rate %.1f %%." % (cache["hit"], cache["lookup"], cache["merged"],
                                                   100.0 * cache["hit"] / asked if asked else 0),
            "<!-- reputation:end -->",
        ]
        table = "\n".join(lines)
        print(table)
        if args.results:
            replace_section(args.results, "reputation", table)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
