#!/usr/bin/env bash
# Pillarbox next to Dovecot, same machine, same Maildirs, same password hashes, same run,
# alternating, medians of REPEAT repetitions:
#   P1  server CPU (user + system of all server processes) for one pipelined download of the
#       whole COUNT-message mailbox by `pillarbox fetch`, plain and over implicit TLS;
#   P2  logins per second: 50 clients in a loop of USER/PASS/STAT/QUIT for SECONDS, with {PLAIN}
#       and {SHA512-CRYPT} hashes on both, and argon2id on Pillarbox alone;
#   P3  memory of the server processes with 1,000 and 10,000 idle authenticated sessions;
#   P4  connect to the +OK of STAT on a LARGE-message maildrop: the first open (no index yet, page
#       cache dropped) and warm;
#   L   session latency (login, STAT, LIST, RETR 1, QUIT) while P2 runs.
#
#   sudo bench/server.sh [--only P1,P2,P3,P4,L] [--repeat N] [--count N] [--avg-kb N]
#                        [--large N] [--seconds N] [--idle "1000 10000"] [--smoke]
#
# --smoke runs every measure once on tiny inputs with the debug build, to keep this script from
# rotting (seconds, not a measurement). --only P1 --repeat 20 is a loop for a profiler:
# attach perf or valgrind to the server processes while it runs.
set -euo pipefail
ONLY=P1,P2,P3,P4,L; REPEAT=3; COUNT=2000; AVG_KB=20; LARGE=100000; SECONDS_P2=10; IDLE="1000 10000"
PROFILE=release; SMOKE=; NUSERS=50
while [ $# -gt 0 ]; do
  case $1 in
    --only) ONLY=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --count) COUNT=$2; shift 2 ;;
    --avg-kb) AVG_KB=$2; shift 2 ;;
    --large) LARGE=$2; shift 2 ;;
    --seconds) SECONDS_P2=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    --smoke) SMOKE=1; REPEAT=1; COUNT=40; AVG_KB=4; LARGE=500; SECONDS_P2=1; IDLE=50; NUSERS=5; PROFILE=debug; shift ;;
    *) echo "server.sh: unknown option $1 (see the header of this script)" >&2; exit 64 ;;
  esac
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
# Ten thousand sessions need more descriptors than the usual 1,024 (as many as allowed, up to 100,000).
ulimit -n "$(h=$(ulimit -Hn); [ "$h" = unlimited ] && echo 100000 || echo $(( h < 100000 ? h : 100000 )))"
BASE=$(mktemp -d /tmp/pillarbox-sbench.XXXX)
chmod 755 "$BASE"
PBPID=
cleanup() {
  kill "$(cat "$BASE/run/master.pid" 2>/dev/null)" 2>/dev/null || true
  [ -n "$PBPID" ] && kill "$PBPID" 2>/dev/null || true
  rm -rf "$BASE"
}
trap cleanup EXIT
if [ $PROFILE = release ]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p pillarbox -p pop3load
else
  cargo build --quiet --manifest-path "$ROOT/Cargo.toml" -p pillarbox -p pop3load
fi
PB="$ROOT/target/$PROFILE/pillarbox"
LOAD="$ROOT/target/$PROFILE/pop3load"
DPORT=$(free_port); DTLS=$(free_port); PPORT=$(free_port); PTLS=$(free_port)
PASS="bench password 2026"
export POP3LOAD_PASSWORD=$PASS

# Mail: alice (P1), big (P4), and 50 users per hash scheme with 10 small messages each (P2, P3, L).
mkdir -p "$BASE"/{run,state,log,mail}
python3 "$HERE/genmail.py" "$BASE/mail/alice" "$COUNT" "$AVG_KB" 1
python3 "$HERE/genmail.py" "$BASE/mail/big" "$LARGE" 1 2
python3 "$HERE/genmail.py" "$BASE/small" 10 5 3
CRYPT=$(doveadm pw -s SHA512-CRYPT -p "$PASS")
{
  for u in alice big; do echo "$u:$CRYPT:65534:65534::$BASE/mail/$u::"; done
  for i in $(seq 0 $((NUSERS - 1))); do
    for scheme in plain crypt; do
      cp -r "$BASE/small" "$BASE/mail/$scheme$i"
      if [ $scheme = plain ]; then h="{PLAIN}$PASS"; else h=$CRYPT; fi
      echo "$scheme$i:$h:65534:65534::$BASE/mail/$scheme$i::"
    done
  done
} > "$BASE/users"
chown -R 65534:65534 "$BASE/mail"

# Pillarbox: the same Maildirs and hashes, kept as imported; no maildrop lock, like Dovecot's
# default; connection limits as high as Dovecot's here.
"$PB" --data-dir "$BASE/pb" user import "$BASE/users" >/dev/null
sed -i -e "s|^maildir = \"mail\"|maildir = \"$BASE/mail\"|" -e 's|^upgrade_hashes = true|upgrade_hashes = false|' \
  -e 's|^lock = true|lock = false|' -e 's|^max_connections = 1000|max_connections = 30000|' \
  -e 's|^max_connections_per_ip = 20|max_connections_per_ip = 30000|' "$BASE/pb/pillarbox.toml"
for i in $(seq 0 $((NUSERS - 1))); do
  echo "$PASS" | "$PB" --data-dir "$BASE/pb" user add "argon$i" --password-stdin >/dev/null
  rm -rf "$BASE/mail/argon$i"; cp -r "$BASE/small" "$BASE/mail/argon$i"
done
CERT="$BASE/pb/tls/cert.pem"; KEY="$BASE/pb/tls/key.pem"
dovecot_conf "$BASE" 127.0.0.1 "$DPORT" "$DTLS" "$CERT" "$KEY" > "$BASE/dovecot.conf"
dovecot -c "$BASE/dovecot.conf" </dev/null >/dev/null 2>&1
"$PB" --data-dir "$BASE/pb" serve --pop3 "127.0.0.1:$PPORT" --pop3s "127.0.0.1:$PTLS" >/dev/null 2>"$BASE/pb.log" &
PBPID=$!
for p in $DPORT $DTLS $PPORT $PTLS; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
DMASTER=$(cat "$BASE/run/master.pid")
HZ=$(getconf CLK_TCK)

# CPU of a server in clock ticks: the process and its children, living (utime+stime) and reaped
# (cutime+cstime). Dovecot's pop3 processes live on between sessions (service_count = 100).
ticks() {
  local total=0 p t
  for p in "$1" $(pgrep -P "$1" || true); do
    # A process may end between listing and reading; it is then counted in its parent's cutime.
    t=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13 + $14 + $15}') || true
    total=$((total + ${t:-0}))
  done
  echo $total
}
# Memory of a server in kB: RSS and PSS summed over the process and its children.
memory() {
  local rss=0 pss=0 p r s
  for p in "$1" $(pgrep -P "$1" || true); do
    r=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    s=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    rss=$((rss + ${r:-0})); pss=$((pss + ${s:-0}))
  done
  echo "$rss $pss"
}
server_pid() { if [ "$1" = dovecot ]; then echo "$DMASTER"; else echo "$PBPID"; fi; }
port_of() { # server tls
  case $1-$2 in dovecot-no) echo "$DPORT" ;; dovecot-yes) echo "$DTLS" ;; pillarbox-no) echo "$PPORT" ;; *) echo "$PTLS" ;; esac
}
RESULTS=()
row() { RESULTS+=("$(printf '%-44s %14s %14s %10s' "$@")"); }
ratio() { echo "$1 $2" | awk '{ if ($1 > 0) printf "%.2fx", $2 / $1; else print "-" }'; }

# P3 first, while both servers are fresh: memory retained from earlier measures would blur the
# per-session figure.
if want P3; then
  for n in $IDLE; do
    for who in dovecot pillarbox; do
      pid=$(server_pid $who)
      read -r rss0 pss0 <<<"$(memory "$pid")"
      coproc IDLER { "$LOAD" idle --addr "127.0.0.1:$(port_of $who no)" --prefix plain --users $NUSERS --sessions "$n" --hold 600; }
      read -r ready <&"${IDLER[0]}"
      sleep 1
      read -r rss pss <<<"$(memory "$pid")"
      exec {IDLER[1]}>&-
      wait "$IDLER_PID" 2>/dev/null || true
      case $ready in *"failed=0"*) ;; *) echo "P3 $who $n: $ready" >&2 ;; esac
      eval "M_$who=$(( pss / 1024 )); D_$who=$(( (pss - pss0) / n ))"
      eval "R_$who=$(( rss / 1024 ))"
      sleep 1
    done
    row "P3 memory, $n idle sessions, PSS (MB)" "$M_dovecot" "$M_pillarbox" "$(ratio "$M_dovecot" "$M_pillarbox")"
    row "   per session (kB)" "$D_dovecot" "$D_pillarbox" "$(ratio "$D_dovecot" "$D_pillarbox")"
    row "   RSS summed over processes (MB)" "$R_dovecot" "$R_pillarbox" ""
  done
fi

if want P1; then
  for tls in no yes; do
    declare -A CPU=()
    for _ in $(seq "$REPEAT"); do
      for who in dovecot pillarbox; do
        port=$(port_of $who $tls)
        if [ $tls = yes ]; then mode="tls = \"implicit\"\nca_file = \"$CERT\""; else mode='tls = "none"\ninsecure = true'; fi
        # PLAIN on both servers: the users' hashes are imported ones (no SCRAM keys on Pillarbox),
        # and the transfer, not the login, is measured.
        printf "[accounts.b]\nhost = \"localhost\"\nport = %s\n$mode\nusername = \"alice\"\npassword_env = \"BENCH_PW\"\nauth = \"plain\"\ndeliver = { mda = \"cat > /dev/null\" }\nkeep = \"keep\"\n" "$port" > "$BASE/acc.toml"
        rm -rf "$BASE/fstate"
        pid=$(server_pid $who); before=$(ticks "$pid")
        BENCH_PW="$PASS" "$PB" fetch --quiet --accounts-file "$BASE/acc.toml" --state-dir "$BASE/fstate"
        sleep 0.3; after=$(ticks "$pid")
        CPU[$who]+="$(( (after - before) * 1000 / HZ )) "
      done
    done
    d=$(echo "${CPU[dovecot]}" | median); p=$(echo "${CPU[pillarbox]}" | median)
    label=plain; [ $tls = yes ] && label="implicit TLS"
    row "P1 server CPU, $COUNT messages, $label (ms)" "$d" "$p" "$(ratio "$d" "$p")"
  done
fi

# pop3load logins against a server; prints its result line.
logins() { # server tls-no prefix
  "$LOAD" logins --addr "127.0.0.1:$(port_of "$1" no)" --prefix "$2" --users $NUSERS --clients 50 --seconds "$SECONDS_P2"
}
field() { sed -n "s/.*\\b$1=\\([0-9.]*\\).*/\\1/p"; }
if want P2; then
  for scheme in plain crypt; do
    declare -A RATE=() GEN=()
    for _ in $(seq "$REPEAT"); do
      for who in dovecot pillarbox; do
        out=$(logins $who $scheme)
        RATE[$who]+="$(echo "$out" | field rate) "; GEN[$who]+="$(echo "$out" | field cpu_ms) "
        [ "$(echo "$out" | field errors)" = 0 ] || echo "P2 $who $scheme: $out" >&2
      done
    done
    d=$(echo "${RATE[dovecot]}" | median); p=$(echo "${RATE[pillarbox]}" | median)
    name=PLAIN; [ $scheme = crypt ] && name=SHA512-CRYPT
    row "P2 logins/s, {$name}" "$d" "$p" "$(ratio "$d" "$p")"
    row "   load generator CPU, % of one core" \
      "$(echo "${GEN[dovecot]}" | median | awk -v s="$SECONDS_P2" '{printf "%.0f", $1 / s / 10}')" \
      "$(echo "${GEN[pillarbox]}" | median | awk -v s="$SECONDS_P2" '{printf "%.0f", $1 / s / 10}')" ""
  done
  out=$("$LOAD" logins --addr "127.0.0.1:$PPORT" --prefix argon --users $NUSERS --clients 50 --seconds "$SECONDS_P2")
  row "P2 logins/s, argon2id (Pillarbox only)" "-" "$(echo "$out" | field rate)" ""
fi

if want L; then
  for who in dovecot pillarbox; do
    port=$(port_of $who no)
    "$LOAD" logins --addr "127.0.0.1:$port" --prefix plain --users $NUSERS --clients 50 --seconds "$((SECONDS_P2 + 1))" >/dev/null &
    bg=$!
    sleep 0.5
    out=$("$LOAD" sessions --addr "127.0.0.1:$port" --prefix plain --users 1 --seconds "$SECONDS_P2")
    wait $bg
    eval "L50_$who=$(echo "$out" | field p50_ms); L99_$who=$(echo "$out" | field p99_ms)"
  done
  row "L session latency under P2 load, p50 (ms)" "$L50_dovecot" "$L50_pillarbox" "$(ratio "$L50_dovecot" "$L50_pillarbox")"
  row "L session latency under P2 load, p99 (ms)" "$L99_dovecot" "$L99_pillarbox" "$(ratio "$L99_dovecot" "$L99_pillarbox")"
fi

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
if want P4; then
  # The first open of all (no index of either server yet, page cache dropped); Pillarbox first, as
  # Dovecot's first open writes a dovecot-uidlist that Pillarbox then also reads.
  declare -A FIRST=() WARM=()
  for who in pillarbox dovecot; do
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    FIRST[$who]=$(stat_ms "$(port_of $who no)" big)
  done
  sleep 2
  for _ in $(seq "$REPEAT"); do
    for who in dovecot pillarbox; do
      for _ in 1 2 3; do WARM[$who]+="$(stat_ms "$(port_of $who no)" big) "; done
    done
  done
  row "P4 STAT on $LARGE messages, first open (ms)" "${FIRST[dovecot]}" "${FIRST[pillarbox]}" \
    "$(ratio "${FIRST[dovecot]}" "${FIRST[pillarbox]}")"
  d=$(echo "${WARM[dovecot]}" | median); p=$(echo "${WARM[pillarbox]}" | median)
  row "P4 STAT on $LARGE messages, warm (ms)" "$d" "$p" "$(ratio "$d" "$p")"
fi

printf '\n%-44s %14s %14s %10s\n' "measure (median of $REPEAT)" "Dovecot" "Pillarbox" "ratio"
printf '%s\n' "${RESULTS[@]}"
[ -z "$SMOKE" ] || echo "smoke run: figures from tiny inputs and a debug build mean nothing"
