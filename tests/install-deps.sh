#!/bin/sh
# Installs what doorman needs to build and test on Debian 12, only if missing.
# Used by the README's two commands (examples/quickstart.sh, tests/run.sh).
set -eu

# Build: compiler, CMake, BoringSSL (Debian's Android build), libevent,
# nghttp2, jansson. Tests: curl/openssl clients, python3 for the integration
# driver, clang + its runtime for sanitizers and libFuzzer, Pebble (ACME test CA),
# headless Chromium and NSS's certutil for the browser test (test_browser.py),
# Go and Pebble's Go build dependencies for the patched Pebble the tests run
# (tests/pebble/build.sh).
PKGS="build-essential cmake pkg-config clang clang-format libclang-rt-14-dev git
android-libboringssl-dev libevent-dev libnghttp2-dev libjansson-dev
curl openssl python3 ca-certificates nghttp2-client pebble publicsuffix
python3-cryptography chromium libnss3-tools
golang-go golang-github-letsencrypt-challtestsrv-dev golang-github-miekg-dns-dev
golang-gopkg-square-go-jose.v2-dev patch xz-utils"
if [ "${1:-}" = "--bench" ]; then
    PKGS="$PKGS nginx-light wrk haproxy caddy"
fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    echo "installing:$missing" >&2
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        SUDO=sudo
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi
