#!/bin/sh
# doorman's container entrypoint (examples/docker/Dockerfile).
#   with arguments:        doorman ARGS...         (e.g. `health`, `reload`, `certificates`)
#   with DOORMAN_CONFIG:   doorman run --config "$DOORMAN_CONFIG"
#   otherwise:             doorman run, one site from DOORMAN_FROM and DOORMAN_TO
#                          (plus DOORMAN_EMAIL, DOORMAN_CA, DOORMAN_CA_ROOT,
#                          DOORMAN_HTTPS_PORT, DOORMAN_HTTP_PORT, DOORMAN_BIND)
# State (certificates, keys, the admin socket) lives in DOORMAN_DATA_DIR,
# default /data. The same script runs outside a container (the tests do):
# DOORMAN_BIN names the binary when it is not on PATH.
set -eu

DOORMAN=${DOORMAN_BIN:-doorman}
DOORMAN_DATA_DIR=${DOORMAN_DATA_DIR:-/data}
export DOORMAN_DATA_DIR

if [ "$#" -gt 0 ]; then
    exec "$DOORMAN" "$@"
fi
if [ -n "${DOORMAN_CONFIG:-}" ]; then
    exec "$DOORMAN" run --config "$DOORMAN_CONFIG"
fi
if [ -z "${DOORMAN_FROM:-}" ] || [ -z "${DOORMAN_TO:-}" ]; then
    echo "doorman-entrypoint: set DOORMAN_FROM and DOORMAN_TO (or DOORMAN_CONFIG)," \
         "e.g. DOORMAN_FROM=app.example.com DOORMAN_TO=app:8080" >&2
    exit 2
fi
# exec: doorman is PID 1's child-free replacement, so `docker stop` (SIGTERM)
# reaches it and it drains gracefully.
exec "$DOORMAN" run
