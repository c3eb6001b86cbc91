#!/usr/bin/env bash
# Run every Pillarbox test on a fresh Debian machine.
#
# The end-to-end tests talk to the real binary with real clients (Python's poplib and smtplib,
# curl, mpop, swaks, a SCRAM client on pyOpenSSL; age, zstd and tar open backups), compare it
# with a real Dovecot, fetch from a real Courier too (account discovery asks a private dnsmasq),
# and run OAuth2 against a real OpenID Connect provider (oidc-provider on Node.js) with tokens
# kept in GNOME Keyring's Secret Service, get certificates from Let's Encrypt's test ACME server
# (Pebble), check the admin API against its OpenAPI document with schemathesis, and drive the
# web console in Chromium (playwright-core) with axe-core's accessibility checks. So this first
# installs what provides them when it is missing, then runs the whole workspace's tests (unit, protocol, end-to-end, doc tests).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have curl    || missing+=(curl)
have swaks   || missing+=(swaks)
have mpop    || missing+=(mpop)
have fetchmail || missing+=(fetchmail)
have openssl || missing+=(openssl)
have age     || missing+=(age)
have zstd    || missing+=(zstd)
have tar     || missing+=(tar)
have python3 || missing+=(python3)
# (Debian's python3 makes virtual environments with python3-venv.)
{ have python3 && python3 -c "import ensurepip, venv" 2>/dev/null; } || missing+=(python3-venv)
have groff   || missing+=(groff-base)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
have doveadm || missing+=(dovecot-core)
[ -x /usr/lib/dovecot/pop3 ] || missing+=(dovecot-pop3d)
[ -x /usr/lib/dovecot/lmtp ] || missing+=(dovecot-lmtpd)
have couriertcpd || missing+=(courier-base)
[ -x /usr/lib/courier/courier-authlib/authdaemond ] || missing+=(courier-authdaemon)
have makeuserdb || missing+=(courier-authlib-userdb)
have unshare || missing+=(util-linux)
[ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
have ip || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing+=(iproute2)
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || missing+=(procps)
[ -d /etc/ssl/certs ] || missing+=(ca-certificates)
have node    || missing+=(nodejs)
have npm     || missing+=(npm)
have dbus-run-session || missing+=(dbus-daemon)
have gnome-keyring-daemon || missing+=(gnome-keyring)
have pebble  || missing+=(pebble)
# The web console's tests drive Debian's Chromium (with a font for its screenshots).
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
# Virus scanning is tested against ClamAV's own daemon, with signatures the tests write.
[ -x /usr/sbin/clamd ] || missing+=(clamav-daemon)

if [ "$(id -u)" -eq 0 ]; then sudo=(); elif have sudo; then sudo=(sudo); else sudo=(false); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing test dependencies: ${missing[*]}"
  if [ "${sudo[0]:-}" = false ]; then
    echo "test.sh: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Courier's pop3d, a second real server for the client's tests. Its package conflicts with
# Dovecot's (both provide pop3-server), so it is unpacked here instead of installed; its
# libraries and tools come from the packages above.
courier=target/test-deps/courier-pop
if [ ! -x "$courier/usr/lib/courier/courier/courierpop3login" ]; then
  echo "test.sh: unpacking courier-pop into $courier"
  mkdir -p "$courier"
  download=$(mktemp -d)
  chmod 0755 "$download"
  if ! (cd "$download" && apt-get download -qq courier-pop >/dev/null 2>&1); then
    "${sudo[@]}" apt-get update -qq
    (cd "$download" && apt-get download -qq courier-pop >/dev/null 2>&1)
  fi
  dpkg-deb -x "$download"/courier-pop_*.deb "$courier"
  rm -rf "$download"
fi

# pyOpenSSL gives the SCRAM test client the TLS exporter (RFC 9266) that Python's ssl lacks.
if ! python3 -c "import OpenSSL" 2>/dev/null; then
  echo "test.sh: installing pyOpenSSL"
  python3 -m pip install --quiet pyopenssl 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages pyopenssl 2>/dev/null ||
    { "${sudo[@]}" apt-get install -y -qq --no-install-recommends python3-openssl >/dev/null; }
fi

# The OAuth2 tests' identity provider: oidc-provider from the npm registry, at the version its
# lockfile pins.
# The console's tests: playwright-core (to drive Chromium) and axe-core, pinned by the lock file.
if [ ! -d crates/cli/tests/console/node_modules/playwright-core ] || [ ! -d crates/cli/tests/console/node_modules/axe-core ]; then
  echo "test.sh: installing the console tests' browser driver (npm ci in crates/cli/tests/console)"
  (cd crates/cli/tests/console && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -d crates/cli/tests/oidc/node_modules/oidc-provider ]; then
  echo "test.sh: installing the test identity provider (npm ci in crates/cli/tests/oidc)"
  (cd crates/cli/tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi

# schemathesis (PyPI) checks the admin API against its OpenAPI document; in a virtual
# environment of its own, so that its many dependencies touch nothing else.
schemathesis=target/test-deps/schemathesis
if [ ! -x "$schemathesis/bin/schemathesis" ]; then
  echo "test.sh: installing schemathesis into $schemathesis"
  rm -rf "$schemathesis"
  python3 -m venv "$schemathesis"
  "$schemathesis/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi

have cargo || { echo "test.sh: cargo is not installed (https://rustup.rs)" >&2; exit 1; }
cargo test --workspace --locked "$@"
# The server's end-to-end suites once more in cluster mode: every server a node whose users and
# mail are in a private PostgreSQL (tests about Maildir files say so and check nothing there).
echo "test.sh: the POP3, LMTP, authentication, abuse, admin API and console suites again, in cluster mode"
PILLARBOX_TEST_CLUSTER=1 exec cargo test --workspace --locked --test protocol --test lmtp --test auth --test abuse \
  --test admin_api --test console "$@"
