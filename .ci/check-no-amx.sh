#!/usr/bin/env bash
# Fails when a locara binary contains llama.cpp's AMX kernels. They crash
# every generation on Intel CPUs with AMX (SIGSEGV in
# ggml_backend_amx_mul_mat, llama.cpp #20824), and `-march=native` on such a
# CPU turns them on unless crates/locara-engine/cmake/llama-cpp.cmake turns
# them off. The kernels and the AMX buffer type that selects them exist only
# when ggml is compiled with __AMX_INT8__, so their symbols tell.
#
# Usage: .ci/check-no-amx.sh [BINARY...]   (default: target/release/locara
# and target/debug/locara, those that exist)
set -euo pipefail
cd "$(dirname "$0")/.."

bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  for b in target/release/locara target/debug/locara; do
    [ -x "$b" ] && bins+=("$b")
  done
fi
if [ ${#bins[@]} -eq 0 ]; then
  echo "check-no-amx: no locara binary to check (build one first)" >&2
  exit 1
fi
command -v nm >/dev/null 2>&1 || { echo "check-no-amx: nm (binutils) is missing" >&2; exit 1; }

status=0
for bin in "${bins[@]}"; do
  symbols="$(nm -C "$bin" 2>/dev/null || true)"
  # A binary without a symbol table cannot be checked: that is a failure,
  # not a pass.
  if ! grep -q 'llama_decode' <<<"$symbols"; then
    echo "check-no-amx: $bin has no llama.cpp symbols to check (stripped?)" >&2
    status=1
    continue
  fi
  found="$(grep -E 'ggml_backend_amx_(buffer_type|mul_mat|convert_weight)|ggml::cpu::amx::' <<<"$symbols" || true)"
  if [ -n "$found" ]; then
    echo "check-no-amx: $bin contains llama.cpp's AMX kernels:" >&2
    head -5 <<<"$found" >&2
    status=1
  else
    echo "check-no-amx: $bin: no AMX kernels"
  fi
done
exit "$status"
