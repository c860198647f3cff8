#!/usr/bin/env node
// An SMPP server built on the npm `smpp` package (a third-party implementation), used as a
// real peer for pinpost's SMPP driver.
//
// Usage: node smpp-server.js [--port N] [--host H] [--receipts tlv|text|none] [--tls]
//   --port      listening port (env SMPP_PORT; default 0 = any free port)
//   --host      listening address (default 127.0.0.1)
//   --receipts  tlv:  deliver_sm receipt with esm_class 0x04, the receipted_message_id and
//                     message_state TLVs, and the standard text with the same id (default)
//               text: the standard text only, with the id in decimal (as SMSCs that answer
//                     submit_sm in hex and receipt in decimal do)
//               none: no receipts
//   --tls       serve SMPP over TLS with tls/server.pem and tls/server-key.pem (test only)
//
// Output, one JSON object per line on stdout:
//   {"event":"listening","port":N}
//   {"event":"bind_transceiver",...} {"event":"submit_sm",...} {"event":"deliver_sm_resp",...}
//   {"event":"unbind"} {"event":"enquire_link"}
// A submit_sm line carries the raw short_message (hex), the UDH (hex), the text as this
// library decodes it, and the fields the driver sets.
//
// USSD: a submit_sm with service_type "USSD" is answered, then confirmed with a deliver_sm
// carrying ussd_service_op 19 (USSN confirm) or 18 (USSR confirm) and receipted_message_id.

'use strict';

const fs = require('fs');
const path = require('path');
const smpp = require('smpp');

function arg(name, fallback) {
  const i = process.argv.indexOf('--' + name);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  const eq = process.argv.find((a) => a.startsWith('--' + name + '='));
  if (eq) return eq.slice(name.length + 3);
  return fallback;
}

const port = Number(arg('port', process.env.SMPP_PORT || '0'));
const host = arg('host', '127.0.0.1');
const receipts = arg('receipts', 'tlv');
const useTls = process.argv.includes('--tls');
if (!['tlv', 'text', 'none'].includes(receipts)) {
  console.error('--receipts must be tlv, text or none');
  process.exit(2);
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// Keep the raw octets of short_message next to the library's decoded form.
const decodeMessage = smpp.filters.message.decode;
smpp.filters.message.decode = function (value, skipUdh) {
  if (Buffer.isBuffer(value) && !this.__raw_short_message) {
    Object.defineProperty(this, '__raw_short_message', {
      value: Buffer.from(value),
      enumerable: false,
    });
  }
  return decodeMessage.call(this, value, skipUdh);
};

let nextId = 0x1a2b00;

function smppTime(d) {
  const p = (n) => String(n).padStart(2, '0');
  return (
    p(d.getUTCFullYear() % 100) +
    p(d.getUTCMonth() + 1) +
    p(d.getUTCDate()) +
    p(d.getUTCHours()) +
    p(d.getUTCMinutes())
  );
}

function onSession(session) {
  let systemId = null;

  session.on('error', (e) => emit({ event: 'session_error', error: String(e && e.message) }));

  session.on('bind_transceiver', (pdu) => {
    systemId = pdu.system_id;
    emit({
      event: 'bind_transceiver',
      system_id: pdu.system_id,
      system_type: pdu.system_type,
      interface_version: pdu.interface_version,
    });
    session.send(pdu.response({ system_id: 'node-smpp' }));
  });

  session.on('enquire_link', (pdu) => {
    emit({ event: 'enquire_link' });
    session.send(pdu.response());
  });

  session.on('unbind', (pdu) => {
    emit({ event: 'unbind' });
    session.send(pdu.response(), () => session.close());
  });

  session.on('deliver_sm_resp', (pdu) => {
    emit({
      event: 'deliver_sm_resp',
      sequence_number: pdu.sequence_number,
      command_status: pdu.command_status,
    });
  });

  session.on('submit_sm', (pdu) => {
    const id = (nextId++).toString(16).toUpperCase();
    const raw = pdu.__raw_short_message || Buffer.alloc(0);
    const udhi = (pdu.esm_class & 0x40) !== 0;
    const udhLen = udhi && raw.length > 0 ? raw[0] + 1 : 0;
    const decoded = pdu.short_message || {};
    const text = typeof decoded.message === 'string' ? decoded.message : null;
    emit({
      event: 'submit_sm',
      system_id: systemId,
      message_id: id,
      service_type: pdu.service_type,
      source_addr: pdu.source_addr,
      source_addr_ton: pdu.source_addr_ton,
      source_addr_npi: pdu.source_addr_npi,
      destination_addr: pdu.destination_addr,
      dest_addr_ton: pdu.dest_addr_ton,
      dest_addr_npi: pdu.dest_addr_npi,
      esm_class: pdu.esm_class,
      data_coding: pdu.data_coding,
      registered_delivery: pdu.registered_delivery,
      validity_period: pdu.validity_period instanceof Date
        ? pdu.validity_period.toISOString()
        : pdu.validity_period || '',
      ussd_service_op: pdu.ussd_service_op === undefined ? null : pdu.ussd_service_op,
      short_message_hex: raw.toString('hex'),
      udh_hex: raw.subarray(0, udhLen).toString('hex'),
      text,
    });
    session.send(pdu.response({ message_id: id }), () => {
      if (pdu.service_type === 'USSD') {
        const op = pdu.ussd_service_op === 2 ? 18 : 19;
        session.deliver_sm({
          source_addr: pdu.destination_addr,
          destination_addr: pdu.source_addr,
          esm_class: 0x00,
          ussd_service_op: op,
          receipted_message_id: id,
          short_message: Buffer.alloc(0),
        });
        return;
      }
      if (receipts === 'none' || (pdu.registered_delivery & 0x03) === 0) return;
      const now = smppTime(new Date());
      const textId = receipts === 'text' ? String(parseInt(id, 16)) : id;
      const echo = (text || '').slice(0, 20);
      const body =
        `id:${textId} sub:001 dlvrd:001 submit date:${now} done date:${now} ` +
        `stat:DELIVRD err:000 text:${echo}`;
      const options = {
        source_addr: pdu.destination_addr,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        data_coding: 0x00,
        short_message: Buffer.from(body, 'latin1'),
      };
      if (receipts === 'tlv') {
        options.receipted_message_id = id;
        options.message_state = 2;
      }
      session.deliver_sm(options);
    });
  });
}

const options = {};
if (useTls) {
  options.key = fs.readFileSync(path.join(__dirname, 'tls', 'server-key.pem'));
  options.cert = fs.readFileSync(path.join(__dirname, 'tls', 'server.pem'));
}
const server = smpp.createServer(options, onSession);
server.on('error', (e) => {
  console.error('smpp server error:', e.message);
  process.exit(1);
});
server.listen(port, host, () => {
  emit({ event: 'listening', port: server.address().port, tls: useTls });
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
// Exit when the parent goes away (stdin closes).
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
