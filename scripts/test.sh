#!/usr/bin/env bash
# The whole test suite. Installs what the build needs, fetches the two test
# models once into a cache outside the repository (sha256-verified by
# `locara pull`), and runs every test against them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
locara_need_deps
locara_need_test_deps

export LOCARA_TEST_HOME="${LOCARA_TEST_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/locara-test}"
cargo build --quiet -p locara
for model in smollm2:135m gemma3:270m; do
  LOCARA_HOME="$LOCARA_TEST_HOME" target/debug/locara pull "$model"
done
# Plain file names for tests of crates that do not know the store's layout.
export LOCARA_TEST_MODELS="$LOCARA_TEST_HOME/files"
mkdir -p "$LOCARA_TEST_MODELS"
ln -sf "$LOCARA_TEST_HOME/models/smollm2+135m/model.gguf" "$LOCARA_TEST_MODELS/smollm2-135m.gguf"
ln -sf "$LOCARA_TEST_HOME/models/gemma3+270m/model.gguf" "$LOCARA_TEST_MODELS/gemma3-270m.gguf"

# The official openai and ollama Python clients and a JSON Schema validator,
# for the API compatibility tests (crates/locara/tests/serve.rs, clients.rs).
venv="$LOCARA_TEST_HOME/venv"
if ! "$venv/bin/python" -c "import openai, ollama, jsonschema" >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet "openai==2.8.1" "ollama==0.6.3" "jsonschema==4.25.1"
fi
export LOCARA_TEST_PYTHON="$venv/bin/python"

cargo test --workspace "$@"
