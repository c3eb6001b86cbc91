#!/usr/bin/env bash
# Server-side measures, Pillarbox and Dovecot in the same run on the same mailbox:
#   P1  server CPU (user+system of the server processes) for one session that downloads the whole
#       mailbox with a pipelining client (pillarbox fetch, keeping the mail), plain POP3;
#   P4  time from connect to the +OK of STAT on a large maildrop, first open (cold) and again (warm).
#
#   sudo bench/server.sh [COUNT] [AVG_KB] [REPS] [LARGE]   (defaults: 2000, 20 KB, 3, 100000)
#
# Same password scheme on both ({SHA512-CRYPT} hash in Dovecot, imported into Pillarbox).
set -euo pipefail
COUNT=${1:-2000}; AVG_KB=${2:-20}; REPS=${3:-3}; LARGE=${4:-100000}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
BASE=$(mktemp -d /tmp/pillarbox-sbench.XXXX)
chmod 755 "$BASE"
PBPID=
cleanup() {
  kill "$(cat "$BASE/run/master.pid" 2>/dev/null)" 2>/dev/null || true
  [ -n "$PBPID" ] && kill "$PBPID" 2>/dev/null || true
  rm -rf "$BASE"
}
trap cleanup EXIT
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p pillarbox
PB="$ROOT/target/release/pillarbox"
DPORT=$(free_port); PPORT=$(free_port)
PASS="bench password 2026"
HASH=$(doveadm pw -s SHA512-CRYPT -p "$PASS")
mkdir -p "$BASE"/{run,state,log,mail/alice,mail/big}
for u in alice big; do echo "$u:$HASH:65534:65534::$BASE/mail/$u::"; done > "$BASE/users"
python3 "$HERE/genmail.py" "$BASE/mail/alice" "$COUNT" "$AVG_KB" 1
python3 "$HERE/genmail.py" "$BASE/mail/big" "$LARGE" 1 2
chown -R 65534:65534 "$BASE/mail"
dovecot_conf "$BASE" 127.0.0.1 "$DPORT" > "$BASE/dovecot.conf"
dovecot -c "$BASE/dovecot.conf" </dev/null >/dev/null 2>&1
# Pillarbox on the same Maildirs, with the same hashes.
"$PB" --data-dir "$BASE/pb" user import "$BASE/users" >/dev/null
sed -i "s|^maildir = \"mail\"|maildir = \"$BASE/mail\"|" "$BASE/pb/pillarbox.toml"
"$PB" --data-dir "$BASE/pb" serve --pop3 "127.0.0.1:$PPORT" >/dev/null 2>"$BASE/pb.log" &
PBPID=$!
for p in $DPORT $PPORT; do for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done; done

# CPU ticks of a process and its reaped children (Dovecot's pop3 processes are children of its
# master), in clock ticks.
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
DMASTER=$(cat "$BASE/run/master.pid")

fetch_once() { # port
  rm -rf "$BASE/out" "$BASE/fstate"
  printf '[accounts.b]\nhost = "127.0.0.1"\nport = %s\ntls = "none"\ninsecure = true\nusername = "alice"\npassword_env = "BENCH_PW"\ndeliver = { mda = "cat > /dev/null" }\nkeep = "keep"\n' "$1" > "$BASE/acc.toml"
  BENCH_PW="$PASS" "$PB" fetch --quiet --accounts-file "$BASE/acc.toml" --state-dir "$BASE/fstate"
}
# Time from connect to the +OK of STAT, in milliseconds.
stat_ms() { # port user
  python3 - "$1" "$2" "$PASS" <<'PY'
import socket, sys, time
port, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t = time.monotonic()
s = socket.create_connection(("127.0.0.1", port)); f = s.makefile("rb")
f.readline()
s.sendall(f"USER {user}\r\nPASS {pw}\r\nSTAT\r\n".encode())
f.readline(); f.readline(); line = f.readline()
ms = (time.monotonic() - t) * 1000
s.sendall(b"QUIT\r\n"); f.readline()
assert line.startswith(b"+OK"), line
print(f"{ms:.1f}")
PY
}

declare -A CPU
for rep in $(seq "$REPS"); do
  for who in dovecot pillarbox; do
    if [ $who = dovecot ]; then pid=$DMASTER; port=$DPORT; else pid=$PBPID; port=$PPORT; fi
    before=$(ticks "$pid"); fetch_once "$port"; sleep 0.3; after=$(ticks "$pid")
    CPU[$who]+="$(echo "($after - $before) * 1000 / $HZ" | bc -l) "
  done
done
D1=$(echo "${CPU[dovecot]}" | median); P1=$(echo "${CPU[pillarbox]}" | median)
printf '\nP1 server CPU for one pipelined download of %d messages (%s MB), plain, median of %d\n' "$COUNT" "$(du -sm "$BASE/mail/alice" | cut -f1)" "$REPS"
printf '  %-10s %8.0f ms  %6.1f us/message\n' dovecot "$D1" "$(echo "$D1 * 1000 / $COUNT" | bc -l)"
printf '  %-10s %8.0f ms  %6.1f us/message   %.2fx of Dovecot\n' pillarbox "$P1" "$(echo "$P1 * 1000 / $COUNT" | bc -l)" "$(echo "$P1 / $D1" | bc -l)"

sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
DC=$(stat_ms "$DPORT" big); DW=$(stat_ms "$DPORT" big)
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
PC=$(stat_ms "$PPORT" big); PW=$(stat_ms "$PPORT" big); PW2=$(stat_ms "$PPORT" big)
printf '\nP4 connect to STAT +OK on a %d-message maildrop (ms; includes the password check)\n' "$LARGE"
printf '  %-10s cold %8.1f   warm %8.1f\n' dovecot "$DC" "$DW"
printf '  %-10s cold %8.1f   warm %8.1f (again %.1f)   warm %.2fx of Dovecot\n' pillarbox "$PC" "$PW" "$PW2" "$(echo "$PW / $DW" | bc -l)"
