#!/usr/bin/env bash
# Download the same mailbox from a private Dovecot with pillarbox fetch, mpop and a bare pipelined
# download (the link's own limit), in the same run, and print the median time and client CPU of
# each side by side, in plaintext and over implicit TLS.
#
#   bench/fetch.sh [COUNT] [AVG_KB] [REPS] [DELAY_MS]
#
# Defaults: 2000 messages, 20 KB, 5 repetitions, no added delay. With DELAY_MS the server runs in
# one network namespace and the clients in another, joined by bench/netdelay.py, which delays
# every packet by DELAY_MS each way (this kernel has no netem): 20 gives a 40 ms round trip.
# Environment: ONLY="pillarbox mpop_nosync ..." runs just those clients; PB_BEFORE=PATH adds the same fetch by another build (a before/after); KEEP=1 leaves the mail on the server (default: delete after download, the server's
# mailbox restored before every run); VERBOSE=1 prints each run's time as it ends; LOOP_BUFFERED=1
# puts the stores' loop device in buffered mode (below); FETCHMAIL=1 adds fetchmail (slow over a delay: it does not
# pipeline); EXTRA=1 adds STLS, mbox and MDA delivery (pillarbox and mpop each) and pillarbox with
# a search index to update and with Sieve rules to run (`*_stls` rows are set against bare_tls, the others against bare);
# CLAMD=1 (or EXTRA=1) adds pillarbox with every message scanned by a private clamd (Debian's
# clamav-daemon, with a one-signature database: what ClamAV's mail parsing costs, not a full
# signature set's matching) and clamd_alone, the same messages streamed to that clamd with
# nothing else done (the scanner's own time); clamd's CPU is printed after the table.
# SEALED=1 (or EXTRA=1) adds pillarbox into an encrypted store (`encrypt = { recipient }`), and,
# with CLAMD=1 too, scanned and encrypted.
#
# Needs root (Dovecot), dovecot-pop3d, mpop, python3, bc, openssl, GNU time; eatmydata for the
# fsync-free rows; fetchmail with FETCHMAIL=1. The clients run in turn within each repetition
# (alternating, so a slow phase of the disk hits all of them), each from empty local state.
# Durable delivery: pillarbox and mpop fsync each message into a Maildir (pillarbox in groups);
# fetchmail hands each message to an MDA that writes it to /dev/null (it has no Maildir delivery).
set -euo pipefail
COUNT=${1:-2000}; AVG_KB=${2:-20}; REPS=${3:-5}; DELAY_MS=${4:-0}
KEEP=${KEEP:-0}; PB_BEFORE=${PB_BEFORE:-}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
BASE=$(mktemp -d /tmp/pillarbox-bench.XXXX)
# The server's mailbox lives in memory: restoring it before every run (and Dovecot expunging it)
# deletes thousands of files, and on ext4 every file created within minutes of many deletions
# in the same place costs a scan of them (recently_deleted, in __ext4_new_inode), which made the
# clients' times swing threefold. The clients' stores go to a new ext4 file system made for the
# run on a loop device (on the same disk, in direct-I/O mode, flushes pass through), each run in
# a new folder, and nothing there is deleted until the end. Without loop devices, a folder
# beside BASE.
SRV=$(mktemp -d /dev/shm/pillarbox-bench.XXXX)
chmod 755 "$BASE" "$SRV"
STORE=$BASE/store; STORE_IMG=; LOOP_MOUNTED=; LOOPDEV=
NS_A=pbbench-a-$$; NS_B=pbbench-b-$$; RELAY=; CLAMD_PID=
cleanup() {
  kill "$(cat "$BASE/run/master.pid" 2>/dev/null)" 2>/dev/null || true
  [ -n "$RELAY" ] && kill "$RELAY" 2>/dev/null || true
  if [ "$DELAY_MS" != 0 ]; then ip netns del "$NS_A" 2>/dev/null || true; ip netns del "$NS_B" 2>/dev/null || true; fi
  [ -n "$CLAMD_PID" ] && kill "$CLAMD_PID" 2>/dev/null || true
  [ -n "$LOOP_MOUNTED" ] && umount "$STORE" 2>/dev/null
  [ -n "$LOOPDEV" ] && losetup -d "$LOOPDEV" 2>/dev/null
  rm -rf "$BASE" "$SRV" ${STORE_IMG:+"$STORE_IMG"}
}
trap cleanup EXIT
STORE_IMG=$(mktemp /var/tmp/pillarbox-bench-store.XXXX)
mkdir -p "$STORE"
# The loop device reads and writes its image with direct I/O, as a disk driver writes to its disk:
# in buffered mode it would copy every block into the image file's page cache and write it back
# again at the next flush, a second copy that only a durable client pays for while timed (about
# 0.03 s of CPU for 41.5 MB here). LOOP_BUFFERED=1 keeps that mode, as does a kernel or file
# system without direct I/O for loop devices.
STORE_ON="a folder beside the server's"
if truncate -s 8G "$STORE_IMG" && mkfs.ext4 -q -F "$STORE_IMG"; then
  LOOP_IO="direct I/O"
  if [ "${LOOP_BUFFERED:-0}" = 1 ] || ! LOOPDEV=$(losetup -f --show --direct-io=on "$STORE_IMG" 2>/dev/null) \
    || ! grep -q 1 "/sys/block/${LOOPDEV#/dev/}/loop/dio" 2>/dev/null; then
    if [ -n "$LOOPDEV" ]; then losetup -d "$LOOPDEV"; fi
    LOOP_IO="buffered"; LOOPDEV=$(losetup -f --show "$STORE_IMG" 2>/dev/null) || LOOPDEV=
  fi
  if [ -n "$LOOPDEV" ] && mount "$LOOPDEV" "$STORE" 2>/dev/null; then
    LOOP_MOUNTED=1; STORE_ON="ext4 on a loop device, $LOOP_IO"
  fi
fi
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

POP3=$(free_port); POP3S=$(free_port)
mkdir -p "$BASE"/{run,state,log,out} "$SRV/mail/alice"
# A CA of the run's own (cert.pem, what the clients trust) and the server's certificate from it.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" -keyout "$BASE/ca-key.pem" \
  -out "$BASE/cert.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$HOST" -keyout "$BASE/key.pem" -out "$BASE/server.csr" 2>/dev/null
printf 'subjectAltName=IP:%s\n' "$HOST" > "$BASE/san.ext"
openssl x509 -req -in "$BASE/server.csr" -CA "$BASE/cert.pem" -CAkey "$BASE/ca-key.pem" -CAcreateserial -days 2 \
  -extfile "$BASE/san.ext" -out "$BASE/server.pem" 2>/dev/null
chmod 644 "$BASE/key.pem"
PASS="bench password 2026"
echo "alice:$(doveadm pw -s SHA512-CRYPT -p "$PASS"):65534:65534::$SRV/mail/alice::" > "$BASE/users"
python3 "$HERE/genmail.py" "$SRV/mail/alice" "$COUNT" "$AVG_KB" 1
chown -R 65534:65534 "$SRV/mail/alice"
cp -a "$SRV/mail/alice" "$SRV/pristine"
dovecot_conf "$BASE" "$HOST" "$POP3" "$POP3S" "$BASE/server.pem" "$BASE/key.pem" > "$BASE/dovecot.conf"
"${IN_SERVER[@]}" dovecot -c "$BASE/dovecot.conf" </dev/null >/dev/null 2>&1
for _ in $(seq 100); do "${IN_CLIENT[@]}" bash -c "exec 3<>/dev/tcp/$HOST/$POP3" 2>/dev/null && break; sleep 0.1; done
BYTES=$(du -sb "$SRV/mail/alice" | cut -f1)

now() { date +%s.%N; }
KEEP_POLICY=delete; MPOP_KEEP=off; BARE_DELETE=--delete
[ "$KEEP" = 1 ] && { KEEP_POLICY=keep; MPOP_KEEP=on; BARE_DELETE=; }
# Put the server's mailbox back as it was (delete mode empties it), with no session open.
restore() {
  [ "$KEEP" = 1 ] && return
  rm -rf "$SRV/mail/alice"; cp -a "$SRV/pristine" "$SRV/mail/alice"
}
pb_account() { # PORT TLS; DELIVER (default: a Maildir at $OUT), ACCOUNT_EXTRA (more lines)
  printf '[accounts.bench]\nhost = "%s"\nport = %s\ntls = "%s"\nca_file = "%s"\nusername = "alice"\npassword_env = "BENCH_PW"\ndeliver = { %s }\nkeep = "%s"\n%s\n' \
    "$HOST" "$1" "$2" "$BASE/cert.pem" "${DELIVER:-maildir = \"$OUT\"}" "$KEEP_POLICY" "${ACCOUNT_EXTRA:-}"
}
run_pillarbox_at() { # PORT TLS [WRAPPER...]
  local port=$1 tls=$2; shift 2
  rm -rf "$OUT.state"
  if [ "$tls" = none ]; then pb_account "$port" "$tls" | sed '/^ca_file/d;s/^tls = "none"/tls = "none"\ninsecure = true/'; else pb_account "$port" "$tls"; fi > "$BASE/accounts.toml"
  BENCH_PW="$PASS" "${IN_CLIENT[@]}" "$@" "$PB" fetch --quiet --accounts-file "$BASE/accounts.toml" --state-dir "$OUT.state"
}
run_pillarbox() { run_pillarbox_at "$POP3" none; }
run_pillarbox_tls() { run_pillarbox_at "$POP3S" implicit; }
run_pillarbox_nosync() { run_pillarbox_at "$POP3" none eatmydata; }
run_pillarbox_stls() { run_pillarbox_at "$POP3" starttls; }
run_pillarbox_mbox() { DELIVER="mbox = \"$OUT.mbox\"" run_pillarbox_at "$POP3" none; }
# The MDA's own cost is the same for every client: each message is piped to a shell command.
MDA_COMMAND='cat > /dev/null'
run_pillarbox_mda() { DELIVER="mda = \"$MDA_COMMAND\"" run_pillarbox_at "$POP3" none; }
# With a search index (made empty before the timing): the fetch adds each batch to it beside the
# download, on its clock.
prepare_pillarbox_indexed() {
  mkdir -p "$OUT"/{cur,new,tmp}
  "$PB" mail search --index "$OUT.sqlite" --maildir "$OUT" nothing-matches >/dev/null 2>&1 || true
}
run_pillarbox_indexed() { PILLARBOX_SEARCH_INDEX="$OUT.sqlite" run_pillarbox_at "$POP3" none; }
# Filed by Sieve rules: a seventh of the messages into a folder by subject, a tenth into another
# by a pattern with a match variable, flags by sender, and a body test every message is read for.
prepare_pillarbox_sieve() {
  cat > "$BASE/rules.sieve" <<'RULES'
require ["fileinto", "variables", "body", "imap4flags"];
if header :matches "Subject" "Grüße *" { fileinto "greetings"; stop; }
if address :domain :is "from" "example.org" { addflag "\\Seen"; }
if body :text :contains "a phrase no message has" { fileinto "never"; }
if header :matches "Subject" "Report *0" { fileinto "reports.tens"; }
RULES
}
run_pillarbox_sieve() { ACCOUNT_EXTRA="sieve = \"$BASE/rules.sieve\"" run_pillarbox_at "$POP3" none; }
# The same rules over an mbox account: folders are mbox files in $OUT.mbox.folders/.
prepare_pillarbox_mbox_sieve() { prepare_pillarbox_sieve; rm -rf "$OUT.mbox.folders"; }
run_pillarbox_mbox_sieve() {
  DELIVER="mbox = \"$OUT.mbox\"" ACCOUNT_EXTRA="sieve = \"$BASE/rules.sieve\"" run_pillarbox_at "$POP3" none
}
# Every message scanned by clamd beside the download (see start_clamd), and clamd alone.
run_pillarbox_clamd() {
  ACCOUNT_EXTRA=$(printf '\n[antivirus]\nclamd = "%s"' "$BASE/clamd/sock") run_pillarbox_at "$POP3" none
}
# An encrypted store: the key made once, before the timing.
prepare_sealed_key() {
  [ -s "$BASE/recipient" ] && return
  echo "bench store key passphrase 2026 quokka" > "$BASE/store-pass"
  "$PB" mail keygen --key "$BASE/store-key.age" --passphrase-file "$BASE/store-pass" 2>/dev/null \
    | sed 's/.*recipient = "\(age1[a-z0-9]*\)".*/\1/' > "$BASE/recipient"
}
prepare_pillarbox_sealed() { prepare_sealed_key; }
run_pillarbox_sealed() {
  ACCOUNT_EXTRA="encrypt = { recipient = \"$(cat "$BASE/recipient")\" }" run_pillarbox_at "$POP3" none
}
prepare_pillarbox_clamd_sealed() { prepare_sealed_key; }
run_pillarbox_clamd_sealed() {
  ACCOUNT_EXTRA=$(printf 'encrypt = { recipient = "%s" }\n[antivirus]\nclamd = "%s"' "$(cat "$BASE/recipient")" "$BASE/clamd/sock") \
    run_pillarbox_at "$POP3" none
}
run_clamd_alone() { python3 "$HERE/clamd_stream.py" "$BASE/clamd/sock" "$SRV/pristine" 4 >/dev/null; }
# A private clamd, its database one MD5 signature of nothing in the mail (clamd needs one).
start_clamd() {
  local d=$BASE/clamd
  mkdir -p "$d/db" "$d/tmp"
  printf '%s:6:Bench.Absent\n' "$(printf absent | md5sum | cut -d' ' -f1)" > "$d/db/bench.hdb"
  printf 'Foreground yes\nLocalSocket %s\nDatabaseDirectory %s\nTemporaryDirectory %s\nLogFile %s\nStreamMaxLength 64M\nScanMail yes\nMaxThreads 8\n' \
    "$d/sock" "$d/db" "$d/tmp" "$d/log" > "$d/clamd.conf"
  /usr/sbin/clamd --config-file="$d/clamd.conf" </dev/null >/dev/null 2>&1 &
  CLAMD_PID=$!
  for _ in $(seq 300); do
    python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"zPING\0"); sys.exit(0 if s.recv(8).startswith(b"PONG") else 1)' "$d/sock" 2>/dev/null && return
    sleep 0.1
  done
  echo "clamd did not start: $(cat "$d/log" 2>/dev/null)" >&2; exit 1
}
# Every CPU's busy time so far (user, nice, system, irq, softirq; not what the hypervisor took), in
# clock ticks: the machine's work during a client's run (the server's, the kernel's, the client's).
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }
# Dovecot's CPU so far, in clock ticks: its master's (with the children it has reaped) and each
# live child's (pop3 processes are reused, so a session's CPU is mostly in a live one); a process
# that ends while it is read is skipped. The fields of /proc/PID/stat once the command is cut
# out: 1 pid, 3 ppid, 13-16 utime stime cutime cstime.
server_ticks() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | sed 's/^\([0-9]*\) (.*) /\1 /' |
    awk -v m="$(cat "$BASE/run/master.pid")" '$1 == m {t += $13 + $14 + $15 + $16} $3 == m {t += $13 + $14} END {print t + 0}'
}
clamd_cpu() { awk '{print $14 + $15}' "/proc/$CLAMD_PID/stat"; }
# PB_BEFORE=/path/to/an/older/pillarbox: the same fetch with that build, for a before/after.
run_pillarbox_before() { PB=$PB_BEFORE run_pillarbox_at "$POP3" none; }
run_mpop_at() { # TLS-LINES [WRAPPER...]; DELIVERY (default: a Maildir at $OUT)
  local tls=$1; shift
  mkdir -p "$OUT"/{cur,new,tmp}
  printf 'account bench\nhost %s\n%s\nauth user\nuser alice\npasswordeval echo "%s"\ndelivery %s\nkeep %s\nuidls_file %s\n' \
    "$HOST" "$tls" "$PASS" "${DELIVERY:-maildir $OUT}" "$MPOP_KEEP" "$OUT.uidls" > "$BASE/mpoprc"
  chmod 600 "$BASE/mpoprc"
  "${IN_CLIENT[@]}" "$@" mpop -q -C "$BASE/mpoprc" bench
}
run_mpop() { run_mpop_at "$(printf 'port %s\ntls off' "$POP3")"; }
run_mpop_tls() { run_mpop_at "$(printf 'port %s\ntls on\ntls_starttls off\ntls_trust_file %s' "$POP3S" "$BASE/cert.pem")"; }
run_mpop_nosync() { run_mpop_at "$(printf 'port %s\ntls off' "$POP3")" eatmydata; }
run_mpop_stls() { run_mpop_at "$(printf 'port %s\ntls on\ntls_starttls on\ntls_trust_file %s' "$POP3" "$BASE/cert.pem")"; }
run_mpop_mbox() { DELIVERY="mbox $OUT.mbox" run_mpop_at "$(printf 'port %s\ntls off' "$POP3")"; }
run_mpop_mda() { DELIVERY="mda $MDA_COMMAND" run_mpop_at "$(printf 'port %s\ntls off' "$POP3")"; }
run_bare() { "${IN_CLIENT[@]}" python3 "$HERE/bare_pop3.py" "$HOST" "$POP3" alice "$PASS" "$COUNT" $BARE_DELETE >/dev/null; }
run_bare_tls() { "${IN_CLIENT[@]}" python3 "$HERE/bare_pop3.py" "$HOST" "$POP3S" alice "$PASS" "$COUNT" $BARE_DELETE --tls "$BASE/cert.pem" >/dev/null; }
run_fetchmail() {
  rm -f "$BASE/fetchids"
  local keep=keep; [ "$KEEP" = 1 ] || keep=nokeep
  printf 'poll %s port %s proto pop3 uidl user "alice" password "%s" %s fetchall sslproto "" mda "cat > /dev/null"\n' "$HOST" "$POP3" "$PASS" "$keep" > "$BASE/fetchmailrc"
  chmod 600 "$BASE/fetchmailrc"
  HOME="$BASE" "${IN_CLIENT[@]}" fetchmail -s -f "$BASE/fetchmailrc" -i "$BASE/fetchids" || [ $? -eq 1 ]
}

CLIENTS="bare pillarbox mpop bare_tls pillarbox_tls mpop_tls"
command -v eatmydata >/dev/null && CLIENTS="$CLIENTS pillarbox_nosync mpop_nosync"
[ "${FETCHMAIL:-0}" = 1 ] && CLIENTS="$CLIENTS fetchmail"
[ "${EXTRA:-0}" = 1 ] && CLIENTS="$CLIENTS pillarbox_stls mpop_stls pillarbox_mbox mpop_mbox pillarbox_mda mpop_mda pillarbox_indexed pillarbox_sieve pillarbox_mbox_sieve"
{ [ "${CLAMD:-0}" = 1 ] || [ "${EXTRA:-0}" = 1 ]; } && CLIENTS="$CLIENTS pillarbox_clamd clamd_alone"
{ [ "${SEALED:-0}" = 1 ] || [ "${EXTRA:-0}" = 1 ]; } && CLIENTS="$CLIENTS pillarbox_sealed"
{ [ "${SEALED:-0}" = 1 ] && [ "${CLAMD:-0}" = 1 ]; } || [ "${EXTRA:-0}" = 1 ] && CLIENTS="$CLIENTS pillarbox_clamd_sealed"
[ -n "${PB_BEFORE:-}" ] && CLIENTS="$CLIENTS pillarbox_before"
# ONLY="bare pillarbox ...": just these (bare and bare_tls are added as the references).
if [ -n "${ONLY:-}" ]; then CLIENTS="bare bare_tls"; for c in $ONLY; do case " $CLIENTS " in *" $c "*) ;; *) CLIENTS="$CLIENTS $c" ;; esac; done; fi
case " $CLIENTS " in *" pillarbox_clamd"*|*" clamd_alone "*) start_clamd ;; esac
declare -A TIMES CPUS SCANNER MACHINE SERVER
for rep in $(seq "$REPS"); do
  for client in $CLIENTS; do
    restore
    OUT=$STORE/$client-$rep
    if declare -F "prepare_$client" >/dev/null; then "prepare_$client"; fi
    [ -n "$CLAMD_PID" ] && s0=$(clamd_cpu)
    m0=$(busy_ticks); v0=$(server_ticks)
    t0=$(now)
    /usr/bin/time -f '%U %S' -o "$BASE/cpu" bash -c "$(declare -f "run_$client" run_pillarbox_at run_mpop_at pb_account); $(declare -p BASE SRV OUT HOST POP3 POP3S PASS PB PB_BEFORE HERE COUNT KEEP_POLICY MPOP_KEEP BARE_DELETE KEEP IN_CLIENT MDA_COMMAND); run_$client"
    t1=$(now)
    m1=$(busy_ticks); v1=$(server_ticks)
    [ -n "$CLAMD_PID" ] && SCANNER[$client]+="$(( $(clamd_cpu) - s0 )) "
    # A client under eatmydata leaves its store unwritten in the page cache; written now, outside
    # the timing, it is not charged to the next client (whose syncfs would write it otherwise).
    sync
    # The stores' page cache goes too (the file system mounted again), so that it does not grow
    # from one run to the next into memory the machine has not used yet: the next client's files
    # reuse the pages just freed.
    if [ -n "$LOOP_MOUNTED" ]; then umount "$STORE" && mount "$LOOPDEV" "$STORE"; fi
    LEFT=$(find "$SRV/mail/alice/cur" "$SRV/mail/alice/new" -type f 2>/dev/null | wc -l)
    if [ "$KEEP" != 1 ] && [ "$LEFT" != 0 ] && [ "$client" != clamd_alone ]; then echo "$client left $LEFT messages on the server" >&2; exit 1; fi
    TIMES[$client]+="$(echo "$t1 - $t0" | bc -l) "
    if [ "${VERBOSE:-0}" = 1 ]; then printf 'rep %d %-20s %.3f s\n' "$rep" "$client" "$(echo "$t1 - $t0" | bc -l)" >&2; fi
    CPUS[$client]+="$(awk '{print $1 + $2}' "$BASE/cpu") "
    MACHINE[$client]+="$(( m1 - m0 )) "
    SERVER[$client]+="$(( v1 - v0 )) "
  done
done
WHERE="loopback"; [ "$DELAY_MS" != 0 ] && WHERE="$((2 * DELAY_MS)) ms round trip"
MODE="delete after download"; [ "$KEEP" = 1 ] && MODE="kept on the server"
printf '\n%d messages, %.1f MB, %s, %s, %d alternating repetitions (medians); stores: %s\n' "$COUNT" "$(echo "$BYTES/1000000" | bc -l)" "$WHERE" "$MODE" "$REPS" "$STORE_ON"
printf '%-24s %9s %11s %12s %14s %15s %14s %14s\n' client seconds messages/s "vs bare" "client CPU s" "CPU us/message" "server CPU s" "machine CPU s"
for client in $CLIENTS; do
  T=$(echo "${TIMES[$client]}" | median); C=$(echo "${CPUS[$client]}" | median); M=$(echo "${MACHINE[$client]}" | median); V=$(echo "${SERVER[$client]}" | median)
  REF=bare; case $client in *_tls|*_stls) REF=bare_tls ;; esac
  R=$(echo "${TIMES[$REF]}" | median)
  printf '%-24s %9.2f %11.0f %11.2fx %14.2f %15.0f %14.2f %14.2f\n' "$client" "$T" "$(echo "$COUNT/$T" | bc -l)" "$(echo "$T/$R" | bc -l)" "$C" "$(echo "$C*1000000/$COUNT" | bc -l)" \
    "$(echo "$V/$(getconf CLK_TCK)" | bc -l)" "$(echo "$M/$(getconf CLK_TCK)" | bc -l)"
done
for client in pillarbox_clamd clamd_alone pillarbox_clamd_sealed; do
  [ -n "${SCANNER[$client]:-}" ] || continue
  TICKS=$(echo "${SCANNER[$client]}" | median)
  printf 'clamd CPU during %s: %.2f s, %.0f us/message\n' "$client" "$(echo "$TICKS/$(getconf CLK_TCK)" | bc -l)" \
    "$(echo "$TICKS*1000000/$(getconf CLK_TCK)/$COUNT" | bc -l)"
done
echo "(bare: bench/bare_pop3.py, one pipelined burst that stores nothing: the link's limit; *_tls against bare_tls."
echo " *_nosync: the same client under eatmydata, fsync disabled, not durable. CPU: user + system of the client process;"
echo " server CPU: Dovecot's processes; machine CPU: every core's busy time during the run, the kernel's included.)"
