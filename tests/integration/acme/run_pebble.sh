#!/bin/bash
# Live issuance against Pebble on loopback (shared/notes/pebble.md): starts
# pebble-challtestsrv (DNS only, A -> 127.0.0.1, no AAAA) and pebble with
# PEBBLE_VA_NOSLEEP=1 and a throw-away API certificate, runs acme_issue_driver
# with PEBBLE_WFE_NONCEREJECT=0 (timing, authz reuse off) and then 50 (badNonce
# retries, default authz reuse), and verifies every chain with openssl against
# Pebble's root from the management API. A missing tool is a failure.
# usage: run_pebble.sh path/to/acme_issue_driver [repeat]
set -u
DRIVER=${1:?driver path}
REPEAT=${2:-5}
DRIVER_ARGS=${DRIVER_ARGS:-}   # e.g. "--verbose --poll-first-ms 10"
PEBBLE=${DM_PEBBLE_BIN:-}
if [ ! -x "$PEBBLE" ]; then
  echo "FAIL: DM_PEBBLE_BIN='$PEBBLE' is not a Pebble binary (sh tests/pebble/build.sh build/pebble builds it; tests/run.sh does)"
  exit 1
fi
for tool in pebble-challtestsrv openssl curl; do
  if ! command -v $tool >/dev/null; then
    echo "FAIL: $tool not installed (apt-get install -y pebble openssl curl; tests/install-deps.sh does it)"
    exit 1
  fi
done
T=$(mktemp -d /tmp/dm-pebble-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$T"
}
trap cleanup EXIT
[ -n "${KEEP_LOGS:-}" ] && trap 'cp -r $T/*.log $T/*.out "$KEEP_LOGS"/ 2>/dev/null; cleanup' EXIT
fail() { echo "FAIL: $*"; for f in "$T"/*.log; do echo "== $f"; tail -20 "$f"; done; exit 1; }

# Pebble's API identity: our own throw-away CA and a leaf for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=pebble api CA" -keyout $T/api-ca.key -out $T/api-ca.pem 2>/dev/null || fail "api CA"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout $T/api.key -out $T/api.csr 2>/dev/null || fail "api csr"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n' > $T/api.ext
openssl x509 -req -in $T/api.csr -CA $T/api-ca.pem -CAkey $T/api-ca.key -CAcreateserial \
  -days 30 -extfile $T/api.ext -out $T/api.pem 2>/dev/null || fail "api cert"
cat > $T/pebble.json <<EOF2
{ "pebble": {
    "listenAddress": "127.0.0.1:14000",
    "managementListenAddress": "127.0.0.1:15000",
    "certificate": "$T/api.pem",
    "privateKey": "$T/api.key",
    "httpPort": 5002,
    "tlsPort": 5001,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false
} }
EOF2

pebble-challtestsrv -management 127.0.0.1:8055 -dns01 127.0.0.1:8053 \
  -http01 "" -https01 "" -tlsalpn01 "" -defaultIPv4 127.0.0.1 -defaultIPv6 "" \
  > $T/challtestsrv.log 2>&1 &
PIDS+=($!)

# start_pebble NONCEREJECT AUTHZREUSE: (re)starts pebble and waits for /dir.
PEBBLE_PID=
start_pebble() {
  if [ -n "$PEBBLE_PID" ]; then kill $PEBBLE_PID; wait $PEBBLE_PID 2>/dev/null; fi
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=$1 PEBBLE_AUTHZREUSE=$2 \
    "$PEBBLE" -config $T/pebble.json -dnsserver 127.0.0.1:8053 -strict \
    > $T/pebble-$1.log 2>&1 &
  PEBBLE_PID=$!
  PIDS+=($PEBBLE_PID)
  for _ in $(seq 100); do
    curl -sf --cacert $T/api-ca.pem https://127.0.0.1:14000/dir >/dev/null && return 0
    sleep 0.1
  done
  fail "pebble did not start"
}

# issue LABEL [EXTRA_NAME...]: runs the driver for two names (and any extra
# ones, e.g. an IP identifier, RFC 8738), then verifies the chain.
issue() {
  local label=$1
  shift
  "$DRIVER" --dir https://127.0.0.1:14000/dir --ca-file $T/api-ca.pem \
    --data-dir $T/data-$label --out-chain $T/$label-chain.pem --out-key $T/$label-key.pem \
    --email ops@example.test --repeat $REPEAT $DRIVER_ARGS www.$label.example.test $label.example.test "$@" \
    > $T/$label.out 2> $T/driver-$label.log || fail "driver ($label)"
  cat $T/$label.out
  curl -sf --cacert $T/api-ca.pem https://127.0.0.1:15000/roots/0 > $T/root.pem || fail "root"
  openssl verify -CAfile $T/root.pem -untrusted $T/$label-chain.pem $T/$label-chain.pem \
    || fail "chain ($label) does not verify against Pebble's root"
  # The key is the leaf's.
  [ "$(openssl x509 -in $T/$label-chain.pem -noout -pubkey)" = \
    "$(openssl pkey -in $T/$label-key.pem -pubout)" ] || fail "key does not match ($label)"
  openssl x509 -in $T/$label-chain.pem -noout -ext subjectAltName | grep -q "www.$label.example.test" \
    || fail "SAN missing ($label)"
  [ "$(stat -c %a $T/$label-key.pem)" = 600 ] || fail "key mode ($label)"
}

start_pebble 0 0
issue timing
start_pebble 50 50
issue badnonce 127.0.0.1
openssl x509 -in $T/badnonce-chain.pem -noout -ext subjectAltName | grep -q "IP Address:127.0.0.1" \
  || fail "IP SAN missing"
# Pebble keeps no record of rejections; the driver's debug log would show them.
echo "PASS: Pebble issuance (nonce rejection 0 % and 50 %), chains verified"
