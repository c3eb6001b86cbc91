#!/usr/bin/env bash
# Download the same mailbox from a private Dovecot with pillarbox fetch, mpop and fetchmail, in
# the same run, and print messages per second side by side (median of REPS runs each).
#
#   bench/fetch.sh [COUNT] [AVG_KB] [REPS] [DELAY_MS]
#
# Defaults: 2000 messages, 20 KB, 3 repetitions, no added delay. With DELAY_MS the server runs in
# one network namespace and the clients in another, joined by bench/netdelay.py, which delays
# every packet by DELAY_MS each way (this kernel has no netem): 10 gives a 20 ms round trip.
#
# Needs root (Dovecot), dovecot-pop3d, mpop, fetchmail, python3, bc; eatmydata for the
# fsync-free comparison rows. Every client keeps the mail on
# the server and starts from empty local state each repetition, so all download everything.
# Durable delivery: pillarbox and mpop fsync each message into a Maildir (pillarbox in groups);
# fetchmail hands each message to an MDA that writes it to /dev/null (it has no Maildir delivery).
set -euo pipefail
COUNT=${1:-2000}; AVG_KB=${2:-20}; REPS=${3:-3}; DELAY_MS=${4:-0}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
BASE=$(mktemp -d /tmp/pillarbox-bench.XXXX)
chmod 755 "$BASE"
NS_A=pbbench-a-$$; NS_B=pbbench-b-$$; RELAY=
cleanup() {
  kill "$(cat "$BASE/run/master.pid" 2>/dev/null)" 2>/dev/null || true
  [ -n "$RELAY" ] && kill "$RELAY" 2>/dev/null || true
  if [ "$DELAY_MS" != 0 ]; then ip netns del "$NS_A" 2>/dev/null || true; ip netns del "$NS_B" 2>/dev/null || true; fi
  rm -rf "$BASE"
}
trap cleanup EXIT
HOST=127.0.0.1; IN_SERVER=(); IN_CLIENT=()
if [ "$DELAY_MS" != 0 ]; then
  ip netns add "$NS_A"; ip netns add "$NS_B"
  python3 "$HERE/netdelay.py" "$NS_A" "$NS_B" "$DELAY_MS" > "$BASE/relay.out" &
  RELAY=$!
  for _ in $(seq 50); do grep -q ready "$BASE/relay.out" 2>/dev/null && break; sleep 0.1; done
  HOST=198.18.0.1; IN_SERVER=(ip netns exec "$NS_A"); IN_CLIENT=(ip netns exec "$NS_B")
fi

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p pillarbox
PB="$ROOT/target/release/pillarbox"

POP3=$(free_port)
mkdir -p "$BASE"/{run,state,log,mail/alice}
PASS="bench password 2026"
echo "alice:$(doveadm pw -s SHA512-CRYPT -p "$PASS"):65534:65534::$BASE/mail/alice::" > "$BASE/users"
python3 "$HERE/genmail.py" "$BASE/mail/alice" "$COUNT" "$AVG_KB" 1
chown -R 65534:65534 "$BASE/mail/alice"
dovecot_conf "$BASE" "$HOST" "$POP3" > "$BASE/dovecot.conf"
"${IN_SERVER[@]}" dovecot -c "$BASE/dovecot.conf" </dev/null >/dev/null 2>&1
for _ in $(seq 100); do "${IN_CLIENT[@]}" bash -c "exec 3<>/dev/tcp/$HOST/$POP3" 2>/dev/null && break; sleep 0.1; done
BYTES=$(du -sb "$BASE/mail/alice" | cut -f1)

now() { date +%s.%N; }
run_pillarbox() {
  rm -rf "$BASE/out" "$BASE/pbstate"
  printf '[accounts.bench]\nhost = "%s"\nport = %s\ntls = "none"\ninsecure = true\nusername = "alice"\npassword_env = "BENCH_PW"\ndeliver = { maildir = "%s" }\nkeep = "keep"\n' "$HOST" "$POP3" "$BASE/out" > "$BASE/accounts.toml"
  BENCH_PW="$PASS" "${IN_CLIENT[@]}" "$PB" fetch --quiet --accounts-file "$BASE/accounts.toml" --state-dir "$BASE/pbstate"
}
run_mpop() {
  rm -rf "$BASE/out" "$BASE/mpop-uidls"; mkdir -p "$BASE/out"/{cur,new,tmp}
  printf 'account bench\nhost %s\nport %s\ntls off\nauth user\nuser alice\npasswordeval echo "%s"\ndelivery maildir %s\nkeep on\nuidls_file %s\n' "$HOST" "$POP3" "$PASS" "$BASE/out" "$BASE/mpop-uidls" > "$BASE/mpoprc"
  chmod 600 "$BASE/mpoprc"
  "${IN_CLIENT[@]}" mpop -q -C "$BASE/mpoprc" bench
}
# The same clients with fsync switched off (eatmydata), when available: the cost of durability.
run_pillarbox_nosync() { "${IN_CLIENT[@]}" eatmydata bash -c "$(declare -f run_pillarbox); BASE='$BASE' HOST='$HOST' POP3='$POP3' PASS='$PASS' PB='$PB' run_pillarbox"; }
run_mpop_nosync() { "${IN_CLIENT[@]}" eatmydata bash -c "$(declare -f run_mpop); BASE='$BASE' HOST='$HOST' POP3='$POP3' PASS='$PASS' run_mpop"; }
run_fetchmail() {
  rm -f "$BASE/fetchids"
  printf 'poll %s port %s proto pop3 uidl user "alice" password "%s" keep fetchall sslproto "" mda "cat > /dev/null"\n' "$HOST" "$POP3" "$PASS" > "$BASE/fetchmailrc"
  chmod 600 "$BASE/fetchmailrc"
  HOME="$BASE" "${IN_CLIENT[@]}" fetchmail -s -f "$BASE/fetchmailrc" -i "$BASE/fetchids" || [ $? -eq 1 ]
}

CLIENTS="pillarbox mpop fetchmail"
command -v eatmydata >/dev/null && CLIENTS="$CLIENTS pillarbox_nosync mpop_nosync"
declare -A TIMES
for rep in $(seq "$REPS"); do
  for client in $CLIENTS; do
    t0=$(now); "run_$client"; t1=$(now)
    TIMES[$client]+="$(echo "$t1 - $t0" | bc -l) "
  done
done
WHERE="loopback"; [ "$DELAY_MS" != 0 ] && WHERE="$((2 * DELAY_MS)) ms round trip"
printf '\n%d messages, %.1f MB, %s, plaintext, %d repetitions (median)\n' "$COUNT" "$(echo "$BYTES/1000000" | bc -l)" "$WHERE" "$REPS"
printf '%-17s %10s %12s %14s\n' client seconds messages/s "time vs pillarbox"
PBT=$(echo "${TIMES[pillarbox]}" | median)
for client in $CLIENTS; do
  T=$(echo "${TIMES[$client]}" | median)
  printf '%-17s %10.2f %12.0f %13.2fx\n' "$client" "$T" "$(echo "$COUNT/$T" | bc -l)" "$(echo "$T/$PBT" | bc -l)"
done
echo "(*_nosync: the same client under eatmydata, fsync disabled; not durable)"
