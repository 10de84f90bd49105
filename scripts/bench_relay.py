#!/usr/bin/python3
"""End-to-end relay benchmark: Bulwark and Postfix side by side, same machine, same run.

Each system relays to the same Postfix smtp-sink. The load is Postfix's smtp-source
(default: -s 50 -m 20000 -l 4096). For each system it measures:
  accepted msgs/s   messages / time until smtp-source has had every 250
  end-to-end msgs/s messages / time until the sink has received them all
  CPU seconds       all processes of the system (a cpuacct cgroup), during the run
  peak RSS / PSS    largest sum of the system's processes' RSS (and PSS, which does not
                    count shared pages twice), sampled every 100 ms
Postfix runs as a private instance on loopback with its durable queue as shipped
(queue files fsynced before 250). Run as root; nothing is left running.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

CG = "/sys/fs/cgroup/cpuacct"


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


class Cgroup:
    def __init__(self, name):
        self.path = os.path.join(CG, name)
        if os.path.isdir(self.path):
            os.rmdir(self.path)
        os.mkdir(self.path)

    def prefix(self):
        # A shell that joins the group, then becomes the real command.
        return ["sh", "-c", 'echo $$ > %s/cgroup.procs && exec "$@"' % self.path, "sh"]

    def cpu_seconds(self):
        with open(os.path.join(self.path, "cpuacct.usage")) as f:
            return int(f.read()) / 1e9

    def pids(self):
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]

    def _sum(self, path, key):
        """Sums one kB field of /proc/PID/<path> over the group's processes."""
        total = 0
        for pid in self.pids():
            try:
                with open("/proc/%d/%s" % (pid, path)) as f:
                    for line in f:
                        if line.startswith(key):
                            total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def rss_bytes(self):
        return self._sum("status", "VmRSS:")

    def pss_bytes(self):
        return self._sum("smaps_rollup", "Pss:")

    def remove(self):
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


class Sink:
    """Postfix smtp-sink with its running counters on stdout."""

    def __init__(self, port):
        self.p = subprocess.Popen(["smtp-sink", "-u", "postfix", "-c", "127.0.0.1:%d" % port, "1024"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.count = 0
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        buf = b""
        while True:
            chunk = self.p.stdout.read1(4096)
            if not chunk:
                return
            buf = (buf + chunk)[-256:]
            m = re.findall(rb"mesg=(\d+)", buf)
            if m:
                self.count = int(m[-1])

    def stop(self):
        self.p.terminate()
        self.p.wait()


def wait_port(port, timeout=30):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("nothing listening on %d" % port)


def measure(name, cg, port, sink, args):
    base = sink.count
    peak = [0, 0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], cg.rss_bytes())
            peak[1] = max(peak[1], cg.pss_bytes())
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    cpu0 = cg.cpu_seconds()
    t0 = time.time()
    sh("smtp-source", "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size),
       "-f", "load@sender.test", "-t", "user@example.test", "127.0.0.1:%d" % port)
    t_accept = time.time() - t0
    deadline = time.time() + args.timeout
    while sink.count - base < args.messages and time.time() < deadline:
        time.sleep(0.02)
    t_e2e = time.time() - t0
    delivered = sink.count - base
    # Let the system settle so CPU spent finishing the work is counted.
    time.sleep(0.5)
    cpu = cg.cpu_seconds() - cpu0
    stop.set()
    return {"name": name, "accepted_s": t_accept, "e2e_s": t_e2e, "delivered": delivered, "cpu": cpu, "rss": peak[0], "pss": peak[1]}


def run_bulwark(args, work, sink_port):
    port = args.port_base + 1
    spool = os.path.join(work, "bulwark-spool")
    cfg = os.path.join(work, "bulwark.toml")
    with open(cfg, "w") as f:
        f.write('[server]\nhostname = "bw.bench.test"\nlisten = ["127.0.0.1:%d"]\nmetrics = ""\n' % port)
        f.write('[spool]\ndir = "%s"\n' % spool)
        f.write('[[domains]]\nname = "example.test"\nroute = "127.0.0.1:%d"\n' % sink_port)
    cg = Cgroup("bench-bulwark")
    log = open(os.path.join(work, "bulwark.log"), "w")
    p = subprocess.Popen(cg.prefix() + [args.bulwark, "serve", "--config", cfg], stdout=log, stderr=log,
                         env=dict(os.environ, BULWARK_LOG="warn"))
    try:
        wait_port(port)
        return measure("bulwark", cg, port, args.sink_obj, args)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait()
        cg.remove()


POSTFIX_MAIN = """compatibility_level = 3.6
queue_directory = {work}/pf-queue
data_directory = {work}/pf-data
myhostname = pf.bench.test
mydestination =
relay_domains = example.test
transport_maps = inline:{{example.test=smtp:[127.0.0.1]:{sink}}}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = no
maillog_file_prefixes = {work}
maillog_file = {work}/maillog
"""


def run_postfix(args, work, sink_port):
    port = args.port_base + 2
    etc = os.path.join(work, "pf-etc")
    os.makedirs(etc)
    with open(os.path.join(etc, "main.cf"), "w") as f:
        f.write(POSTFIX_MAIN.format(work=work, sink=sink_port))
    with open("/etc/postfix/master.cf") as f:
        master = f.read()
    lines = []
    for line in master.splitlines():
        cols = line.split()
        if len(cols) >= 8 and not line.startswith((" ", "\t", "#")):
            if cols[0] == "smtp" and cols[1] == "inet":
                cols[0] = "127.0.0.1:%d" % port
            cols[4] = "n"  # no chroot: the private queue has no chroot tree
            line = " ".join(cols)
        lines.append(line)
    with open(os.path.join(etc, "master.cf"), "w") as f:
        f.write("\n".join(lines) + "\n")
    env = dict(os.environ, MAIL_CONFIG=etc)
    import pwd
    pf = pwd.getpwnam("postfix")
    os.makedirs(os.path.join(work, "pf-queue"))
    os.makedirs(os.path.join(work, "pf-data"))
    os.chown(os.path.join(work, "pf-data"), pf.pw_uid, pf.pw_gid)
    # Creates the queue tree with Postfix's own ownership and modes.
    sh("postfix", "-c", etc, "check", env=env, stderr=subprocess.DEVNULL)
    cg = Cgroup("bench-postfix")
    p = subprocess.Popen(cg.prefix() + ["postfix", "-c", etc, "start-fg"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return measure("postfix", cg, port, args.sink_obj, args)
    finally:
        subprocess.run(["postfix", "-c", etc, "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
        cg.remove()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bulwark", default="target/release/bulwark")
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--port-base", type=int, default=26000)
    ap.add_argument("--only", choices=["bulwark", "postfix"])
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (cgroups, postfix)")
    work = tempfile.mkdtemp(prefix="bulwark-bench-")
    # Postfix opens its files as the postfix user, which must be able to get there.
    os.chmod(work, 0o755)
    sink_port = args.port_base
    args.sink_obj = Sink(sink_port)
    wait_port(sink_port)
    results = []
    try:
        for i in range(args.runs):
            for name, fn in (("bulwark", run_bulwark), ("postfix", run_postfix)):
                if args.only and args.only != name:
                    continue
                d = os.path.join(work, "%s-%d" % (name, i))
                os.makedirs(d)
                r = fn(args, d, sink_port)
                results.append(r)
                n = args.messages
                print("%-8s run %d: accepted %7.0f msg/s  end-to-end %7.0f msg/s  delivered %d/%d  CPU %6.2f s  peak RSS %6.1f MiB  peak PSS %6.1f MiB"
                      % (name, i + 1, n / r["accepted_s"], r["delivered"] / r["e2e_s"], r["delivered"], n, r["cpu"],
                         r["rss"] / 2**20, r["pss"] / 2**20),
                      flush=True)
    finally:
        args.sink_obj.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    if not args.only:
        import statistics
        def med(name, key):
            return statistics.median(r[key] for r in results if r["name"] == name)
        n = args.messages
        print()
        print("| metric (median of %d) | Bulwark | Postfix | Bulwark/Postfix |" % args.runs)
        print("|---|---|---|---|")
        for label, key, f in (("accepted msgs/s", "accepted_s", lambda v: n / v),
                              ("end-to-end msgs/s", "e2e_s", lambda v: n / v),
                              ("CPU seconds", "cpu", lambda v: v),
                              ("CPU seconds per 1000 messages", "cpu", lambda v: v * 1000 / n),
                              ("peak RSS MiB (sum over processes)", "rss", lambda v: v / 2**20),
                              ("peak PSS MiB (sum over processes)", "pss", lambda v: v / 2**20)):
            b, p = f(med("bulwark", key)), f(med("postfix", key))
            print("| %s | %.1f | %.1f | %.2f |" % (label, b, p, b / p if p else float("nan")))


if __name__ == "__main__":
    main()
