#!/usr/bin/python3
"""Side-by-side benchmark of Bulwark and its peers on this machine, in one go.

Each peer (Bulwark, Postfix as a relay with its durable queue as shipped, Haraka with
smtp_forward; and the filtering ones: Bulwark with every check on, Postfix with
SpamAssassin through spamass-milter, Postfix with rspamd as a milter) relays to the same
downstream (`bulwark-load sink`), under the same load
from each client (`bulwark-load send` and Postfix's `smtp-source`), for each message
size, several runs each. For every run it measures:
  accepted msgs/s   messages / time until the client has had every reply
  end-to-end msgs/s messages / time until the sink has received the last one
  CPU seconds       all processes of the peer (a cpuacct cgroup), during the run
  peak RSS / PSS    largest sum over the peer's processes (PSS counts shared pages
                    once), sampled every 100 ms
It prints a table of medians and Bulwark/peer ratios, writes the runs as JSON, and
leaves nothing running. Run as root.
"""
import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time

CG = "/sys/fs/cgroup/cpuacct"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HARAKA = os.environ.get("HARAKA_DIR", "/opt/bulwark-peers/haraka")


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



def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("nothing listening on %d" % port)


class Sink:
    """bulwark-load sink, one per benchmark; its report has the last arrival time."""

    def __init__(self, args, port, work):
        self.report = os.path.join(work, "sink.json")
        self.p = subprocess.Popen([args.load, "sink", "--listen", "127.0.0.1:%d" % port, "--report", self.report],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)

    def read(self):
        try:
            with open(self.report) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def stop(self):
        self.p.terminate()
        self.p.wait()


def run_client(args, client, port, size, messages):
    """Runs one load; returns seconds until every reply was in."""
    t0 = time.time()
    if client == "bulwark-load":
        extra = []
        if args.attachment:
            extra = ["--attachment", str(args.attachment), "--attachment-kind", args.attachment_kind]
        out = subprocess.run([args.load, "send", "--target", "127.0.0.1:%d" % port, "--connections", str(args.connections),
                              "--messages", str(messages), "--size", str(size), "--json"] + extra,
                             check=True, stdout=subprocess.PIPE).stdout
        r = json.loads(out)
        if r["accepted"] != messages:
            raise SystemExit("bulwark-load: %d of %d accepted" % (r["accepted"], messages))
        return time.time() - t0
    sh("smtp-source", "-s", str(args.connections), "-m", str(messages), "-l", str(size),
       "-f", "load@sender.test", "-t", "user@example.test", "127.0.0.1:%d" % port)
    return time.time() - t0


def measure(args, peer, cg, port, sink, client, size, messages):
    base = sink.read().get("received", 0)
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
    accepted_s = run_client(args, client, port, size, messages)
    deadline = time.time() + args.timeout
    rep = sink.read()
    while rep.get("received", 0) - base < messages and time.time() < deadline:
        time.sleep(0.2)
        rep = sink.read()
    delivered = rep.get("received", 0) - base
    e2e_s = (rep.get("last_at") or time.time()) - t0
    time.sleep(0.5)
    cpu = cg.cpu_seconds() - cpu0
    stop.set()
    if rep.get("incomplete", 0):
        raise SystemExit("%s: the sink saw %d damaged messages" % (peer, rep["incomplete"]))
    return {"peer": peer, "client": client, "size": size, "messages": messages, "delivered": delivered,
            "accepted_per_s": messages / accepted_s, "e2e_per_s": delivered / e2e_s, "cpu_s": cpu,
            "cpu_s_per_1000": cpu * 1000 / messages, "rss_mib": peak[0] / 2**20, "pss_mib": peak[1] / 2**20}


class Bulwark:
    """The relay alone: inspection and authentication off."""
    name = "bulwark"
    filtering = False
    sa_rules = False
    clamd = False

    def __init__(self, args, work, port, sink_port):
        self.cg = Cgroup("bench-%s" % self.name)
        self.helpers = []
        clamd = start_clamd(self.cg, work, self.helpers) if self.clamd else None
        cfg = os.path.join(work, "bulwark.toml")
        with open(cfg, "w") as f:
            f.write('[server]\nhostname = "bw.bench.test"\nlisten = ["127.0.0.1:%d"]\nmetrics = ""\n' % port)
            f.write('[spool]\ndir = "%s"\n' % os.path.join(work, "spool"))
            f.write('[[domains]]\nname = "example.test"\nroute = "127.0.0.1:%d"\n' % sink_port)
            if self.filtering:
                # Every check: the built-in rules (and with `sa_rules`, SpamAssassin's stock
                # rules, compiled once, then loaded from the cache), the classifier, phishing
                # checks, SPF, DKIM, DMARC, ARC and iprev against the local DNS server.
                f.write('[dns]\nnameservers = ["127.0.0.1:%d"]\n' % args.dns_port)
                f.write('[inspection]\nmodel = "%s"\ncache_dir = "%s"\n' % (args.model, args.rules_cache))
                if self.sa_rules:
                    f.write('rules = ["/usr/share/spamassassin"]\n')
                if clamd:
                    f.write('[antivirus]\nclamd = "127.0.0.1:%d"\n' % clamd)
            else:
                f.write('[inspection]\nenabled = false\n[authentication]\nenabled = false\n')
        self.p = subprocess.Popen(self.cg.prefix() + [args.bulwark, "serve", "--config", cfg],
                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "bulwark.log"), "w"),
                                  env=dict(os.environ, BULWARK_LOG="warn"))
        wait_port(port)

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait()
        for h in self.helpers:
            h.terminate()
            h.wait()
        self.cg.remove()


# clamd's database for every peer that runs one: EICAR by its MD5 and one body
# signature. There is no network for freshclam here: ClamAV's own databases (about a
# million signatures) would make clamd slower and far larger than this.
CLAMD_DB = {"bench.hdb": "44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n",
            "bench.ndb": "Bulwark.Bench.Marker:0:*:42554c5741524b2d42454e43482d4d41524b4552\n"}


def start_clamd(cg, work, helpers):
    """Debian's clamd in the peer's cgroup, on a free TCP port; returns the port."""
    port = free_port()
    db = os.path.join(work, "clamd-db")
    os.makedirs(db)
    for name, text in CLAMD_DB.items():
        with open(os.path.join(db, name), "w") as f:
            f.write(text)
    conf = os.path.join(work, "clamd.conf")
    with open(conf, "w") as f:
        f.write("Foreground yes\nUser root\nDatabaseDirectory %s\nTCPSocket %d\nTCPAddr 127.0.0.1\n"
                "StreamMaxLength 100M\nMaxThreads %d\nLogFile %s\n"
                % (db, port, 2 * os.cpu_count(), os.path.join(work, "clamd.log")))
    helpers.append(subprocess.Popen(cg.prefix() + ["clamd", "--config-file", conf],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_port(port)
    return port


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
message_size_limit = 104857600
maillog_file_prefixes = {work}
maillog_file = {work}/maillog
"""


class BulwarkFilter(Bulwark):
    name = "bulwark-filter"
    filtering = True


class BulwarkAvClamd(Bulwark):
    """Every check, the built-in antivirus (on by default) and clamd on every message."""
    name = "bulwark-av-clamd"
    filtering = True
    clamd = True


class BulwarkFilterSa(Bulwark):
    name = "bulwark-filter-sa"
    filtering = True
    sa_rules = True


class Postfix:
    name = "postfix"
    milter = None

    def __init__(self, args, work, port, sink_port):
        self.etc = os.path.join(work, "pf-etc")
        os.makedirs(self.etc)
        self.cg = Cgroup("bench-%s" % self.name)
        self.helpers = []
        milter = self.start_milter(args, work) if self.milter else None
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(POSTFIX_MAIN.format(work=work, sink=sink_port))
            if milter:
                f.write("smtpd_milters = %s\nmilter_default_action = tempfail\nmilter_protocol = 6\n" % milter)
                f.write("milter_content_timeout = 300s\n")
        lines = []
        with open("/etc/postfix/master.cf") as f:
            for line in f.read().splitlines():
                cols = line.split()
                if len(cols) >= 8 and not line.startswith((" ", "\t", "#")):
                    if cols[0] == "smtp" and cols[1] == "inet":
                        cols[0] = "127.0.0.1:%d" % port
                    cols[4] = "n"  # no chroot: the private queue has no chroot tree
                    line = " ".join(cols)
                lines.append(line)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write("\n".join(lines) + "\n")
        pf = pwd.getpwnam("postfix")
        os.makedirs(os.path.join(work, "pf-queue"))
        os.makedirs(os.path.join(work, "pf-data"))
        os.chown(os.path.join(work, "pf-data"), pf.pw_uid, pf.pw_gid)
        self.env = dict(os.environ, MAIL_CONFIG=self.etc)
        # Creates the queue tree with Postfix's own ownership and modes.
        sh("postfix", "-c", self.etc, "check", env=self.env, stderr=subprocess.DEVNULL)
        self.p = subprocess.Popen(self.cg.prefix() + ["postfix", "-c", self.etc, "start-fg"], env=self.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)

    def start_milter(self, args, work):
        return None

    def stop(self):
        subprocess.run(["postfix", "-c", self.etc, "stop"], env=self.env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
        for h in self.helpers:
            h.terminate()
            try:
                h.wait(timeout=20)
            except subprocess.TimeoutExpired:
                h.kill()
        for pid in self.cg.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.cg.remove()


class PostfixSpamAssassin(Postfix):
    """Postfix with spamass-milter and Debian's spamd (stock rules, no network tests,
    no Bayes database: what a fresh install scores with)."""
    name = "postfix-sa"
    milter = True

    def start_milter(self, args, work):
        spamd_port, milter_port = free_port(), free_port()
        self.helpers.append(subprocess.Popen(
            self.cg.prefix() + ["spamd", "--listen", "127.0.0.1:%d" % spamd_port, "-L", "-m", "4",
                                "-u", "nobody", "--nouser-config", "-s", "stderr"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(spamd_port)
        sock = "inet:%d@127.0.0.1" % milter_port
        self.helpers.append(subprocess.Popen(
            self.cg.prefix() + ["spamass-milter", "-p", sock, "-r", "15", "--",
                                "-d", "127.0.0.1", "-p", str(spamd_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(milter_port)
        return "inet:127.0.0.1:%d" % milter_port


RSPAMD = os.environ.get("RSPAMD_DIR", "/opt/bulwark-peers/rspamd/root")


class PostfixRspamd(Postfix):
    """Postfix with rspamd 3.4 (Debian's package, unpacked beside Bulwark's vectorscan,
    with which Debian's libhyperscan5 conflicts) as a milter: its proxy worker scanning
    itself, stock configuration, DNS to the local server, no Redis (no Bayes)."""
    name = "postfix-rspamd"
    milter = True

    def start_milter(self, args, work):
        port = free_port()
        local = os.path.join(work, "rspamd-local")
        os.makedirs(local)
        for d in ("db", "run", "log"):
            os.makedirs(os.path.join(work, "rspamd-" + d))
        files = {
            "worker-proxy.inc": 'milter = yes;\nbind_socket = "127.0.0.1:%d";\ntimeout = 120s;\n'
                                'upstream "local" { default = yes; self_scan = yes; }\ncount = %d;\n'
                                % (port, os.cpu_count()),
            "worker-normal.inc": "enabled = false;\n",
            "worker-controller.inc": "enabled = false;\n",
            "worker-fuzzy.inc": "enabled = false;\n",
            "options.inc": 'dns { nameserver = ["127.0.0.1:%d"]; }\n' % args.dns_port,
            "logging.inc": 'type = "file";\nfilename = "%s";\nlevel = "error";\n'
                           % os.path.join(work, "rspamd-log", "rspamd.log"),
        }
        for name, text in files.items():
            with open(os.path.join(local, name), "w") as f:
                f.write(text)
        lib = "%s/usr/lib/x86_64-linux-gnu:%s/usr/lib/rspamd" % (RSPAMD, RSPAMD)
        share = RSPAMD + "/usr/share/rspamd"
        v = {"CONFDIR": RSPAMD + "/etc/rspamd", "LOCAL_CONFDIR": work, "RULESDIR": share + "/rules",
             "LUALIBDIR": share + "/lualib", "PLUGINSDIR": share + "/plugins", "SHAREDIR": share,
             "WWWDIR": share + "/www", "DBDIR": work + "/rspamd-db", "RUNDIR": work + "/rspamd-run",
             "LOGDIR": work + "/rspamd-log"}
        # LOCAL_CONFDIR/local.d is where the overrides above are read from.
        os.rename(local, os.path.join(work, "local.d"))
        cmd = [RSPAMD + "/usr/bin/rspamd", "-f", "-i", "-c", RSPAMD + "/etc/rspamd/rspamd.conf"]
        cmd += ["--var=%s=%s" % kv for kv in v.items()]
        self.helpers.append(subprocess.Popen(self.cg.prefix() + cmd, stdout=subprocess.DEVNULL,
                                             stderr=open(os.path.join(work, "rspamd.err"), "w"),
                                             env=dict(os.environ, LD_LIBRARY_PATH=lib)))
        wait_port(port)
        return "inet:127.0.0.1:%d" % port


class PostfixRspamdClamav(PostfixRspamd):
    """Postfix with rspamd (as above) and clamav-milter in front of Debian's clamd (the
    same small database as Bulwark's clamd): the usual open-source filtering stack."""
    name = "postfix-rspamd-clamav"

    def start_milter(self, args, work):
        rspamd = PostfixRspamd.start_milter(self, args, work)
        clamd = start_clamd(self.cg, work, self.helpers)
        port = free_port()
        conf = os.path.join(work, "clamav-milter.conf")
        with open(conf, "w") as f:
            f.write("MilterSocket inet:%d@127.0.0.1\nUser root\nForeground yes\nClamdSocket tcp:127.0.0.1:%d\n"
                    "OnInfected Reject\nOnFail Defer\nAddHeader Replace\nMaxFileSize 100M\nReadTimeout 300\n"
                    "LogFile %s\n" % (port, clamd, os.path.join(work, "clamav-milter.log")))
        self.helpers.append(subprocess.Popen(self.cg.prefix() + ["clamav-milter", "--config-file", conf],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port)
        # Both milters see every message: rspamd first, then clamav-milter.
        return "%s, inet:127.0.0.1:%d" % (rspamd, port)


class Haraka:
    """Haraka with rcpt_to.in_host_list and queue/smtp_forward: it forwards each message
    during the client's DATA phase and keeps no queue of its own."""
    name = "haraka"

    def __init__(self, args, work, port, sink_port):
        exe = os.path.join(HARAKA, "node_modules", ".bin", "haraka")
        inst = os.path.join(work, "haraka")
        sh(exe, "-i", inst, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conf = os.path.join(inst, "config")
        for name, text in (("smtp.ini", "[main]\nlisten=127.0.0.1:%d\nnodes=cpus\n" % port),
                           ("smtp_forward.ini", "host=127.0.0.1\nport=%d\n" % sink_port),
                           ("plugins", "rcpt_to.in_host_list\nqueue/smtp_forward\n"),
                           ("host_list", "example.test\n"),
                           ("log.ini", "[main]\nlevel=warn\n"),
                           ("me", "haraka.bench.test\n"),
                           ("databytes", "104857600\n")):
            with open(os.path.join(conf, name), "w") as f:
                f.write(text)
        self.cg = Cgroup("bench-haraka")
        self.p = subprocess.Popen(self.cg.prefix() + [exe, "-c", inst], stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(work, "haraka.log"), "w"))
        wait_port(port)
        time.sleep(1)  # the cluster workers come up after the master listens

    def stop(self):
        for pid in self.cg.pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        try:
            self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
        for pid in self.cg.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.cg.remove()


PEERS = {"bulwark": Bulwark, "postfix": Postfix, "haraka": Haraka,
         "bulwark-filter": BulwarkFilter, "bulwark-filter-sa": BulwarkFilterSa,
         "postfix-sa": PostfixSpamAssassin, "postfix-rspamd": PostfixRspamd,
         "bulwark-av-clamd": BulwarkAvClamd, "postfix-rspamd-clamav": PostfixRspamdClamav}
FILTERING = ("bulwark-filter", "bulwark-filter-sa", "postfix-sa", "postfix-rspamd", "bulwark-av-clamd",
             "postfix-rspamd-clamav")

# What the local DNS server answers for the filtering peers: the load generators'
# sender domains publish SPF and DMARC, the client's address has a name, and every
# other name under .test does not exist.
DNS_RECORDS = [
    "--txt-record=bulwark-load.test,v=spf1 ip4:127.0.0.1 -all",
    "--txt-record=_dmarc.bulwark-load.test,v=DMARC1; p=none",
    "--txt-record=sender.test,v=spf1 ip4:127.0.0.1 -all",
    "--txt-record=_dmarc.sender.test,v=DMARC1; p=none",
    "--ptr-record=1.0.0.127.in-addr.arpa,client.bench.test",
    "--address=/client.bench.test/127.0.0.1",
    "--local=/test/",
    "--local-ttl=300",
]


def start_dns(port):
    p = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--user=root",
                          "--bind-interfaces", "--listen-address=127.0.0.1", "--port=%d" % port] + DNS_RECORDS,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bulwark", default=os.path.join(ROOT, "target/release/bulwark"))
    ap.add_argument("--load", default=os.path.join(ROOT, "target/release/bulwark-load"))
    ap.add_argument("--peers", default="bulwark,postfix,haraka")
    ap.add_argument("--clients", default="bulwark-load,smtp-source")
    ap.add_argument("--sizes", default="1024,4096,65536")
    ap.add_argument("--messages", type=int, default=5000, help="per run (a quarter of it for sizes over 16 KiB)")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--attachment", type=int, default=0, help="octets of attachment per message (bulwark-load)")
    ap.add_argument("--attachment-kind", default="bin", choices=("bin", "zip"))
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--port-base", type=int, default=26000)
    ap.add_argument("--json", help="write every run here")
    ap.add_argument("--results", help="replace a marked section of this Markdown file with the table")
    ap.add_argument("--section", default="peers", help="name of that section's markers")
    ap.add_argument("--corpus", default=os.path.join(ROOT, "../shared/corpus/train"),
                    help="labelled mail the filtering Bulwark's classifier is trained on")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (cgroups, postfix)")
    if args.attachment and "smtp-source" in args.clients.split(","):
        raise SystemExit("--attachment needs --clients bulwark-load (smtp-source sends no attachments)")
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            raise SystemExit("unknown peer %r (known: %s)" % (p, ", ".join(PEERS)))
    work = tempfile.mkdtemp(prefix="bulwark-bench-")
    # Postfix opens its files as the postfix user, which must be able to get there.
    os.chmod(work, 0o755)
    dns = None
    if any(p in FILTERING for p in peers):
        args.dns_port = free_port()
        dns = start_dns(args.dns_port)
        args.model = os.path.join(work, "model.bwm")
        args.rules_cache = os.environ.get("RULES_CACHE", "/opt/bulwark-peers/rules-cache")
        sh(args.bulwark, "learn", "--spam", os.path.join(args.corpus, "spam"), "--ham",
           os.path.join(args.corpus, "ham"), "--model", args.model, stdout=subprocess.DEVNULL)
    sink_port = args.port_base
    sink = Sink(args, sink_port, work)
    results = []
    try:
        for size in [int(x) for x in args.sizes.split(",")]:
            messages = args.messages if size <= 16384 else max(100, args.messages // 4)
            for client in args.clients.split(","):
                for run in range(args.runs):
                    for i, peer in enumerate(peers):
                        d = os.path.join(work, "%s-%s-%d-%d" % (peer, client, size, run))
                        os.makedirs(d)
                        os.chmod(d, 0o755)
                        server = PEERS[peer](args, d, args.port_base + 1 + i, sink_port)
                        try:
                            r = measure(args, peer, server.cg, args.port_base + 1 + i, sink, client, size, messages)
                        finally:
                            server.stop()
                        results.append(r)
                        print("%-8s %-12s %6d B run %d: accepted %7.0f/s  end-to-end %7.0f/s  CPU %5.2f s/1000  RSS %7.1f MiB  PSS %6.1f MiB  (%d/%d)"
                              % (peer, client, size, run + 1, r["accepted_per_s"], r["e2e_per_s"], r["cpu_s_per_1000"],
                                 r["rss_mib"], r["pss_mib"], r["delivered"], messages), flush=True)
    finally:
        sink.stop()
        if dns:
            dns.terminate()
            dns.wait()
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    table = make_table(results, peers)
    print()
    print(table)
    if args.results:
        write_results(args, table)


def replace_section(path, name, section):
    """Puts `section` (which starts and ends with the markers of `name`) in place of the
    marked section of the Markdown file at `path`, or at its end."""
    begin, end = "<!-- %s:begin -->" % name, "<!-- %s:end -->" % name
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = "# Benchmark results\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def write_results(args, table):
    """Replaces the text between the peers markers of the results file."""
    begin, end = "<!-- %s:begin -->" % args.section, "<!-- %s:end -->" % args.section
    uname = os.uname()
    postfix = subprocess.run(["postconf", "-d", "-h", "mail_version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    haraka = "?"
    if "haraka" in args.peers:
        with open(os.path.join(HARAKA, "node_modules", "Haraka", "package.json")) as f:
            haraka = json.load(f)["version"]
    section = "\n".join([
        begin,
        "## %s" % {"peers": "Peers: Bulwark, Postfix and Haraka side by side",
                    "filter-peers": "Filtering peers: Bulwark with every check on, Postfix + SpamAssassin, Postfix + rspamd",
                    "av-peers": "Antivirus peers: Bulwark with every check and antivirus, Postfix + rspamd + clamav-milter"}
        .get(args.section, "Relay of record: %s" % ", ".join(args.peers.split(","))),
        "",
        "- Command: `scripts/bench-%s.sh` (= `scripts/bench_peers.py %s`)." % (
            {"av-peers": "av"}.get(args.section, args.section), " ".join(
            a for a in ["--sizes " + args.sizes, "--clients " + args.clients, "--peers " + args.peers,
                        "--messages %d" % args.messages, "--connections %d" % args.connections, "--runs %d" % args.runs]
            + (["--attachment %d --attachment-kind %s" % (args.attachment, args.attachment_kind)] if args.attachment else []))),
        "- Each peer relays to the same `bulwark-load sink`. Bulwark: `bulwark serve` with its defaults (2 cores,",
        "  spool fsynced before 250). Postfix %s: a private instance on loopback, durable queue as shipped." % postfix,
    ] + ([
        "- bulwark-filter: every check with the built-in rules, a classifier trained on the corpus, phishing",
        "  checks, SPF/DKIM/DMARC/ARC/iprev against a local dnsmasq; bulwark-filter-sa: the same plus Debian's",
        "  2,459 stock SpamAssassin rules (compiled once, loaded from the cache); `bulwark` is the same engine",
        "  with inspection and authentication off.",
        "- postfix-sa: Postfix + spamass-milter (`-r 15`) + Debian's spamd 4.0 (`-L -m 4`, stock rules, no Bayes",
        "  database). postfix-rspamd: Postfix + rspamd 3.4 (Debian's package, unpacked beside vectorscan, which",
        "  conflicts with its libhyperscan5) as a milter, its proxy scanning itself, stock configuration, no Redis;",
        "  DNS for both to the same dnsmasq. Every process of a peer is in its cgroup (CPU, memory).",
    ] if any(p in FILTERING for p in args.peers.split(",")) else []) + ([
        "- Haraka %s: `rcpt_to.in_host_list` and `queue/smtp_forward`, `nodes=cpus`; it forwards during the" % haraka,
        "  client's DATA phase and keeps no queue of its own.",
    ] if "haraka" in args.peers else []) + ([
        "- Every message carries an attachment: %s." % (
            "`documents.zip`, four deflated text files holding %d octets in all, base64" % args.attachment
            if args.attachment_kind == "zip" else "%d random octets, base64" % args.attachment),
        "- bulwark-filter here includes the built-in antivirus (on by default: the archive walk, EICAR and the",
        "  hash and body signatures); bulwark-av-clamd also sends every message to clamd. postfix-rspamd-clamav:",
        "  Postfix with rspamd (as a milter) then clamav-milter 1.4 (`OnInfected Reject`, `OnFail Defer`).",
        "  Every clamd is Debian's 1.4, in its peer's cgroup, with the same two-signature database (no",
        "  network for freshclam: ClamAV's own million signatures would make clamd slower and larger).",
    ] if args.attachment else []) + [
        "- Messages above 16 KiB: a quarter of the count per run.",
        "- Machine: %s %s, %d CPUs. Date: %s." % (uname.sysname, uname.release, os.cpu_count(), time.strftime("%Y-%m-%d")),
        "- Chart: `bench/peers.png`; every run: `bench/peers.json`." if args.section == "peers" else
        "- CPU: every process of the peer (cpuacct cgroup); memory: sum over its processes, sampled every 100 ms.",
        "",
        table,
        end,
    ])
    replace_section(args.results, args.section, section)


def make_table(results, peers):
    metrics = (("accepted msgs/s", "accepted_per_s"), ("end-to-end msgs/s", "e2e_per_s"),
               ("CPU s / 1000 msgs", "cpu_s_per_1000"), ("peak RSS MiB", "rss_mib"), ("peak PSS MiB", "pss_mib"))
    # Each Bulwark against each peer of its kind, and the filtering one against the relay.
    pairs = [("bulwark", o) for o in peers if o in ("postfix", "haraka")]
    for f in ("bulwark-filter", "bulwark-filter-sa", "bulwark-av-clamd"):
        pairs += [(f, o) for o in peers if o in ("postfix-rspamd", "postfix-sa", "postfix-rspamd-clamav")]
        if "bulwark" in peers:
            pairs.append((f, "bulwark"))
    pairs = [(a, b) for a, b in pairs if a in peers]
    head = "| size | client | metric (median) | " + " | ".join(peers) + "".join(" | %s/%s" % ab for ab in pairs) + " |"
    lines = [head, "|" + "---|" * (3 + len(peers) + len(pairs))]
    keys = sorted({(r["size"], r["client"]) for r in results})
    for size, client in keys:
        for label, key in metrics:
            med = {}
            for p in peers:
                vals = [r[key] for r in results if r["peer"] == p and r["size"] == size and r["client"] == client]
                med[p] = statistics.median(vals) if vals else float("nan")
            cells = ["%.1f" % med[p] for p in peers]
            ratios = ["%.2f" % (med[a] / med[b]) if med.get(b) else "n/a" for a, b in pairs]
            lines.append("| %d | %s | %s | %s |" % (size, client, label, " | ".join(cells + ratios)))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
