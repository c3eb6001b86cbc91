#!/usr/bin/env bash
# The README's first screen promises two commands that work on a fresh clone. This runs the
# first of them exactly as the README writes it (read from the README, not copied here): the
# server on its embedded default, until it listens on every default port, then stops it with
# SIGTERM and checks that it exits cleanly. The second (the test command) is run by .ci/run
# itself, also read from the README.
#
#   scripts/readme-check.sh serve     run the serve line and check that it listens
#   scripts/readme-check.sh test      print the test line (for .ci/run to run)
set -euo pipefail
cd "$(dirname "$0")/.."

# The first ```sh block of the README: line 1 serves, line 2 tests (comments stripped).
block=$(awk '/^```sh$/ { inside = 1; next } inside && /^```$/ { exit } inside' README.md)
line() { sed -n "${1}p" <<<"$block" | sed 's/[[:space:]]*#.*$//'; }
serve_line=$(line 1)
test_line=$(line 2)
case "$serve_line" in *" serve"*) ;; *) echo "readme-check: README's first command is not a serve line: $serve_line" >&2; exit 1 ;; esac
[ -n "$test_line" ] || { echo "readme-check: README's first block has no second command" >&2; exit 1; }

case "${1:-}" in
  test) echo "$test_line"; exit 0 ;;
  serve) ;;
  *) echo "usage: $0 serve|test" >&2; exit 2 ;;
esac

# `serve` creates ./pillarbox-data on first start; a data folder from earlier use is moved
# aside for the check and put back afterwards, so this never touches anyone's data.
aside=
if [ -e pillarbox-data ]; then aside=$(mktemp -d ./.pillarbox-data.readme-check.XXXXXX); mv pillarbox-data "$aside/"; fi
out=$(mktemp)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf pillarbox-data "$out"
  if [ -n "$aside" ]; then mv "$aside/pillarbox-data" . && rmdir "$aside"; fi
}
trap cleanup EXIT

echo "readme-check: running the README's first command: $serve_line"
# `exec` makes $! cargo itself, which on Unix replaces itself with the program it runs; should it
# run the server as a child instead, the child is the one stopped.
bash -c "exec $serve_line" >"$out" 2>&1 &
pid=$!
# A cold release build takes minutes: wait for the build, then for the listeners.
listening() { grep -c ' listening on ' "$out" 2>/dev/null || true; }
deadline=$((SECONDS + 1800))
until [ "$(listening)" -ge 3 ]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "readme-check: '$serve_line' ended before listening:" >&2; cat "$out" >&2; exit 1
  fi
  [ $SECONDS -lt $deadline ] || { echo "readme-check: '$serve_line' did not listen within 30 minutes" >&2; cat "$out" >&2; exit 1; }
  sleep 1
done
for port in 1110 1995 2424; do
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "readme-check: nothing accepts connections on 127.0.0.1:$port" >&2; cat "$out" >&2; exit 1
  fi
done
# The POP3 port greets like a POP3 server.
greeting=$(exec 3<>/dev/tcp/127.0.0.1/1110; timeout 5 head -n 1 <&3 || true)
case "$greeting" in "+OK"*) ;; *) echo "readme-check: port 1110 did not greet with +OK: $greeting" >&2; exit 1 ;; esac
server=$(pgrep -P "$pid" -x pillarbox || true)
[ -n "$server" ] || server=$pid
[ "$(cat "/proc/$server/comm" 2>/dev/null)" = pillarbox ] || { echo "readme-check: cannot find the server process (cargo was $pid)" >&2; exit 1; }
kill -TERM "$server"
status=0
wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || { echo "readme-check: the server exited with $status after SIGTERM" >&2; cat "$out" >&2; exit 1; }
[ -f pillarbox-data/pillarbox.toml ] || { echo "readme-check: serve did not create pillarbox-data/pillarbox.toml" >&2; exit 1; }
echo "readme-check: '$serve_line' listened on 1110, 1995 and 2424, greeted with +OK and stopped cleanly"
