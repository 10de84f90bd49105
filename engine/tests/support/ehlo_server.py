#!/usr/bin/python3
"""A next hop for delivery tests that advertises exactly the EHLO lines it is given.

    ehlo_server.py PORT LOG [EHLO-LINE ...]

The first EHLO line is the greeting text (it may contain keywords that are not
extensions); the others are the extensions. Every transaction is appended to LOG as one
JSON object: {"mail": "MAIL FROM:<…> …", "rcpts": [...], "data": "…"}. Commands are read
one line at a time and answered in order, so pipelining is not needed. Stops on SIGTERM.
"""
import json
import signal
import socketserver
import sys

PORT, LOG, EHLO = int(sys.argv[1]), sys.argv[2], sys.argv[3:] or ["next.test"]


class Handler(socketserver.StreamRequestHandler):
    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self):
        self.reply("220 next.test ESMTP")
        tx = None
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
            verb = cmd[:4].upper()
            if verb == "EHLO":
                lines = EHLO
                for i, l in enumerate(lines):
                    self.reply(("250 " if i == len(lines) - 1 else "250-") + l)
            elif verb == "HELO":
                self.reply("250 next.test")
            elif verb == "MAIL":
                tx = {"mail": cmd, "rcpts": [], "data": ""}
                self.reply("250 2.1.0 ok")
            elif verb == "RCPT":
                tx["rcpts"].append(cmd)
                self.reply("250 2.1.5 ok")
            elif verb == "DATA":
                self.reply("354 go ahead")
                data = b""
                while True:
                    l = self.rfile.readline()
                    if not l or l == b".\r\n":
                        break
                    data += l[1:] if l.startswith(b".") else l
                tx["data"] = data.decode("utf-8", "replace")
                with open(LOG, "a") as f:
                    f.write(json.dumps(tx) + "\n")
                self.reply("250 2.0.0 queued")
            elif verb == "RSET":
                tx = None
                self.reply("250 2.0.0 ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 bye")
                return
            else:
                self.reply("502 5.5.2 not here")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


srv = Server(("127.0.0.1", PORT), Handler)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
srv.serve_forever()
