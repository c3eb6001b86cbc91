#!/usr/bin/env bash
# Build the Debian package (target/debian/pillarbox_*.deb): the binary, the systemd unit, a
# configuration for /etc/pillarbox (the embedded default with system paths, the standard ports
# and [process] user = "pillarbox"), manual pages and shell completions. Needs cargo-deb
# (`cargo install cargo-deb`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p pillarbox
out=target/dist
rm -rf "$out" && mkdir -p "$out/man" "$out/completions" "$out/cfg"
B=target/release/pillarbox
"$B" man "$out/man" >/dev/null
gzip -9n "$out"/man/*.1 "$out"/man/*.5
"$B" completions bash > "$out/completions/pillarbox"
"$B" completions zsh > "$out/completions/_pillarbox"
"$B" completions fish > "$out/completions/pillarbox.fish"
# The embedded default, as a new data folder gets it, moved to system paths.
"$B" --data-dir "$out/cfg" user list >/dev/null
sed -e 's|^data_dir = "."|data_dir = "/var/lib/pillarbox"|' \
    -e 's|^pop3 = \["127.0.0.1:1110"\]|pop3 = ["0.0.0.0:110", "[::]:110"]|' \
    -e 's|^pop3s = \["127.0.0.1:1995"\]|pop3s = ["0.0.0.0:995", "[::]:995"]|' \
    -e 's|^lmtp = \["127.0.0.1:2424"\]|lmtp = ["127.0.0.1:24"]|' \
    -e '/^\[process\]/,/^\[/ s|^user = ""|user = "pillarbox"|' \
    "$out/cfg/pillarbox.toml" > "$out/pillarbox.toml"
grep -q '^user = "pillarbox"' "$out/pillarbox.toml"
cargo deb -p pillarbox --no-build --locked
