#!/bin/sh
# Regenerates the test-only PKI of the pinpost-push tests. See README.md.
# Run from this directory: ./generate.sh
set -eu
DAYS=36500

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# The CA the test broker trusts and the channel trusts.
ec_key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$DAYS" -subj "/O=pinpost tests/CN=pinpost test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem

# The broker's certificate: localhost and 127.0.0.1.
ec_key server.key
openssl req -new -key server.key -subj "/O=pinpost tests/CN=localhost" -out server.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days "$DAYS" -extfile server.ext -out server.pem

# The channel's client certificate, issued by the same CA.
ec_key client.key
openssl req -new -key client.key -subj "/O=pinpost tests/CN=pinpost-gateway" -out client.csr
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days "$DAYS" -extfile client.ext -out client.pem

# A client certificate from a CA the broker does not trust.
ec_key rogue-ca.key
openssl req -x509 -new -key rogue-ca.key -sha256 -days "$DAYS" -subj "/O=somebody else/CN=rogue CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out rogue-ca.pem
ec_key rogue-client.key
openssl req -new -key rogue-client.key -subj "/O=somebody else/CN=pinpost-gateway" -out rogue-client.csr
openssl x509 -req -in rogue-client.csr -CA rogue-ca.pem -CAkey rogue-ca.key -CAcreateserial -sha256 -days "$DAYS" -extfile client.ext -out rogue-client.pem

rm -f ./*.csr ./*.ext ./*.srl rogue-ca.key
