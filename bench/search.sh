#!/usr/bin/env bash
# The search index on a large local store: build time, update time when nothing changed, and
# query times, next to grep over the same Maildir (what finding a message costs without an
# index).
#
#   bench/search.sh [COUNT] [AVG_KB] [REPS]     (defaults: 100000, 2, 5)
set -euo pipefail
COUNT=${1:-100000}; AVG_KB=${2:-2}; REPS=${3:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
BASE=$(mktemp -d /tmp/pillarbox-search.XXXX)
trap 'rm -rf "$BASE"' EXIT
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p pillarbox
PB="$ROOT/target/release/pillarbox"
python3 "$HERE/genmail.py" "$BASE/Mail" "$COUNT" "$AVG_KB" 7
now() { date +%s.%N; }
ms() { echo "($2 - $1) * 1000" | bc -l | xargs printf '%.0f'; }
search() { "$PB" mail search --maildir "$BASE/Mail" --index "$BASE/index.sqlite" --limit 20 "$@" >/dev/null; }
t0=$(now); search lighthouse-not-there; t1=$(now)
BUILD=$(ms "$t0" "$t1")
t0=$(now); search lighthouse-not-there; t1=$(now)
UPDATE=$(ms "$t0" "$t1")
printf '\n%d messages (%s MB), index %s MB\n' "$COUNT" "$(du -sm "$BASE/Mail" | cut -f1)" "$(du -sm "$BASE/index.sqlite" | cut -f1)"
printf '  %-40s %8s ms\n' "build the index (first search)" "$BUILD" "up to date check + a search" "$UPDATE"
for q in "protocol latency" "from:s4242@example.org" "subject:Report after:2026-11-01" "maildrop download client"; do
  P=""; G=""
  for _ in $(seq "$REPS"); do
    t0=$(now); search $q; t1=$(now); P+="$(ms "$t0" "$t1") "
    word=${q%% *}; word=${word#*:}
    t0=$(now); grep -rl -F -- "$word" "$BASE/Mail" >/dev/null || true; t1=$(now); G+="$(ms "$t0" "$t1") "
  done
  printf '  %-40s %8s ms   (grep -rl for "%s": %s ms)\n' "search: $q" "$(echo "$P" | median)" "$word" "$(echo "$G" | median)"
done
