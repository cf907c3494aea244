#!/bin/sh
# README's first command: install what is missing, build, and run doorman on
# examples/doorman.json: https://localhost:8443 in front of a small demo
# backend on 127.0.0.1:9080, with a certificate from doorman's local CA.
# Ctrl-C stops both.
set -eu
cd "$(dirname "$0")/.."
sh tests/install-deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release -j"${JOBS:-2}" --target doorman dm_test_backend

DOORMAN=build/release/proxy/doorman
build/release/tests/tools/dm_test_backend --listen 127.0.0.1:9080 --name demo >/dev/null &
BACKEND=$!
trap 'kill $BACKEND 2>/dev/null' EXIT INT TERM

ROOT=$("$DOORMAN" trust)
echo "doorman: try   curl --cacert $ROOT https://localhost:8443/hello" >&2
"$DOORMAN" run --config examples/doorman.json
