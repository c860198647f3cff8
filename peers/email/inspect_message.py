#!/usr/bin/env python3
"""Inspect a message received by smtp_server.py with parsers written elsewhere, for the
pinpost-email tests. Prints one JSON object.

  inspect_message.py mime <file>
      The structure as Python's email package parses it: top-level content type and its
      parameters, every part's content type, transfer encoding and decoded payload (text).
  inspect_message.py dkim <file> <dns TXT record>
      Verify the DKIM-Signature with dkimpy, answering the key lookup with the given record.
"""

import json
import sys
from email import policy
from email.parser import BytesParser


def mime(path):
    with open(path, "rb") as f:
        msg = BytesParser(policy=policy.default).parse(f)
    out = {
        "content_type": msg.get_content_type(),
        "params": {k: v for k, v in msg.get_params() or [] if v},
        "headers": {k.lower(): str(v) for k, v in msg.items()},
        "defects": [str(d) for d in msg.defects],
        "parts": [],
    }
    parts = msg.iter_parts() if msg.is_multipart() else [msg]
    for part in parts:
        payload = part.get_payload(decode=True) or b""
        out["parts"].append(
            {
                "content_type": part.get_content_type(),
                "params": {k: v for k, v in part.get_params() or [] if v},
                "transfer_encoding": part.get("Content-Transfer-Encoding"),
                "disposition": part.get("Content-Disposition"),
                "payload": payload.decode("utf-8", "replace"),
                "defects": [str(d) for d in part.defects],
            }
        )
    return out


def dkim_verify(path, record):
    import dkim

    with open(path, "rb") as f:
        raw = f.read()

    def dnsfunc(name, timeout=5):
        return record.encode()

    d = dkim.DKIM(raw)
    try:
        ok = d.verify(dnsfunc=dnsfunc)
        error = None
    except Exception as e:  # a malformed key or signature is a failed verification
        ok = False
        error = str(e)
    return {
        "ok": bool(ok),
        "error": error,
        "domain": (d.domain or b"").decode(),
        "selector": (d.selector or b"").decode(),
    }


def main():
    cmd = sys.argv[1]
    if cmd == "mime":
        print(json.dumps(mime(sys.argv[2])))
    elif cmd == "dkim":
        print(json.dumps(dkim_verify(sys.argv[2], sys.argv[3])))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
