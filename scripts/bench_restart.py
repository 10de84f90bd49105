#!/usr/bin/python3
"""Restart with a full queue: how soon a restarted engine accepts mail and delivers again.

Fills a 2-core engine's queue with N messages while its route is down (the sender is
bulwark-load; retry every 10 s), kills it with SIGKILL, brings the route up
(bulwark-load sink) and starts the engine again. Measures, from the moment the process
is started: the first 220 greeting, the first new message accepted (250 after DATA),
the end of the spool recovery (the `bulwark_queue_recovered_total` metric reaching N),
the first and the last delivery of the recovered messages (the sink's report); and the
duration of SMTP transactions sent one after another while the spool is being read back,
against the same after recovery. With --results, rewrites the `restart` section of that
Markdown file. Leaves nothing running.
"""
import argparse
import json
import os
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

from bench_peers import free_port, replace_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def metric(port, name):
    try:
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def greeting(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(512).startswith(b"220")
    except OSError:
        return False


def transaction(port, i):
    """One message through smtplib on a new connection; returns its duration."""
    start = time.time()
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.sendmail("probe@sender.test", ["u@example.test"],
               "Subject: during restart %d\r\nMessage-ID: <restart-probe-%d@bench>\r\n\r\nx\r\n" % (i, i))
    s.quit()
    return time.time() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--results")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bulwark-restart-")
    smtp, metrics, route = free_port(), free_port(), free_port()
    config = os.path.join(work, "bulwark.toml")
    with open(config, "w") as f:
        f.write("""[server]
hostname = "mx.bench.test"
listen = ["127.0.0.1:%d"]
metrics = "127.0.0.1:%d"
cores = 2

[spool]
dir = "%s/spool"

[queue]
retry = ["10s"]

[[domains]]
name = "example.test"
route = "127.0.0.1:%d"
""" % (smtp, metrics, work, route))
    procs = []
    log = open(os.path.join(work, "engine.log"), "ab")

    restarted = False

    def start_engine():
        wrap = os.environ.get("BENCH_WRAP", "").split() if restarted else []
        p = subprocess.Popen(wrap + [os.path.join(BIN, "bulwark"), "serve", "--config", config],
                             stdout=subprocess.DEVNULL, stderr=log)
        procs.append(p)
        return p

    try:
        engine = start_engine()
        while not greeting(smtp):
            time.sleep(0.05)
        t = time.time()
        fill = subprocess.run(
            [os.path.join(BIN, "bulwark-load"), "send", "--target", "127.0.0.1:%d" % smtp,
             "--connections", "32", "--messages", str(args.messages), "--size", str(args.size),
             "--json"], capture_output=True, check=True)
        fill_secs = time.time() - t
        sent = json.loads(fill.stdout)
        accepted = sent.get("accepted", 0)
        while metric(metrics, "bulwark_queue_messages") != accepted:
            time.sleep(0.2)
        spool_bytes = sum(os.path.getsize(os.path.join(d, f))
                          for d, _, fs in os.walk(os.path.join(work, "spool")) for f in fs)
        print("queued %d messages in %.1f s (%d spool octets); killing the engine"
              % (accepted, fill_secs, spool_bytes))
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        # Every message's next attempt (at most 10 s away) is due when it comes back.
        time.sleep(11)
        report = os.path.join(work, "sink.json")
        sink = subprocess.Popen([os.path.join(BIN, "bulwark-load"), "sink", "--listen",
                                 "127.0.0.1:%d" % route, "--report", report],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sink)
        while not greeting(route):
            time.sleep(0.05)
        subprocess.run(["sync"], check=True)
        restarted = True
        t0 = time.time()
        engine = start_engine()
        t_greet = None
        while t_greet is None:
            if greeting(smtp):
                t_greet = time.time() - t0
            else:
                time.sleep(0.005)
        during, after = [], []
        t_accept = None
        t_recovered = None
        i = 0
        while t_recovered is None or len(after) < 50:
            d = transaction(smtp, i)
            i += 1
            if t_accept is None:
                t_accept = time.time() - t0
            recovered = metric(metrics, "bulwark_queue_recovered_total")
            if t_recovered is None:
                during.append(d)
                if recovered is not None and recovered >= accepted:
                    t_recovered = time.time() - t0
            else:
                after.append(d)
            if time.time() - t0 > 600:
                raise SystemExit("recovery did not finish in 600 s")
        probes = i
        total = accepted + probes
        r = {}
        while r.get("received", 0) < total:
            time.sleep(0.2)
            try:
                with open(report) as f:
                    r = json.load(f)
            except (OSError, ValueError):
                pass
            if time.time() - t0 > 900:
                raise SystemExit("delivery did not finish: %s" % r)
        t_first = r["first_at"] - t0
        t_last = r["last_at"] - t0
        rows = [
            ("first 220 greeting", t_greet),
            ("first new message accepted (250)", t_accept),
            ("spool read back, every message requeued", t_recovered),
            ("first delivery", t_first),
            ("last of the %d messages delivered" % total, t_last),
        ]
        table = ["| after the process starts | seconds |", "|---|---|"]
        table += ["| %s | %.3f |" % (name, v) for name, v in rows]
        table.append("")
        table.append("| SMTP transaction (new connection) | n | p50 ms | max ms |")
        table.append("|---|---|---|---|")
        for name, v in (("while the spool is read back", during), ("after", after)):
            table.append("| %s | %d | %.1f | %.1f |" % (name, len(v), statistics.median(v) * 1000, max(v) * 1000))
        table = "\n".join(table)
        print(table)
        print("transactions while the spool was read back (ms): %s"
              % " ".join("%.0f" % (d * 1000) for d in during))
        print("delivery after restart: %.0f msgs/s" % (total / max(t_last - t_first, 1e-9)))
        if args.results:
            begin, end = "<!-- restart:begin -->", "<!-- restart:end -->"
            section = "\n".join([
                begin,
                "## Restart with a full queue",
                "",
                "- Command: `scripts/bench-restart.sh` (= `scripts/bench_restart.py --messages %d --size %d`)."
                % (args.messages, args.size),
                "- A 2-core engine queued %d messages of %d octets (%d spool octets) with its route down, was"
                % (accepted, args.size, spool_bytes),
                "  killed with SIGKILL, and started again with the route up (bulwark-load sink). Times are from",
                "  the start of the process; transactions are smtplib sessions sent one after another. The",
                "  2 CPUs are shared by the engine (reading the spool back and delivering at full speed), the",
                "  sink and the client, so transaction times during recovery vary from run to run.",
                "- Delivery of the recovered queue after the restart: %.0f msgs/s." % (total / max(t_last - t_first, 1e-9)),
                "- Machine: %s, %d CPUs. Date: %s." % (os.uname().release, os.cpu_count(), time.strftime("%Y-%m-%d")),
                "",
                table,
                end,
            ])
            replace_section(args.results, "restart", section)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
