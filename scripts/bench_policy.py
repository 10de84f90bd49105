#!/usr/bin/python3
"""Policy propagation latency: from a control API call returning to every engine core
applying the change.

Starts bulwark-control and a 2-core engine following its snapshots, then makes N
changes through the API (each publishes a new generation), idle and then while
bulwark-load sends at full speed. Each core logs the moment it applies a generation;
for every change, the latency is the latest core's apply time (of that generation or a
newer one) minus the time the API call returned. Prints p50/p99/max per phase and, with
--results, rewrites the `policy` section of that Markdown file. Leaves nothing running.
"""
import argparse
import datetime
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

from bench_peers import free_port, replace_section, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


APPLIED = re.compile(r"^(\S+)\s+INFO policy snapshot applied core=(\d+) generation=(\d+)")


def applied_times(log_path):
    """{core: [(unix_time, generation)]} from the engine's log."""
    out = {}
    with open(log_path) as f:
        for line in f:
            m = APPLIED.match(line)
            if not m:
                continue
            ts = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            out.setdefault(int(m.group(2)), []).append((ts, int(m.group(3))))
    return out


def changes(conn, token, n, tag):
    """Makes n changes; returns [(generation, time the call returned)]."""
    done = []
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    for i in range(n):
        body = json.dumps({"pattern": "%s%d.example.org" % (tag, i), "action": "blocked"})
        conn.request("POST", "/api/v1/senders", body=body, headers=headers)
        r = conn.getresponse()
        data = json.loads(r.read())
        t = time.time()
        if r.status != 201:
            raise SystemExit("API answered %d: %s" % (r.status, data))
        done.append((data["generation"], t))
        time.sleep(0.01)
    return done


def latencies(done, applied):
    out = []
    for generation, returned in done:
        worst = None
        for entries in applied.values():
            at = next((ts for ts, g in entries if g >= generation), None)
            if at is None:
                worst = None
                break
            worst = at if worst is None else max(worst, at)
        if worst is not None:
            out.append(max(0.0, worst - returned) * 1000)
    return out


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--changes", type=int, default=500)
    ap.add_argument("--results")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bulwark-policy-bench-")
    shm = tempfile.mkdtemp(prefix="bulwark-policy-", dir="/dev/shm")
    procs = []
    try:
        cport, smtp, metrics, sink = free_port(), free_port(), free_port(), free_port()
        snapshot = os.path.join(shm, "policy")
        ccfg = os.path.join(work, "control.toml")
        with open(ccfg, "w") as f:
            f.write('[control]\nlisten = "127.0.0.1:%d"\ndatabase = "%s/control.sqlite"\nsnapshot = "%s"\n' % (cport, work, snapshot))
        token = subprocess.run([os.path.join(BIN, "bulwark-control"), "token", "create", "--config", ccfg],
                               check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
        procs.append(subprocess.Popen([os.path.join(BIN, "bulwark-control"), "serve", "--config", ccfg],
                                      stderr=subprocess.DEVNULL))
        wait_port(cport)
        procs.append(subprocess.Popen([os.path.join(BIN, "bulwark-load"), "sink", "--listen", "127.0.0.1:%d" % sink],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(sink)
        ecfg = os.path.join(work, "bulwark.toml")
        with open(ecfg, "w") as f:
            f.write('[server]\nhostname = "mx.bench.test"\nlisten = ["127.0.0.1:%d"]\nmetrics = "127.0.0.1:%d"\ncores = 2\n'
                    '[spool]\ndir = "%s/spool"\n[policy]\nsnapshot = "%s"\n' % (smtp, metrics, work, snapshot))
        log_path = os.path.join(work, "engine.log")
        procs.append(subprocess.Popen([os.path.join(BIN, "bulwark"), "serve", "--config", ecfg],
                                      stderr=open(log_path, "w"), env=dict(os.environ, BULWARK_LOG="info")))
        wait_port(smtp)
        conn = http.client.HTTPConnection("127.0.0.1", cport)
        conn.request("POST", "/api/v1/domains", body=json.dumps({"name": "example.test", "route": "127.0.0.1:%d" % sink}),
                     headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        conn.getresponse().read()
        time.sleep(0.5)
        idle = changes(conn, token, args.changes, "idle")
        load = subprocess.Popen([os.path.join(BIN, "bulwark-load"), "send", "--target", "127.0.0.1:%d" % smtp,
                                 "--connections", "20", "--duration", "600", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(load)
        time.sleep(1)
        busy = changes(conn, token, args.changes, "busy")
        load.terminate()
        sent = json.loads(load.communicate()[0] or b"{}")
        time.sleep(0.5)
        applied = applied_times(log_path)
        rows = []
        for name, done in (("idle", idle), ("under load", busy)):
            lat = latencies(done, applied)
            rows.append((name, len(lat), statistics.median(lat), pct(lat, 0.99), max(lat)))
        table = ["| phase | changes | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
        for name, n, p50, p99, mx in rows:
            table.append("| %s | %d | %.2f | %.2f | %.2f |" % (name, n, p50, p99, mx))
        table = "\n".join(table)
        print(table)
        print("load during the second phase: %s messages accepted, %s rejected, %s errors"
              % (sent.get("accepted"), sent.get("rejected"), sent.get("errors")))
        if args.results:
            begin, end = "<!-- policy:begin -->", "<!-- policy:end -->"
            section = "\n".join([
                begin,
                "## Policy propagation: API call returned → every core applied",
                "",
                "- Command: `scripts/bench-policy.sh` (= `scripts/bench_policy.py --changes %d`)." % args.changes,
                "- bulwark-control publishes each change (SQLite commit, snapshot written to /dev/shm) before it",
                "  answers; a 2-core engine follows (one atomic load per transaction, a 5 ms watcher when idle).",
                "  Each change is timed from the API call returning to the last core's log line applying it.",
                "- Under load: `bulwark-load send --connections 20` at full speed throughout (%s messages accepted,"
                % sent.get("accepted"),
                "  %s rejected, %s errors)." % (sent.get("rejected"), sent.get("errors")),
                "- Machine: %s, %d CPUs. Date: %s." % (os.uname().release, os.cpu_count(), time.strftime("%Y-%m-%d")),
                "",
                table,
                end,
            ])
            replace_section(args.results, "policy", section)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    main()
