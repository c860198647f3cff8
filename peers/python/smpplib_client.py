#!/usr/bin/env python3
"""Drive pinpost's loopback SMSC with smpplib, a third-party SMPP client.

Binds as transceiver, submits three messages split with smpplib's own gsm.make_parts (a GSM
03.38 text, a UCS-2 text and a long GSM text sent as concatenated parts), answers the delivery
receipts and prints one JSON object summarising what was sent and received. Exit status 0 means
every part got a submit_sm_resp and a receipt; 1 means something was missing; 2 means smpplib
is not installed.
"""

import argparse
import json
import logging
import sys
import time

try:
    import smpplib.client
    import smpplib.consts
    import smpplib.gsm
except ImportError as exc:  # pragma: no cover - reported to the caller
    print(json.dumps({"error": "smpplib is not installed: %s" % exc}))
    sys.exit(2)

DEFAULT_GSM = "pinpost PIN 4821 [valid 10 min] fee 0€"
DEFAULT_UCS2 = "pinpost の暗証番号は 4821 です"
DEFAULT_LONG = (
    "pinpost long notice: your settlement PIN is 4821. "
    "It can be used once, for the amount and payee you chose, until it expires. "
    "Never tell it to anyone who calls you; the shop asks for it only at checkout. "
    "If you did not ask for this PIN, contact your carrier. "
    "This text is long on purpose so that it needs three parts."
)


def as_text(value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--system-id", default="smpplib")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--source", default="PINPOST")
    parser.add_argument("--destination", default="819012345678")
    parser.add_argument("--gsm-text", default=DEFAULT_GSM)
    parser.add_argument("--ucs2-text", default=DEFAULT_UCS2)
    parser.add_argument("--long-text", default=DEFAULT_LONG)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for receipts")
    args = parser.parse_args()

    # smpplib logs whole PDUs at DEBUG; keep its logging quiet.
    logging.basicConfig(level=logging.ERROR)

    client = smpplib.client.Client(
        args.host, args.port, timeout=1, allow_unknown_opt_params=True
    )
    responses = []  # message ids in the order the responses arrived
    receipts = []

    def on_sent(pdu, **_kwargs):
        responses.append({"sequence": pdu.sequence, "message_id": as_text(pdu.message_id)})

    def on_received(pdu, **_kwargs):
        text = pdu.short_message.decode("ascii", "replace") if pdu.short_message else ""
        fields = dict(
            item.split(":", 1) for item in text.split(" ") if ":" in item
        )
        receipts.append(
            {
                "receipted_message_id": as_text(getattr(pdu, "receipted_message_id", None)),
                "message_state": getattr(pdu, "message_state", None),
                "esm_class": pdu.esm_class,
                "id_in_text": fields.get("id"),
                "stat": fields.get("stat"),
                "text": text,
            }
        )
        return smpplib.consts.SMPP_ESME_ROK

    client.set_message_sent_handler(on_sent)
    client.set_message_received_handler(on_received)

    summary = {"bound": False, "messages": [], "responses": responses, "receipts": receipts}
    client.connect()
    try:
        client.bind_transceiver(system_id=args.system_id, password=args.password)
        summary["bound"] = True
        total_parts = 0
        for label, text in (
            ("gsm", args.gsm_text),
            ("ucs2", args.ucs2_text),
            ("long", args.long_text),
        ):
            parts, data_coding, esm_class = smpplib.gsm.make_parts(text)
            sequences = []
            for part in parts:
                pdu = client.send_message(
                    source_addr_ton=smpplib.consts.SMPP_TON_ALNUM,
                    source_addr_npi=smpplib.consts.SMPP_NPI_UNK,
                    source_addr=args.source,
                    dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                    dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
                    destination_addr=args.destination,
                    short_message=part,
                    data_coding=data_coding,
                    esm_class=esm_class,
                    registered_delivery=True,
                )
                sequences.append(pdu.sequence)
            total_parts += len(parts)
            summary["messages"].append(
                {
                    "label": label,
                    "text": text,
                    "parts": len(parts),
                    "data_coding": data_coding,
                    "esm_class": esm_class,
                    "sequences": sequences,
                }
            )

        deadline = time.monotonic() + args.timeout
        while (len(responses) < total_parts or len(receipts) < total_parts) and (
            time.monotonic() < deadline
        ):
            client.read_once()
        summary["total_parts"] = total_parts
        by_sequence = {r["sequence"]: r["message_id"] for r in responses}
        for message in summary["messages"]:
            message["message_ids"] = [by_sequence.get(s) for s in message["sequences"]]
        client.unbind()
    finally:
        client.disconnect()

    ok = (
        summary["bound"]
        and len(responses) == summary.get("total_parts", -1)
        and len(receipts) == summary.get("total_parts", -1)
    )
    summary["ok"] = bool(ok)
    print(json.dumps(summary, ensure_ascii=False))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
