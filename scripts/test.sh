#!/usr/bin/env bash
# Run every Pillarbox test on a fresh Debian machine.
#
# The end-to-end tests talk to the real binary with real clients (Python's poplib, curl, mpop),
# so this first installs the Debian packages that provide them when they are missing, then runs
# the whole workspace's tests (unit, protocol, end-to-end, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have curl    || missing+=(curl)
have swaks   || missing+=(swaks)
have mpop    || missing+=(mpop)
have python3 || missing+=(python3)
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || missing+=(procps)
[ -d /etc/ssl/certs ] || missing+=(ca-certificates)

if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing test dependencies: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=(); elif have sudo; then sudo=(sudo); else
    echo "test.sh: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

have cargo || { echo "test.sh: cargo is not installed (https://rustup.rs)" >&2; exit 1; }
exec cargo test --workspace --locked "$@"
