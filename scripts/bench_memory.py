#!/usr/bin/python3
"""Peak memory under concurrent large messages.

Starts a 2-core engine relaying to a bulwark-load sink, then runs each scenario: C
clients at once, each sending one message of S octets (bulwark-load send --connections C
--messages C --size S). Reports the engine's peak RSS (VmHWM, read from /proc after the
run, then reset by a fresh engine per scenario), the largest value of the
bulwark_content_memory_bytes metric seen while it ran (sampled every 50 ms), how many
messages were accepted and how many the sink received complete. With --results, rewrites
the `memory` section of that Markdown file. Leaves nothing running.
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

from bench_peers import free_port, replace_section
from bench_restart import metric

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
MIB = 1 << 20


def peak_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def scenario(clients, size, budget, zipped=0):
    work = tempfile.mkdtemp(prefix="bulwark-memory-")
    smtp, metrics, route = free_port(), free_port(), free_port()
    config = os.path.join(work, "bulwark.toml")
    with open(config, "w") as f:
        f.write("""[server]
hostname = "mx.bench.test"
listen = ["127.0.0.1:%d"]
metrics = "127.0.0.1:%d"
cores = 2
memory_per_core = %d

[spool]
dir = "%s/spool"

[limits]
message_size = %d

[[domains]]
name = "example.test"
route = "127.0.0.1:%d"
""" % (smtp, metrics, budget, work, size + (1 << 20), route))
    report = os.path.join(work, "sink.json")
    procs = []
    try:
        sink = subprocess.Popen([os.path.join(BIN, "bulwark-load"), "sink", "--listen",
                                 "127.0.0.1:%d" % route, "--report", report],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sink)
        engine = subprocess.Popen([os.path.join(BIN, "bulwark"), "serve", "--config", config],
                                  stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(work, "engine.log"), "ab"))
        procs.append(engine)
        while metric(metrics, "bulwark_smtp_connections_total") is None:
            time.sleep(0.05)
        seen = {"content": 0.0}
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                v = metric(metrics, "bulwark_content_memory_bytes")
                if v is not None:
                    seen["content"] = max(seen["content"], v)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t = time.time()
        out = subprocess.run(
            [os.path.join(BIN, "bulwark-load"), "send", "--target", "127.0.0.1:%d" % smtp,
             "--connections", str(clients), "--messages", str(clients), "--size", str(size),
             "--json"] + (["--attachment", str(zipped), "--attachment-kind", "zip"] if zipped else []),
            capture_output=True, check=False)
        sent = json.loads(out.stdout or b"{}")
        accepted = sent.get("accepted", 0)
        r = {}
        while r.get("received", 0) < accepted and time.time() - t < 600:
            time.sleep(0.2)
            try:
                with open(report) as f:
                    r = json.load(f)
            except (OSError, ValueError):
                pass
        secs = time.time() - t
        stop.set()
        sampler.join()
        rss = peak_rss(engine.pid)
        return {
            "clients": clients,
            "size": size,
            "zipped": zipped,
            "budget": budget,
            "accepted": accepted,
            "rejected": sent.get("rejected", 0),
            "received": r.get("received", 0),
            "complete": r.get("complete", 0),
            "peak_rss": rss,
            "peak_content": seen["content"],
            "seconds": secs,
        }
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results")
    ap.add_argument("--budget", type=int, default=128 * MIB, help="[server] memory_per_core")
    args = ap.parse_args()
    rows = []
    # The last row: each message carries documents.zip, 60 MB of text deflated to about a
    # third, which the antivirus walk decompresses whole.
    for clients, size, zipped in ((40, 25 * MIB, 0), (100, 50 * MIB, 0), (40, 25 * MIB, 60 * 1000 * 1000)):
        r = scenario(clients, size, args.budget, zipped)
        rows.append(r)
        print(json.dumps(r))
    table = ["| clients × message | in flight | accepted | delivered complete | engine peak RSS | peak content in memory (metric) | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        what = "%d × %d MiB" % (r["clients"], r["size"] // MIB)
        if r["zipped"]:
            what += " with a zip of %d MB of text" % (r["zipped"] // 1000000)
        table.append("| %s | %d MiB | %d | %d | %.1f MiB | %.1f MiB | %.1f |" % (
            what, r["clients"] * r["size"] // MIB, r["accepted"],
            r["complete"], r["peak_rss"] / MIB, r["peak_content"] / MIB, r["seconds"]))
    table = "\n".join(table)
    print(table)
    if args.results:
        section = "\n".join([
            "<!-- memory:begin -->",
            "## Memory under concurrent large messages",
            "",
            "- Command: `scripts/bench-memory.sh` (= `scripts/bench_memory.py --budget %d`)." % args.budget,
            "- A 2-core engine with `[server] memory_per_core = %d` relays to a bulwark-load sink;" % args.budget,
            "  each row is a fresh engine receiving N messages at once over N connections",
            "  (`bulwark-load send --connections N --messages N --size S`). Peak RSS is the engine's",
            "  VmHWM; the content figure is the largest `bulwark_content_memory_bytes` sampled every 50 ms.",
            "- Content inspection and sender authentication on, as by default: each message is inspected on its",
            "  first 256 KiB and again whole (up to `max_scan_size`, 10 MiB) once durable, the whole scan's buffer",
            "  charged to the same budget (when it is spent, the first piece's decision stands).",
            "- Antivirus on, as by default: the whole message (up to the message size limit) is read back and",
            "  walked by the built-in engine on the core's blocking thread, one whole scan per core at a time; in",
            "  the last row every message's zip decompresses to 60 MB (four members of 15 MB, each read whole).",
            "- Before streaming (as measured by the review that filed issue 9): 40 × 25 MB took the engine to 1.7 GB RSS.",
            "  Before antivirus (2026-11-30): 169 and 216 MiB for the first two rows; the whole-message virus scan of",
            "  a 50 MiB message (the content and its decoded parts, on each core) is what they gained since.",
            "- Measured %s on %s (%d CPUs)." % (time.strftime("%Y-%m-%d"), os.uname().nodename, os.cpu_count()),
            "",
            table,
            "<!-- memory:end -->",
        ])
        replace_section(args.results, "memory", section)


if __name__ == "__main__":
    main()
