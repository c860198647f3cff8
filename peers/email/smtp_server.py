#!/usr/bin/env python3
"""A real SMTP submission server for the pinpost-email tests, built on PyPI aiosmtpd.

Listens on 127.0.0.1 (port 0 unless --port), prints "READY <port>" once it accepts
connections, and exits when its stdin closes (so it never outlives the test that started it).

TLS: --tls starttls (STARTTLS offered and required before any mail command), implicit (TLS
from the first byte) or none (no STARTTLS at all: a client that insists on TLS must give up).
AUTH: --auth user:password makes AUTH (PLAIN/LOGIN) mandatory; it is offered only after
STARTTLS, or at once with implicit TLS or without TLS (so that a client sending credentials in
the clear would be caught). Every AUTH attempt is logged to <maildir>/auth.log.

Every accepted message is written to --maildir as <queue id>.eml (the content exactly as
received after DATA, dot-unstuffed) and then <queue id>.json (envelope, TLS and AUTH state).
The reply to DATA is "250 2.0.0 Ok: queued as <queue id>" ("250 2.0.0 Ok" with --no-queue-id).

Recipients whose local part starts with:
  tempfail   -> 451 4.3.0 at RCPT TO
  reject     -> 550 5.1.1 at RCPT TO
  datatemp   -> 452 4.3.1 after the content
  datareject -> 554 5.7.1 after the content
  hangup     -> the content is received and stored as <id>.eml, then the connection is
                dropped without a reply
  slow       -> the content is received, the reply never comes
"""

import argparse
import asyncio
import json
import os
import secrets
import ssl
import sys
import threading

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls", choices=["starttls", "implicit", "none"], default="starttls")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--auth", help="user:password; AUTH becomes mandatory")
    p.add_argument("--maildir", required=True)
    p.add_argument("--no-queue-id", action="store_true")
    return p.parse_args()


class Authenticator:
    def __init__(self, user, password, maildir):
        self.user = user.encode()
        self.password = password.encode()
        self.log = os.path.join(maildir, "auth.log")

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        tls = server.transport.get_extra_info("ssl_object") is not None
        with open(self.log, "a") as f:
            f.write(f"{mechanism} tls={tls} ok={ok}\n")
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class Handler:
    def __init__(self, maildir, queue_id):
        self.maildir = maildir
        self.queue_id = queue_id

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0].lower()
        if local.startswith("tempfail"):
            return "451 4.3.0 Temporary failure, try again later"
        if local.startswith("reject"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    def store(self, server, session, envelope, qid):
        raw = envelope.original_content or b""
        with open(os.path.join(self.maildir, qid + ".eml.tmp"), "wb") as f:
            f.write(raw)
        os.rename(
            os.path.join(self.maildir, qid + ".eml.tmp"),
            os.path.join(self.maildir, qid + ".eml"),
        )
        meta = {
            "queue_id": qid,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": server.transport.get_extra_info("ssl_object") is not None,
            "authenticated": bool(session.authenticated),
            "login": (
                session.auth_data.login.decode()
                if isinstance(session.auth_data, LoginPassword)
                else None
            ),
            "helo": session.host_name,
        }
        with open(os.path.join(self.maildir, qid + ".json.tmp"), "w") as f:
            json.dump(meta, f)
        os.rename(
            os.path.join(self.maildir, qid + ".json.tmp"),
            os.path.join(self.maildir, qid + ".json"),
        )

    async def handle_DATA(self, server, session, envelope):
        locals_ = [a.split("@", 1)[0].lower() for a in envelope.rcpt_tos]
        if any(l.startswith("datatemp") for l in locals_):
            return "452 4.3.1 Insufficient system storage"
        if any(l.startswith("datareject") for l in locals_):
            return "554 5.7.1 Message rejected"
        qid = secrets.token_hex(6).upper()
        if any(l.startswith("hangup") for l in locals_):
            self.store(server, session, envelope, qid)
            server.transport.abort()
            await asyncio.sleep(3600)
        if any(l.startswith("slow") for l in locals_):
            self.store(server, session, envelope, qid)
            await asyncio.sleep(3600)
        self.store(server, session, envelope, qid)
        if not self.queue_id:
            return "250 2.0.0 Ok"
        return "250 2.0.0 Ok: queued as " + qid


def tls_context(cert, key):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def watch_stdin():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        os._exit(0)


async def main():
    args = parse_args()
    os.makedirs(args.maildir, exist_ok=True)
    handler = Handler(args.maildir, not args.no_queue_id)
    authenticator = None
    if args.auth:
        user, _, password = args.auth.partition(":")
        authenticator = Authenticator(user, password, args.maildir)
    ctx = None
    if args.tls != "none":
        if not (args.cert and args.key):
            sys.exit("--cert and --key are needed for TLS")
        ctx = tls_context(args.cert, args.key)

    def factory():
        return SMTP(
            handler,
            hostname="smtp.pinpost.test",
            ident="pinpost test MTA (aiosmtpd)",
            tls_context=ctx if args.tls == "starttls" else None,
            require_starttls=args.tls == "starttls",
            auth_required=authenticator is not None,
            # With implicit TLS every session is already encrypted. Without TLS the server
            # offers AUTH in the clear, so a client that would send credentials unprotected
            # shows up in auth.log.
            auth_require_tls=args.tls == "starttls",
            authenticator=authenticator,
            timeout=60,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory,
        host="127.0.0.1",
        port=args.port,
        ssl=ctx if args.tls == "implicit" else None,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    threading.Thread(target=watch_stdin, daemon=True).start()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
