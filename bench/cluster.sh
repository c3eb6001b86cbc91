#!/usr/bin/env bash
# Cluster mode beside single-machine Pillarbox and Dovecot, same machine, same run:
#   S  sessions per second: 50 clients in a loop of login, STAT, UIDL, QUIT on users with ten
#      messages each ({PLAIN} hashes everywhere: the logins, not the hashing, are measured);
#   D  LMTP deliveries per second: 20 clients, 10 KB messages, one connection per delivery;
#   R  RETR: 20 sessions of one user reading a 50 MiB message in a loop, MiB per second, and how
#      much the node's memory (RSS) grew at most while they ran.
# Columns: Dovecot (Maildir), Pillarbox (Maildir), Pillarbox on PostgreSQL with one node, with
# three nodes (127.0.0.2-4, clients spread over them). The database is a private PostgreSQL on
# the same machine (durable: fsync and synchronous_commit on).
#
#   sudo bench/cluster.sh [--seconds N] [--smoke]
#
# Needs root (Dovecot, PostgreSQL as the postgres user), dovecot-pop3d, dovecot-lmtpd,
# postgresql, python3. --smoke: tiny inputs, debug build, seconds.
set -euo pipefail
SECS=10; SMOKE=; PROFILE=release; BIG_MB=50; NUSERS=50; CLIENTS=50; RETR_CLIENTS=20
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) SECS=$2; shift 2 ;;
    --smoke) SMOKE=1; SECS=1; BIG_MB=2; NUSERS=5; CLIENTS=5; RETR_CLIENTS=3; PROFILE=debug; shift ;;
    *) echo "cluster.sh: unknown option $1 (see the header of this script)" >&2; exit 64 ;;
  esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "cluster.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 69; }
BASE=$(mktemp -d /tmp/pillarbox-cbench.XXXX)
chmod 755 "$BASE"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$(cat "$BASE/run/master.pid" 2>/dev/null)" 2>/dev/null || true
  runuser -u postgres -- "$PGBIN/pg_ctl" stop -m immediate -D "$BASE/pg/data" >/dev/null 2>&1 || true
  rm -rf "$BASE"
}
trap cleanup EXIT
cargo build --quiet $([ $PROFILE = release ] && echo --release) --manifest-path "$ROOT/Cargo.toml" -p pillarbox -p pop3load
PB="$ROOT/target/$PROFILE/pillarbox"
LOAD="$ROOT/target/$PROFILE/pop3load"
PASS="bench password 2026"
export POP3LOAD_PASSWORD=$PASS

# Mail: NUSERS users with ten small messages each, and big0 with one large message.
mkdir -p "$BASE"/{run,state,log,mail}
python3 "$HERE/genmail.py" "$BASE/small" 10 5 3
mkdir -p "$BASE/mail/big0"/{new,cur,tmp}
python3 - "$BASE/mail/big0/new/1.M1P1.big" "$BIG_MB" <<'PY'
import sys
size = int(sys.argv[2]) * 1024 * 1024
line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567\n"
with open(sys.argv[1], "wb") as f:
    f.write(b"Subject: large\n\n")
    f.write(line * (size // len(line)))
PY
{
  echo "big0:{PLAIN}$PASS:65534:65534::$BASE/mail/big0::"
  for i in $(seq 0 $((NUSERS - 1))); do
    cp -r "$BASE/small" "$BASE/mail/user$i"
    echo "user$i:{PLAIN}$PASS:65534:65534::$BASE/mail/user$i::"
  done
} > "$BASE/users"
chown -R 65534:65534 "$BASE/mail"

# Dovecot, with LMTP.
DPORT=$(free_port); DLMTP=$(free_port)
dovecot_conf "$BASE" 127.0.0.1 "$DPORT" | sed 's/^protocols = pop3$/protocols = pop3 lmtp/' > "$BASE/dovecot.conf"
printf 'service lmtp {\n  inet_listener lmtp {\n    address = 127.0.0.1\n    port = %s\n  }\n  process_min_avail = %s\n}\n' \
  "$DLMTP" "$(nproc)" >> "$BASE/dovecot.conf"
dovecot -c "$BASE/dovecot.conf" </dev/null >/dev/null 2>&1

# PostgreSQL: a private cluster on a free port.
PGPORT=$(free_port)
mkdir -p "$BASE/pg" && chown postgres "$BASE/pg"
runuser -u postgres -- "$PGBIN/initdb" -A trust -U postgres -E UTF8 -D "$BASE/pg/data" >/dev/null
printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nmax_connections = 300\nshared_buffers = '256MB'\n" \
  "$PGPORT" "$BASE/pg" >> "$BASE/pg/data/postgresql.auto.conf"
runuser -u postgres -- "$PGBIN/pg_ctl" start -w -D "$BASE/pg/data" -l "$BASE/pg/log" >/dev/null
runuser -u postgres -- "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U postgres mail
URL="postgresql://postgres@127.0.0.1:$PGPORT/mail"

# Pillarbox on the Maildirs (as bench/server.sh: hashes kept as imported, no maildrop lock, like
# Dovecot's default, so that many sessions can read big0 at once).
setup() { # DIR
  "$PB" --data-dir "$1" user import "$BASE/users" >/dev/null
  sed -i -e "s|^maildir = \"mail\"|maildir = \"$BASE/mail\"|" -e 's|^upgrade_hashes = true|upgrade_hashes = false|' \
    -e 's|^lock = true|lock = false|' -e 's|^max_connections = 1000|max_connections = 30000|' \
    -e 's|^max_connections_per_ip = 20|max_connections_per_ip = 30000|' \
    -e 's|^lmtp_max_connections_per_ip = 20|lmtp_max_connections_per_ip = 30000|' "$1/pillarbox.toml"
}
setup "$BASE/pb"
# The cluster's nodes: the same, moved into the database by `db import`.
setup "$BASE/node"
sed -i -e "s|^url = \"\"|url = \"$URL\"|" -e 's|^pool_size = 16|pool_size = 32|' "$BASE/node/pillarbox.toml"
"$PB" --data-dir "$BASE/node" db init >/dev/null
"$PB" --data-dir "$BASE/node" db import | tail -1

start_pb() { # DIR IP: sets pid, pop and lmtp (not in a subshell: PIDS must see the server)
  local p l
  p=$(free_port); l=$(free_port)
  "$PB" --data-dir "$1" serve --pop3 "$2:$p" --lmtp "$2:$l" >/dev/null 2>>"$BASE/pb.log" &
  pid=$!
  PIDS+=("$pid")
  for port in $p $l; do
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/$2/$port") 2>/dev/null && break; sleep 0.05; done
  done
  pop="$2:$p"; lmtp="$2:$l"
}
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
field() { tr ' ' '\n' | grep "^$1=" | cut -d= -f2; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# One setup's three figures: S (sessions/s), D (deliveries/s), R (MiB/s, node RSS growth MB).
measure() { # NAME PIDS POP3ADDRS LMTPADDRS
  local name=$1 pids=$2 pops=() lmtps=() a
  for a in $3; do pops+=(--addr "$a"); done
  for a in $4; do lmtps+=(--addr "$a"); done
  local s d r grow=0 base=0 peak=0 p
  s=$("$LOAD" logins "${pops[@]}" --prefix user --users "$NUSERS" --clients "$CLIENTS" --seconds "$SECS" --uidl | field rate)
  d=$("$LOAD" lmtp "${lmtps[@]}" --prefix user --users "$NUSERS" --clients 20 --seconds "$SECS" --size-kb 10 | field rate)
  for p in $pids; do base=$((base + $(rss_kb "$p"))); done
  "$LOAD" retr "${pops[@]}" --prefix big --users 1 --clients "$RETR_CLIENTS" --seconds "$SECS" > "$BASE/retr.out" &
  local load=$!
  while kill -0 "$load" 2>/dev/null; do
    local now=0
    for p in $pids; do now=$((now + $(rss_kb "$p"))); done
    [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.1
  done
  wait "$load"
  r=$(field mib_per_s < "$BASE/retr.out")
  [ "$pids" != "-" ] && grow=$(( (peak - base) / 1024 ))
  [ "$pids" = "-" ] && grow="-"
  printf '%-34s %12s %12s %12s %14s\n' "$name" "$s" "$d" "$r" "$grow"
}

printf '%-34s %12s %12s %12s %14s\n' "" "sessions/s" "LMTP/s" "RETR MiB/s" "node RSS +MB"
measure "Dovecot (Maildir)" "-" "127.0.0.1:$DPORT" "127.0.0.1:$DLMTP"
start_pb "$BASE/pb" 127.0.0.1
measure "Pillarbox (Maildir)" "$pid" "$pop" "$lmtp"
stop_all
start_pb "$BASE/node" 127.0.0.2
measure "Pillarbox cluster, 1 node" "$pid" "$pop" "$lmtp"
stop_all
PIDLIST=""; POPS=""; LMTPS=""
for ip in 127.0.0.2 127.0.0.3 127.0.0.4; do
  start_pb "$BASE/node" $ip
  PIDLIST+="$pid "; POPS+="$pop "; LMTPS+="$lmtp "
done
measure "Pillarbox cluster, 3 nodes" "$PIDLIST" "$POPS" "$LMTPS"
stop_all
echo "(RSS growth of the three nodes together for the 3-node row; $RETR_CLIENTS sessions reading a $BIG_MB MiB message)"
[ -n "$SMOKE" ] && echo "smoke run: figures from tiny inputs and a debug build mean nothing"
exit 0
