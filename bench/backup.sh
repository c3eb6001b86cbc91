#!/usr/bin/env bash
# Backups of a large local store: `pillarbox backup create` (full, then incremental after 1% new
# mail), verify and restore, next to the standard pipeline `tar | zstd -3 | age` over the same
# Maildir (what a hand-made encrypted backup costs; it has no incremental mode, so every run is
# full; zstd uses every core, as Pillarbox does). Both encrypt to an age public key, so no
# passphrase work is measured. Pillarbox's restore syncs the file system before it renames the
# restored folder into place; tar does not sync.
#
#   bench/backup.sh [COUNT] [AVG_KB] [REPS]     (defaults: 100000, 4, 3)
set -euo pipefail
COUNT=${1:-100000}; AVG_KB=${2:-4}; REPS=${3:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
for t in age zstd tar; do command -v $t >/dev/null || { echo "backup.sh: needs $t (apt-get install $t)" >&2; exit 1; }; done
BASE=$(mktemp -d /tmp/pillarbox-backup.XXXX)
trap 'rm -rf "$BASE"' EXIT
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" -p pillarbox
PB="$ROOT/target/release/pillarbox"
python3 "$HERE/genmail.py" "$BASE/Mail" "$COUNT" "$AVG_KB" 7
cat > "$BASE/accounts.toml" <<TOML
[accounts.bench]
host = "pop.example.org"
username = "bench"
password_env = "UNUSED"
deliver = { maildir = "$BASE/Mail" }
TOML
export PILLARBOX_ACCOUNTS="$BASE/accounts.toml"
"$PB" backup keygen --out "$BASE/key.txt" > "$BASE/public.txt" 2>/dev/null
PUB=$(cat "$BASE/public.txt")
now() { date +%s.%N; }
ms() { echo "($2 - $1) * 1000" | bc -l | xargs printf '%.0f'; }
mb() { du -sm "$1" | cut -f1; }
create() { "$PB" backup create --to "$1" --state-dir "$BASE/state/fetch" --recipient "$PUB" --json "${@:2}"; }

FULL=""; PIPE=""; INC=""; VER=""; RES=""; PRES=""
for r in $(seq "$REPS"); do
  rm -rf "$BASE/out" "$BASE/state" "$BASE/restored" "$BASE/pipe-x" "$BASE/pipe.tar.zst.age"
  sync
  # Alternating which goes first, so that neither always meets the other's page cache or the
  # file system's bookkeeping of just-deleted files.
  for who in $(if [ $((r % 2)) -eq 1 ]; then echo pb pipe; else echo pipe pb; fi); do
    if [ "$who" = pb ]; then
      t0=$(now); create "$BASE/out" >/dev/null; t1=$(now); FULL+="$(ms "$t0" "$t1") "
    else
      t0=$(now); tar -C "$BASE" -cf - Mail | zstd -3 -q -T0 | age -r "$PUB" > "$BASE/pipe.tar.zst.age"; t1=$(now); PIPE+="$(ms "$t0" "$t1") "
    fi
  done
  # 1% new mail, then an incremental backup.
  rm -rf "$BASE/more"
  python3 "$HERE/genmail.py" "$BASE/more" $((COUNT / 100)) "$AVG_KB" $((100 + r)) >/dev/null
  for f in "$BASE"/more/new/*; do mv "$f" "$BASE/Mail/new/r$r.$(basename "$f")"; done
  t0=$(now); create "$BASE/out" > "$BASE/inc.json"; t1=$(now); INC+="$(ms "$t0" "$t1") "
  t0=$(now); "$PB" backup verify --identity "$BASE/key.txt" "$BASE"/out/pillarbox-*.age >/dev/null; t1=$(now); VER+="$(ms "$t0" "$t1") "
  LAST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["path"])' "$BASE/inc.json")
  mkdir "$BASE/pipe-x"
  for who in $(if [ $((r % 2)) -eq 1 ]; then echo pb pipe; else echo pipe pb; fi); do
    if [ "$who" = pb ]; then
      t0=$(now); "$PB" backup restore --identity "$BASE/key.txt" "$LAST" --to "$BASE/restored" >/dev/null; t1=$(now); RES+="$(ms "$t0" "$t1") "
    else
      t0=$(now); age -d -i "$BASE/key.txt" "$BASE/pipe.tar.zst.age" | zstd -d -q | tar -C "$BASE/pipe-x" -xf -; t1=$(now); PRES+="$(ms "$t0" "$t1") "
    fi
  done
done
FULL_MB=$(ls -l "$BASE"/out/pillarbox-*-000.tar.zst.age | awk '{printf "%.1f", $5/1048576}')
INC_MB=$(ls -l "$BASE"/out/pillarbox-*-001.tar.zst.age | awk '{printf "%.2f", $5/1048576}')
PIPE_MB=$(ls -l "$BASE/pipe.tar.zst.age" | awk '{printf "%.1f", $5/1048576}')
printf '\n%d messages (%s MB in the Maildir), medians of %d\n' "$COUNT" "$(mb "$BASE/Mail")" "$REPS"
printf '  %-44s %8s ms   %8s MB\n' "pillarbox backup create (full)" "$(echo "$FULL" | median)" "$FULL_MB"
printf '  %-44s %8s ms   %8s MB\n' "tar | zstd -3 | age (full)" "$(echo "$PIPE" | median)" "$PIPE_MB"
printf '  %-44s %8s ms   %8s MB\n' "pillarbox backup create (incremental, +1%)" "$(echo "$INC" | median)" "$INC_MB"
printf '  %-44s %8s ms\n' "pillarbox backup verify (both archives)" "$(echo "$VER" | median)"
printf '  %-44s %8s ms\n' "pillarbox backup restore (the chain)" "$(echo "$RES" | median)"
printf '  %-44s %8s ms\n' "age -d | zstd -d | tar -x (full)" "$(echo "$PRES" | median)"
