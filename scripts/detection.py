#!/usr/bin/env python3
"""Detection quality by cross-validation on the labelled corpus, for Bulwark and for
SpamAssassin (spamc against Debian's spamd) on the same messages.

The corpus's messages are split into FOLDS folds by their sorted position in each class.
For each fold, both filters learn from the other folds (Bulwark: `bulwark learn`;
SpamAssassin: `sa-learn` into a Bayes database of the fold) and score the fold. A message
counts as flagged when Bulwark's verdict is not clean (score from the tag threshold up,
or another verdict) and when SpamAssassin's score reaches its required score (5.0), and
as refused when Bulwark's action is reject (score from the spam threshold up).
Reports spam caught and ham / hardham wrongly flagged, per filter, as a Markdown table.
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = ["spam", "ham", "hardham"]


def files_of(corpus: Path):
    return {c: sorted((corpus / c).iterdir()) for c in CLASSES}


def link_dir(d: Path, files):
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        (d / f.name).symlink_to(f.resolve())
    return d


def bulwark_config(work: Path, model: Path, rules):
    cfg = work / "bulwark.toml"
    rules_line = "rules = [%s]\n" % ", ".join(json.dumps(str(r)) for r in rules) if rules else ""
    cfg.write_text(
        "[server]\nhostname = \"mx.bulwark.test\"\nlisten = [\"127.0.0.1:1\"]\n"
        f"[spool]\ndir = \"{work / 'spool'}\"\n"
        f"[inspection]\nmodel = \"{model}\"\ncache_dir = \"{work.parent.parent / 'rules-cache'}\"\n"
        + rules_line
    )
    return cfg


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stderr}")
    return r


def bulwark_fold(binary, work, train, test, rules):
    model = work / "model.bwm"
    run([binary, "learn", "--spam", str(train["spam"]), "--ham", str(train["ham"]),
         "--model", str(model)])
    cfg = bulwark_config(work, model, rules)
    out = {}
    for c in CLASSES:
        res = run([binary, "score", "--config", str(cfg), "--json", str(test[c])])
        out[c] = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def sa_fold(work, train, test):
    db = work / "sa-bayes"
    db.mkdir(parents=True, exist_ok=True)
    for cls, flag in (("spam", "--spam"), ("ham", "--ham")):
        run(["sa-learn", "--dbpath", str(db), flag, str(train[cls])])
    site = work / "sa-site"
    site.mkdir(parents=True, exist_ok=True)
    # Debian's stock rules and its local.cf, plus this fold's Bayes database.
    for f in Path("/etc/spamassassin").glob("*"):
        if f.is_file():
            shutil.copy(f, site / f.name)
    with open(site / "local.cf", "a") as fh:
        fh.write(f"\nuse_bayes 1\nbayes_auto_learn 0\nbayes_path {db}/bayes\n"
                 "bayes_file_mode 0666\n")
    os.system(f"chmod -R a+rwX {work}")
    port = free_port()
    spamd = subprocess.Popen(
        ["spamd", "--listen", f"127.0.0.1:{port}", "-L", "-m", "2", "-u", "nobody",
         "--siteconfigpath", str(site), "--nouser-config", "-s", "stderr"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.3)
        def check(f):
            with open(f, "rb") as fh:
                r = subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(port), "-c",
                                    "-s", "50000000"],
                                   stdin=fh, capture_output=True, text=True)
            score, _, required = r.stdout.strip().partition("/")
            try:
                return (float(score), float(required))
            except ValueError:
                return (None, None)

        out = {}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for c in CLASSES:
                out[c] = list(pool.map(check, sorted(test[c].iterdir())))
        failed = sum(1 for c in CLASSES for s, _ in out[c] if s is None)
        if failed:
            raise RuntimeError(f"spamc got no score for {failed} messages (is spamd up?)")
        return out
    finally:
        spamd.send_signal(signal.SIGTERM)
        spamd.wait(30)


def pct(n, d):
    return f"{100.0 * n / d:.1f}%" if d else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--bulwark", default="target/release/bulwark")
    ap.add_argument("--sa-rules", default="/usr/share/spamassassin",
                    help="SpamAssassin rules Bulwark also runs in its second configuration")
    ap.add_argument("--no-spamassassin", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--own", type=Path,
                    help="also score this directory of labelled messages (name prefix spam-, phish-, "
                         "ham-) with both filters trained on the whole corpus, and list each verdict")
    ap.add_argument("--own-blocklist", type=Path,
                    help="URL blocklist for Bulwark on --own (inspect/testdata/blocklist.txt)")
    args = ap.parse_args()
    if args.own:
        own(args)
        return

    files = files_of(args.corpus)
    root = Path(tempfile.mkdtemp(prefix="bulwark-detect-"))
    root.chmod(0o755)  # spamd's children run as nobody
    configs = {"Bulwark (built-in rules + classifier)": [],
               "Bulwark (+ SpamAssassin's stock rules)": [args.sa_rules]}
    totals = {name: {c: {"flagged": 0, "refused": 0, "n": 0} for c in CLASSES}
              for name in list(configs) + ["SpamAssassin 4.0 (spamd, rules + Bayes)"]}
    t_start = time.time()
    try:
        for k in range(args.folds):
            fold = root / f"fold{k}"
            train = {
                "spam": link_dir(fold / "train-spam",
                                 [f for i, f in enumerate(files["spam"]) if i % args.folds != k]),
                "ham": link_dir(fold / "train-ham",
                                [f for c in ("ham", "hardham")
                                 for i, f in enumerate(files[c]) if i % args.folds != k]),
            }
            test = {c: link_dir(fold / f"test-{c}",
                                [f for i, f in enumerate(files[c]) if i % args.folds == k])
                    for c in CLASSES}
            for name, rules in configs.items():
                w = fold / name.split()[1].strip("(+").lower()
                w.mkdir(parents=True, exist_ok=True)
                res = bulwark_fold(args.bulwark, w, train, test, rules)
                for c in CLASSES:
                    t = totals[name][c]
                    for r in res[c]:
                        t["n"] += 1
                        t["flagged"] += r["verdict"] != "clean"
                        t["refused"] += r["action"] == "reject"
            if not args.no_spamassassin:
                res = sa_fold(fold / "sa", train, test)
                t_sa = totals["SpamAssassin 4.0 (spamd, rules + Bayes)"]
                for c in CLASSES:
                    for score, required in res[c]:
                        t_sa[c]["n"] += 1
                        if score is not None and score >= required:
                            t_sa[c]["flagged"] += 1
                        if score is not None and score >= 15.0:
                            t_sa[c]["refused"] += 1
            print(f"fold {k + 1}/{args.folds} done ({time.time() - t_start:.0f} s)",
                  file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.no_spamassassin:
        totals.pop("SpamAssassin 4.0 (spamd, rules + Bayes)")
    print(f"| filter ({args.folds}-fold cross-validation) | spam flagged | spam refused (≥ 15) "
          "| ham flagged | hardham flagged |")
    print("|---|---|---|---|---|")
    for name, t in totals.items():
        print(f"| {name} | {t['spam']['flagged']}/{t['spam']['n']} "
              f"({pct(t['spam']['flagged'], t['spam']['n'])}) "
              f"| {pct(t['spam']['refused'], t['spam']['n'])} "
              f"| {t['ham']['flagged']}/{t['ham']['n']} ({pct(t['ham']['flagged'], t['ham']['n'])}) "
              f"| {t['hardham']['flagged']}/{t['hardham']['n']} "
              f"({pct(t['hardham']['flagged'], t['hardham']['n'])}) |")
    if args.json:
        args.json.write_text(json.dumps(totals, indent=2))


def own(args):
    """Both filters, trained on the whole corpus, on the project's own labelled messages."""
    root = Path(tempfile.mkdtemp(prefix="bulwark-own-"))
    root.chmod(0o755)
    try:
        files = files_of(args.corpus)
        train = {"spam": link_dir(root / "train-spam", files["spam"]),
                 "ham": link_dir(root / "train-ham", files["ham"] + files["hardham"])}
        mails = sorted(args.own.iterdir())
        test = link_dir(root / "own", mails)
        w = root / "bulwark"
        w.mkdir()
        model = w / "model.bwm"
        run([args.bulwark, "learn", "--spam", str(train["spam"]), "--ham", str(train["ham"]),
             "--model", str(model)])
        cfg = bulwark_config(w, model, [args.sa_rules])
        with open(cfg, "a") as fh:
            if args.own_blocklist:
                fh.write(f"url_blocklist = [\"{args.own_blocklist.resolve()}\"]\n")
            fh.write("[[domains]]\nname = \"example.com\"\nroute = \"127.0.0.1:2526\"\n")
        res = run([args.bulwark, "score", "--config", str(cfg), "--json", str(test)])
        bw = {Path(json.loads(l)["file"]).name: json.loads(l) for l in res.stdout.splitlines() if l.strip()}
        sa = sa_fold(root / "sa", train, {"spam": test, "ham": link_dir(root / "none-ham", []),
                                          "hardham": link_dir(root / "none-hardham", [])})["spam"]
        print("| message | label | Bulwark | SpamAssassin |\n|---|---|---|---|")
        right = {"bulwark": 0, "sa": 0}
        for f, (score, required) in zip(mails, sa):
            label = f.name.split("-")[0]
            b = bw[f.name]
            want_flag = label != "ham"
            b_flag = b["verdict"] != "clean"
            s_flag = score is not None and score >= required
            right["bulwark"] += b_flag == want_flag
            right["sa"] += s_flag == want_flag
            print(f"| {f.name} | {label} | {b['verdict']} {b['score']:.1f} | "
                  f"{'spam' if s_flag else 'clean'} {score:.1f} |")
        print(f"| **right** | | {right['bulwark']}/{len(mails)} | {right['sa']}/{len(mails)} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
