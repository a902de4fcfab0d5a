#!/usr/bin/env bash
# Installs (Debian) or names (elsewhere) what building Locara needs:
# a Rust toolchain, cmake, a C/C++ compiler and libclang (llama.cpp and its
# bindings), and python3 with pip (model pulls locate wheels through pip).
# Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail

# True when bindgen will find a libclang to load. It looks (clang-sys's
# search) in LIBCLANG_PATH, `llvm-config --libdir` and the usual library
# directories for `libclang.so`, `libclang.so.N` or `libclang-N.so[.M]`.
# `libclang-cpp.so.N`, which clang itself links against, is not that library:
# a plain `libclang*.so*` glob matched it on a machine without libclang.
locara_has_libclang() {
  local dirs=() dir f name
  [ -n "${LIBCLANG_PATH:-}" ] && dirs+=("$LIBCLANG_PATH")
  command -v llvm-config >/dev/null 2>&1 && dirs+=("$(llvm-config --libdir)")
  dirs+=(/usr/lib/llvm-*/lib /usr/lib/*-linux-gnu /usr/lib64 /usr/lib /usr/local/lib)
  for dir in "${dirs[@]}"; do
    [ -d "$dir" ] || continue
    for f in "$dir"/libclang*.so*; do
      [ -e "$f" ] || continue
      name="${f##*/}"
      if [[ "$name" =~ ^libclang(-[0-9][0-9.]*)?\.so(\.[0-9][0-9.]*)?$ ]]; then
        return 0
      fi
    done
  done
  return 1
}

locara_can_make_venv() {
  local dir ok=1
  dir="$(mktemp -d)"
  python3 -m venv "$dir/venv" >/dev/null 2>&1 && ok=0
  rm -rf "$dir"
  return "$ok"
}

locara_need_deps() {
  local missing=()
  case "$(uname -s)" in
    Darwin)
      if [ "$(uname -m)" != "arm64" ]; then
        echo "Locara needs an Apple Silicon Mac (this one is $(uname -m))." >&2
        exit 1
      fi
      xcode-select -p >/dev/null 2>&1 || missing+=("Xcode command line tools: xcode-select --install")
      command -v cmake >/dev/null 2>&1 || missing+=("cmake: brew install cmake (or https://cmake.org/download)")
      command -v cargo >/dev/null 2>&1 || missing+=("Rust: https://rustup.rs")
      command -v python3 >/dev/null 2>&1 || missing+=("python3: comes with the Xcode command line tools")
      if [ ${#missing[@]} -gt 0 ]; then
        echo "Missing, please install:" >&2
        printf '  - %s\n' "${missing[@]}" >&2
        exit 1
      fi
      ;;
    Linux)
      local pkgs=()
      command -v cmake >/dev/null 2>&1 || pkgs+=(cmake)
      # The cc crate and CMake call `cc` and `c++`.
      { command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1; } || pkgs+=(clang)
      # bindgen needs libclang itself (and clang's own headers, which come
      # with the clang package), not just a compiler.
      locara_has_libclang || pkgs+=(libclang-dev clang)
      # Pulls and crate downloads check servers against the system's CA list.
      [ -f /etc/ssl/certs/ca-certificates.crt ] || pkgs+=(ca-certificates)
      # Downloads use the system's TLS stack (OpenSSL).
      pkg-config --exists openssl 2>/dev/null || pkgs+=(libssl-dev pkg-config)
      command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
      python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
      # The test suite makes a virtualenv for the openai client. Debian's
      # python3 imports `venv` and `ensurepip` without python3-venv, yet
      # cannot make a virtualenv: try one.
      locara_can_make_venv || pkgs+=(python3-venv)
      if [ ${#pkgs[@]} -gt 0 ]; then
        # One name once (clang may be asked for twice).
        read -r -a pkgs <<<"$(printf '%s\n' "${pkgs[@]}" | sort -u | tr '\n' ' ')"
        if command -v apt-get >/dev/null 2>&1; then
          local sudo=""
          [ "$(id -u)" -eq 0 ] || sudo="sudo"
          echo "installing ${pkgs[*]} ..." >&2
          $sudo apt-get update -qq
          DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null
        else
          echo "Missing, please install with your package manager: ${pkgs[*]}" >&2
          exit 1
        fi
      fi
      if ! command -v cargo >/dev/null 2>&1; then
        echo "Missing: a Rust toolchain (https://rustup.rs)" >&2
        exit 1
      fi
      ;;
    *)
      echo "Locara runs on macOS (Apple Silicon) and Linux; this is $(uname -s)." >&2
      exit 1
      ;;
  esac
}

# What only the test suite needs, beyond the build: systemd-analyze (the
# service unit is verified with it), shellcheck (the scripts are linted),
# tmux and chromium (`locara top` and the web page, driven for real).
# Installed on Debian; elsewhere the tests that need them say they skipped.
locara_need_test_deps() {
  [ "$(uname -s)" = Linux ] || return 0
  command -v apt-get >/dev/null 2>&1 || return 0
  local pkgs=()
  command -v systemd-analyze >/dev/null 2>&1 || pkgs+=(systemd)
  command -v shellcheck >/dev/null 2>&1 || pkgs+=(shellcheck)
  # `locara top` runs in a real terminal (crates/locara/tests/top.rs); the
  # daemon's web page in a headless browser (crates/locara/tests/web.rs).
  command -v tmux >/dev/null 2>&1 || pkgs+=(tmux)
  command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
  [ ${#pkgs[@]} -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${pkgs[*]} (for the tests) ..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null
}
