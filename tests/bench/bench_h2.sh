#!/usr/bin/env bash
# doorman vs nginx, HAProxy and Caddy, HTTP/2 over TLS: requests/s and proxy CPU
# per request under h2load, same backend, same run, interleaved rounds.
# Not a ctest test: run by hand, as root (it installs packages with apt-get).
# See tests/bench/README.md. Settings come from BENCH_* environment variables.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ "${#need[@]}" -gt 0 ]; then
    echo "bench_h2: installing ${need[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench_h2: need root to apt-get install ${need[*]}" >&2
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
        echo "bench_h2: building doorman (Release) in $build" >&2
        cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDM_TESTS=OFF >/dev/null
        make -C "$build" -j"$(nproc)" doorman >/dev/null
    fi
    doorman="$build/proxy/doorman"
fi
export DOORMAN="$doorman"

exec python3 "$here/bench_h2.py" "$@"
