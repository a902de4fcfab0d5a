#!/usr/bin/env bash
# The README's pictures, made by the tests that drive the real programs:
# `locara top` in tmux (its screen, with colours, drawn as HTML and
# screenshotted by headless Chromium) and the daemon's web page (screenshotted
# by the Chromium test itself). Needs the test set-up of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$PWD/docs/screenshots"
mkdir -p "$out"
export LOCARA_TEST_SCREENSHOTS="$out"
cargo test -p locara --test top --test web
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 scripts/ansi_to_html.py < "$out/top.ansi" > "$tmp/top.html"
chromium --headless --no-sandbox --disable-gpu --no-first-run \
  --user-data-dir="$tmp/profile" --hide-scrollbars \
  --window-size=1000,720 --screenshot="$out/top.png" "file://$tmp/top.html" 2>/dev/null
rm -f "$out/top.ansi"
echo "wrote $out/top.png and $out/web.png"
