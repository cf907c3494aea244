#!/usr/bin/env bash
# doorman vs nginx, HTTP/1.1 over TLS: CPU per full handshake, CPU per
# keep-alive proxied request, memory per idle TLS connection.
# Not a ctest test: run by hand, as root (it installs packages with apt-get).
# See tests/bench/README.md. Settings come from BENCH_* environment variables.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
[ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev) # for idle_conns.c, the client
if [ "${BENCH_PERF:-0}" = 1 ] && ! command -v perf >/dev/null 2>&1; then need+=(linux-perf); fi
if [ "${#need[@]}" -gt 0 ]; then
    echo "bench_h1: installing ${need[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench_h1: need root to apt-get install ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

doorman="${DOORMAN:-}"
if [ -z "$doorman" ]; then
    build="${BENCH_BUILD_DIR:-/tmp/build-bench}"
    if [ ! -x "$build/proxy/doorman" ] || [ "${BENCH_REBUILD:-0}" = 1 ]; then
        echo "bench_h1: building doorman (Release) in $build" >&2
        cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDM_TESTS=OFF >/dev/null
        make -C "$build" -j"$(nproc)" doorman >/dev/null
    fi
    doorman="$build/proxy/doorman"
fi
export DOORMAN="$doorman"

exec python3 "$here/bench_h1.py" "$@"
