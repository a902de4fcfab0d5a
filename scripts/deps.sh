#!/usr/bin/env bash
# Installs (Debian) or names (elsewhere) what building Locara needs:
# a Rust toolchain, cmake, a C/C++ compiler and libclang (llama.cpp and its
# bindings), and python3 with pip (model pulls locate wheels through pip).
# Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail

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
      { command -v clang >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1; } || pkgs+=(clang)
      # bindgen needs libclang itself, not just a compiler.
      if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
        pkgs+=(libclang-dev clang)
      fi
      # Downloads use the system's TLS stack (OpenSSL).
      pkg-config --exists openssl 2>/dev/null || pkgs+=(libssl-dev pkg-config)
      command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
      python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
      # The test suite makes a virtualenv for the openai client.
      python3 -c "import venv, ensurepip" >/dev/null 2>&1 || pkgs+=(python3-venv)
      if [ ${#pkgs[@]} -gt 0 ]; then
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
