#!/usr/bin/python3
"""A downstream MTA for trying Bulwark out and for its integration tests (aiosmtpd).

Each accepted message is written to DIR/NNNNNN.eml with its envelope in NNNNNN.json
(mail_from, rcpt_tos, tls, peer). Recipients whose local part starts with `reject`
get 550 5.1.1, with `defer` get 451 4.2.0. With --tls-cert/--tls-key it offers
STARTTLS. It prints "ready" on stdout once listening.
"""
import argparse
import asyncio
import json
import os
import signal
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class Recorder:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.count = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        if local.startswith("reject"):
            return "550 5.1.1 <%s>: Recipient address rejected: unknown user" % address
        if local.startswith("defer"):
            return "451 4.2.0 <%s>: try again later" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        base = os.path.join(self.out_dir, "%06d" % n)
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        with open(base + ".eml.tmp", "wb") as f:
            f.write(content)
        meta = {
            "mail_from": "" if envelope.mail_from in ("<>", None) else envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "peer": str(session.peer),
        }
        with open(base + ".json", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 2.0.0 OK stored as %d" % n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--max-line", type=int, default=998,
                   help="longest content line accepted, without CRLF (RFC 5321: 998)")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    os.makedirs(a.dir, exist_ok=True)
    ctx = None
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
    handler = Recorder(a.dir)

    class Server(SMTP):
        # aiosmtpd sizes its reader by this at construction; it counts the CRLF and
        # allows one octet more than RFC 5321's 998.
        line_length_limit = a.max_line + 3

    class Ctl(Controller):
        def factory(self):
            return Server(self.handler, hostname="sink.test", tls_context=ctx,
                          require_starttls=False, data_size_limit=0, decode_data=False,
                          enable_SMTPUTF8=True)

    ctl = Ctl(handler, hostname=host, port=int(port), ready_timeout=10)
    ctl.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    ctl.stop()


if __name__ == "__main__":
    main()
