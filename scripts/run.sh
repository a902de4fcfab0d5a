#!/usr/bin/env bash
# The one command to try Locara: installs what the build needs, builds the
# release binary, then runs `locara run` with the arguments given (no
# arguments: a chat with the default model, pulled on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
locara_need_deps
cargo build --release --quiet -p locara
exec target/release/locara run "$@"
