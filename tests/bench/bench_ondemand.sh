#!/usr/bin/env bash
# doorman vs Caddy, on-demand TLS against one Pebble: time from the first request
# for a brand-new name to its response, and 100 new names at once.
# Not a ctest test: run by hand, as root (it installs packages with apt-get).
# See tests/bench/README.md. Settings come from BENCH_* environment variables.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
proxies="${BENCH_PROXIES:-doorman,caddy}"

need=()
case ",$proxies," in *,caddy,*) command -v caddy >/dev/null 2>&1 || need+=(caddy) ;; esac
command -v pebble-challtestsrv >/dev/null 2>&1 || need+=(pebble)
command -v go >/dev/null 2>&1 || need+=(golang-go golang-github-letsencrypt-challtestsrv-dev
    golang-github-miekg-dns-dev golang-gopkg-square-go-jose.v2-dev patch xz-utils)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ "${#need[@]}" -gt 0 ]; then
    echo "bench_ondemand: installing ${need[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench_ondemand: need root to apt-get install ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

case ",$proxies," in
*,doorman,*)
    doorman="${DOORMAN:-}"
    if [ -z "$doorman" ]; then
        build="${BENCH_BUILD_DIR:-/tmp/build-bench}"
        if [ ! -x "$build/proxy/doorman" ] || [ "${BENCH_REBUILD:-0}" = 1 ]; then
            echo "bench_ondemand: building doorman (Release) in $build" >&2
            cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release -DDM_TESTS=OFF >/dev/null
            make -C "$build" -j"$(nproc)" doorman >/dev/null
        fi
        doorman="$build/proxy/doorman"
    fi
    export DOORMAN="$doorman"
    ;;
esac

# Debian's Pebble wedges under many concurrent orders: run ours (tests/pebble/build.sh).
pebble_dir="${BENCH_PEBBLE_DIR:-/tmp/build-bench/pebble}"
sh "$repo/tests/pebble/build.sh" "$pebble_dir"
export DM_PEBBLE_BIN="$pebble_dir/pebble"

exec python3 "$here/bench_ondemand.py" "$@"
