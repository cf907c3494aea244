#!/bin/sh
# Builds the Pebble the tests run: Debian 12's own pebble source (2.4.0) with
# lock-order.patch, which fixes three locking bugs that wedge Pebble for good
# when many orders run at once (test_ondemand's 200 new names hit them about
# one run in five on a busy machine; a goroutine dump showed the cycle):
#  - the authz handler held an authz's write lock while it looked up the
#    account (the store's read lock), and FindValidAuthorization holds the
#    store's read lock while it read-locks every authz: with a writer queued
#    on the store (a certificate being added) nothing moves again;
#  - the order handler read-locked an order twice (letsencrypt/pebble#554);
#  - CompleteOrder leaked an authz read lock when an authz was not valid.
# Usage: build.sh OUTDIR. Writes OUTDIR/pebble; a later call reuses it while
# this script and the patch are unchanged. Needs golang-go and Pebble's Go
# build dependencies (tests/install-deps.sh installs them) and Debian's
# package archive, for the source package.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUTDIR}
version=2.4.0+ds1-2
stamp="$version $(cat "$here/build.sh" "$here/lock-order.patch" | sha256sum | cut -c1-16)"
if [ -x "$out/pebble" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
    exit 0
fi
echo "building Pebble $version with tests/pebble/lock-order.patch into $out" >&2
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d /tmp/dm-pebble-build-XXXXXX)
trap 'rm -rf "$work"' EXIT

# The source package, from the archive this machine installs from, through
# a private apt state (the system's sources and lists stay untouched).
uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
if [ -z "$uri" ]; then
    uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
uri=${uri:-http://deb.debian.org/debian}
echo "deb-src $uri bookworm main" >"$work/sources.list"
mkdir -p "$work/lists/partial"
apt_opts="-o Dir::Etc::SourceList=$work/sources.list -o Dir::Etc::SourceParts=/dev/null
-o Dir::State::Lists=$work/lists -o APT::Sandbox::User=$(id -un)"
# shellcheck disable=SC2086
apt-get $apt_opts -qq update
# shellcheck disable=SC2086
(cd "$work" && apt-get $apt_opts -qq source --download-only "pebble=$version" >/dev/null)

# apt checked the files against the signed Sources index. Unpack, apply
# Debian's patches, then ours.
cd "$work"
tar xf pebble_2.4.0+ds1.orig.tar.xz
tar xf pebble_$version.debian.tar.xz -C pebble-2.4.0
cd pebble-2.4.0
while read -r p; do
    case "$p" in '' | '#'*) continue ;; esac
    patch -s -p1 <"debian/patches/$p"
done <debian/patches/series
patch -s -p1 <"$here/lock-order.patch"

# GOPATH mode against Debian's packaged Go sources, as dh-golang builds it.
mkdir -p "$work/gopath/src/github.com/letsencrypt"
mv "$work/pebble-2.4.0" "$work/gopath/src/github.com/letsencrypt/pebble"
cd "$work/gopath/src/github.com/letsencrypt/pebble"
GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOCACHE="$work/gocache" \
    GOFLAGS= go build -o "$out/pebble.new" ./cmd/pebble
mv "$out/pebble.new" "$out/pebble"
echo "$stamp" >"$out/stamp"
