#!/usr/bin/python3
"""Small-message latency while large messages are scanned on the same core.

Starts a one-core engine (content inspection on, built-in rules unless --rules; sender
authentication off so DNS does not enter the figures) relaying to a bulwark-load sink.
Two phases of --seconds each: 4 KiB messages alone at --rate, then the same while
--large-clients connections send --large-size messages back to back (each inspected on
its first 256 KiB, then whole up to max_scan_size on the executor's blocking thread). For
the 4 KiB messages it reports DATA end -> reply p50/p99/max (bulwark-load's latency_ms),
for the large ones how many were accepted and how many whole scans ran. With --results,
rewrites the `isolation` section of that Markdown file. Leaves nothing running.
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

from bench_peers import free_port, replace_section
from bench_restart import metric

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
MIB = 1 << 20


def send(smtp, args):
    return subprocess.Popen(
        [os.path.join(BIN, "bulwark-load"), "send", "--target", "127.0.0.1:%d" % smtp,
         "--json"] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def buckets(port, name):
    """The cumulative bucket counts of histogram `name`, by upper bound."""
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{le=\""):
            le = line.split('"')[1]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.split()[1])
    return out


def quantile(before, after, q):
    """The upper bound of the bucket holding quantile q of what was observed in between."""
    les = sorted(after)
    total = after[les[-1]] - before.get(les[-1], 0)
    if total <= 0:
        return None
    for le in les:
        if after[le] - before.get(le, 0) >= q * total:
            return le
    return None


def result(p):
    out, _ = p.communicate()
    return json.loads(out or b"{}")


def run(args, inspection, rows):
    """One engine (inspection on or off), both phases; appends a row per phase."""
    work = tempfile.mkdtemp(prefix="bulwark-isolation-")
    smtp, metrics, route = free_port(), free_port(), free_port()
    config = os.path.join(work, "bulwark.toml")
    rules = 'rules = ["%s"]\ncache_dir = "%s"\n' % (
        args.rules, os.path.join(ROOT, "target", "bench-rules-cache")) if args.rules else ""
    with open(config, "w") as f:
        f.write("""[server]
hostname = "mx.bench.test"
listen = ["127.0.0.1:%d"]
metrics = "127.0.0.1:%d"
cores = 1

[spool]
dir = "%s/spool"

[authentication]
enabled = false

[inspection]
enabled = %s
%s
[[domains]]
name = "example.test"
route = "127.0.0.1:%d"
""" % (smtp, metrics, work, "true" if inspection else "false", rules, route))
    procs = []
    try:
        procs.append(subprocess.Popen(
            [os.path.join(BIN, "bulwark-load"), "sink", "--listen", "127.0.0.1:%d" % route],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        engine = subprocess.Popen([os.path.join(BIN, "bulwark"), "serve", "--config", config],
                                  stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(work, "engine.log"), "ab"))
        procs.append(engine)
        deadline = time.time() + 300
        while metric(metrics, "bulwark_smtp_connections_total") is None:
            if time.time() > deadline or engine.poll() is not None:
                raise SystemExit("the engine did not start; see %s/engine.log" % work)
            time.sleep(0.1)
        small = ["--connections", "4", "--size", "4096", "--rate", str(args.rate),
                 "--duration", str(args.seconds)]

        def scans():
            return sum(metric(metrics, 'bulwark_inspection_full_scans_total{result="%s"}' % r) or 0
                       for r in ("same", "stronger"))

        commit = "bulwark_spool_commit_seconds"
        for phase in ("alone", "with large"):
            scans0 = scans()
            commit0 = buckets(metrics, commit)
            large = None
            if phase == "with large":
                large = send(smtp, ["--connections", str(args.large_clients), "--size",
                                    str(args.large_size), "--duration", str(args.seconds + 2)])
                time.sleep(1)
            s = result(send(smtp, small))
            big = result(large) if large else {}
            lat = s.get("latency_ms", {})
            row = {"phase": phase, "inspection": inspection, "accepted": s.get("accepted", 0),
                   "errors": s.get("errors", 0), "p50": lat.get("p50"), "p99": lat.get("p99"),
                   "max": lat.get("max"), "large_accepted": big.get("accepted", 0),
                   "whole_scans": scans() - scans0,
                   "commit_p50": quantile(commit0, buckets(metrics, commit), 0.5),
                   "commit_p99": quantile(commit0, buckets(metrics, commit), 0.99)}
            rows.append(row)
            print(json.dumps(row))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rate", type=float, default=100, help="4 KiB messages per second")
    ap.add_argument("--large-size", type=int, default=20 * MIB)
    ap.add_argument("--large-clients", type=int, default=2)
    ap.add_argument("--rules", help="[inspection] rules (e.g. /usr/share/spamassassin)")
    ap.add_argument("--no-inspection", action="store_true",
                    help="only the engine with inspection off (by default both are run)")
    args = ap.parse_args()
    rows = []
    for inspection in ([False] if args.no_inspection else [True, False]):
        run(args, inspection, rows)
    table = ["| inspection | phase | 4 KiB accepted | DATA end → reply p50 | p99 | max | large messages accepted | whole scans | group commit p50 / p99 (bucket) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = lambda v: "?" if v is None else "≤ %g ms" % (v * 1000)
        table.append("| %s | %s | %d | %.2f ms | %.2f ms | %.2f ms | %d | %d | %s / %s |" % (
            "on" if r["inspection"] else "off", r["phase"], r["accepted"], r["p50"] or 0, r["p99"] or 0, r["max"] or 0,
            r["large_accepted"], r["whole_scans"], ms(r["commit_p50"]), ms(r["commit_p99"])))
    table = "\n".join(table)
    print(table)
    if args.results:
        cmd = "scripts/bench-isolation.sh" + (" --rules %s" % args.rules if args.rules else "")
        section = "\n".join([
            "<!-- isolation:begin -->",
            "## Small-message latency while large messages are scanned on the same core",
            "",
            "- Command: `%s` (= `scripts/bench_isolation.py`, %g s per phase)." % (cmd, args.seconds),
            "- A one-core engine (inspection on with %s; authentication off) relays to a bulwark-load sink." % (
                "the rules of " + args.rules + " and the built-in ones" if args.rules else "the built-in rules"),
            "  4 KiB messages at %g/s over 4 connections, alone and then while %d connections send %d MiB" % (
                args.rate, args.large_clients, args.large_size // MIB),
            "  messages back to back (each inspected on its first 256 KiB, then whole up to 10 MiB on the",
            "  executor's blocking thread, one at a time per core). Latency is bulwark-load's DATA end → reply.",
            "- The same again with inspection off: the difference between the two \"with large\" rows is what",
            "  scanning costs the small messages; the rest is the large messages' own receiving, spooling and",
            "  delivery (to the sink, on the same core) competing for the core and the disk. The last column is",
            "  `bulwark_spool_commit_seconds` over the phase (the write and fdatasync of the small messages' group",
            "  commits), as the upper bound of the histogram bucket holding p50 and p99.",
            "- Measured %s on %s (%d CPUs; the load generators share them)." % (
                time.strftime("%Y-%m-%d"), os.uname().nodename, os.cpu_count()),
            "",
            table,
            "<!-- isolation:end -->",
        ])
        replace_section(args.results, "isolation", section)


if __name__ == "__main__":
    main()
