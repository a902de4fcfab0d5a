#!/usr/bin/env bash
# Runs the README's first command, `./scripts/run.sh`, on a bare Debian: a
# debootstrap minbase root that has nothing but the Rust toolchain. The CI
# machine itself already has every build dependency, so only a root like this
# shows what scripts/deps.sh forgot to install. It must install its own build
# dependencies, build the release binary, pull the default model into an
# empty data directory and answer a prompt given on stdin.
#
# Needs root (debootstrap, mount, chroot). Everything lives in one directory
# under /var/tmp (same disk as the repository on CI; /tmp may be a small
# tmpfs) and is removed at the end, on failure too.
set -euo pipefail

prompt="Say hello in five words."
# The root is about 2 GiB once deps.sh has installed its packages; the
# crates, the release build of llama.cpp and the model come on top.
need_free_gib=8

# The host's toolchain, shown read-only inside: the root must not be able to
# change it, and its downloads go to a fresh CARGO_HOME inside the root.
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
cargo="$(command -v cargo || true)"
cargo_bin="${cargo%/*}"

log() { echo "bare-root: $*" >&2; }

# A bind mount ignores `ro` when it is made; only a remount applies it.
ro_bind() {
  mount --bind "$1" "$2"
  mount -o remount,bind,ro "$2"
}

# The part that runs in its own mount and PID namespaces (see below): every
# mount made here and every process started in the root end with it.
if [ "${1:-}" = "--enter" ]; then
  fs="$2"
  shift 2
  mount -t proc -o nosuid,nodev,noexec proc "$fs/proc"
  # Read-only: the build and `locara run` read CPU and memory facts from
  # it, and nothing in the root has a reason to change the host's settings.
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$fs/sys"
  # debootstrap makes the static /dev nodes (null, zero, random, tty, ptmx)
  # and that is all the build needs; apt also wants a pty for its log and
  # prints an error line without one.
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$fs/dev/pts"
  ro_bind "$rustup_home" "$fs/root/.rustup"
  ro_bind "$cargo_bin" "$fs/root/.cargo/bin"
  exec chroot "$fs" /usr/bin/env -i \
    HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUSTUP_HOME=/root/.rustup CARGO_HOME=/root/.cargo \
    "$@"
fi

# The first deb source for the host's own suite, from one-line (*.list) and
# deb822 (*.sources) files: the root uses the mirror the host is allowed to
# reach.
find_mirror() {
  local suite="$1" f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v s="$suite" '
      { sub(/#.*/, "") }
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == s) { print $i; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v s="$suite" '
      function flush(  u) {
        if (enabled != "no" && index(" " types " ", " deb ") &&
            index(" " suites " ", " " s " ") && split(uris, u, " ") > 0) {
          print u[1]
          exit
        }
        types = suites = uris = enabled = key = ""
      }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      {
        if ($0 ~ /^[ \t]/) { val = $0; sub(/^[ \t]+/, "", val); val = " " val }
        else {
          key = tolower($0); sub(/:.*/, "", key)
          val = $0; sub(/^[^:]*:[ \t]*/, "", val)
          if (key == "types") types = ""
          else if (key == "suites") suites = ""
          else if (key == "uris") uris = ""
        }
        gsub(/\t/, " ", val)
        if (key == "types") types = types val
        else if (key == "suites") suites = suites val
        else if (key == "uris") uris = uris val
        else if (key == "enabled") enabled = tolower(val)
      }
      END { flush() }' "$f"
  done | head -n 1
}

# Writes the CAs the host trusts beyond the ca-certificates package (a TLS
# inspecting proxy's, a local registry's) as local CAs of the root. They are
# part of the network, like resolv.conf, and only take effect when the
# ca-certificates package is installed: a root whose deps.sh does not get it
# there still has no trust store.
copy_extra_cas() {
  local dest="$1" bundle=/etc/ssl/certs/ca-certificates.crt
  [ -f "$bundle" ] && [ -d /usr/share/ca-certificates ] || return 0
  mkdir -p "$dest"
  # The package's certificates come first, on stdin, then the host's bundle.
  find /usr/share/ca-certificates -name '*.crt' -exec awk 1 {} + |
    awk -v bundle="$bundle" -v dest="$dest" '
      FNR == 1 { host = (FILENAME == bundle) }
      /-----BEGIN CERTIFICATE-----/ { pem = ""; body = "" }
      { pem = pem $0 "\n"; if ($0 !~ /^-----/) body = body $0 }
      /-----END CERTIFICATE-----/ {
        if (!host) known[body] = 1
        else if (!(body in known)) printf "%s", pem > (dest "/host-" ++n ".crt")
      }' - "$bundle"
  log "host CAs beyond the ca-certificates package: $(find "$dest" -name 'host-*.crt' | wc -l)"
}

[ "$(id -u)" -eq 0 ] || { log "needs root"; exit 1; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
script="$repo/.ci/bare-root.sh"
# shellcheck source=/dev/null
suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
[ -n "$suite" ] || { log "no VERSION_CODENAME in /etc/os-release"; exit 1; }
mirror="$(find_mirror "$suite")"
[ -n "$mirror" ] || { log "no deb source for $suite in apt's sources"; exit 1; }
[ -n "$cargo" ] || { log "no cargo on PATH"; exit 1; }
[ -d "$rustup_home/toolchains" ] || { log "no rustup toolchains in $rustup_home"; exit 1; }
free_gib=$(($(df -Pk /var/tmp | awk 'NR == 2 { print $4 }') / 1024 / 1024))
if [ "$free_gib" -lt "$need_free_gib" ]; then
  log "only ${free_gib} GiB free under /var/tmp, need ${need_free_gib}"
  exit 1
fi

start=$EPOCHSECONDS
tmp="" fs="" inner="" watcher=""
t_deboot="" t_run="" t_end="" b0="" b1=""

# Mounts made under the working directory as the kernel lists them, deepest
# first so that each can go.
mounts_under() {
  awk -v p="$1/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r
}

# True while a process still runs inside the root.
in_root() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$fs" ] && return 0
  done
  return 1
}

report() {
  local now=$EPOCHSECONDS
  row() { printf '  %-14s %6s s\n' "$1" "${2:--}" >&2; }
  echo "bare-root timings:" >&2
  row debootstrap "${t_deboot:+$((t_deboot - start))}"
  # The phases of the one run.sh command, split where cargo starts (its
  # registry or target directory appears) and where the binary appears.
  if [ -n "$t_run" ]; then
    row "deps install" "$((${b0:-${t_end:-$now}} - t_run))"
    [ -n "$b0" ] && row build "$((${b1:-${t_end:-$now}} - b0))"
    [ -n "$b1" ] && row "pull + answer" "$((${t_end:-$now} - b1))"
  fi
  row total "$((now - start))"
}

cleanup() {
  local rc=$? m
  set +e
  [ -n "$watcher" ] && kill "$watcher" 2>/dev/null && wait "$watcher" 2>/dev/null
  # unshare passes SIGTERM on to the namespace's init, which ignores it;
  # killed, it takes the whole namespace down with it (--kill-child).
  if [ -n "$inner" ]; then
    kill -KILL "$inner" 2>/dev/null
    wait "$inner" 2>/dev/null
    for _ in {1..50}; do in_root || break; sleep 0.2; done
  fi
  if [ -n "$tmp" ]; then
    [ -f "$tmp/build-start" ] && b0=$(<"$tmp/build-start")
    [ -f "$tmp/build-end" ] && b1=$(<"$tmp/build-end")
    # The mounts live in the namespace and went with it; these would only be
    # left if it could not be made private.
    for m in $(mounts_under "$tmp"); do
      umount "$m" 2>/dev/null || umount -l "$m"
    done
    if [ -n "$(mounts_under "$tmp")" ]; then
      log "mounts remain under $tmp, not removing it"
    else
      rm -rf --one-file-system "$tmp"
    fi
    report
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

tmp="$(mktemp -d /var/tmp/locara-bare.XXXXXX)"
fs="$tmp/root"
log "debootstrap --variant=minbase $suite $fs $mirror"
if ! debootstrap --variant=minbase "$suite" "$fs" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
  tail -n 30 "$tmp/debootstrap.log" >&2
  exit 1
fi
t_deboot=$EPOCHSECONDS

cp /etc/resolv.conf "$fs/etc/resolv.conf"
copy_extra_cas "$fs/usr/local/share/ca-certificates"
mkdir -p "$fs/root/.rustup" "$fs/root/.cargo/bin" "$fs/src"
# The tracked files as they are in the work tree and the untracked ones git
# does not ignore: a local run tests the change in progress, and the fresh
# root gets no target/ to reuse.
(
  cd "$repo"
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do
      if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
    done |
    tar --null -T - -cf -
) | tar -xf - -C "$fs/src"

watch_phases() {
  until [ -e "$fs/src/target" ] || [ -e "$fs/root/.cargo/registry" ]; do sleep 1; done
  echo "$EPOCHSECONDS" >"$tmp/build-start"
  until [ -e "$fs/src/target/release/locara" ]; do sleep 1; done
  echo "$EPOCHSECONDS" >"$tmp/build-end"
}

log "running ./scripts/run.sh in the root"
t_run=$EPOCHSECONDS
watch_phases &
watcher=$!
# Backgrounded and waited for so that a signal reaches the trap at once. The
# prompt is expanded by the shell inside the root.
# shellcheck disable=SC2016
unshare --mount --pid --fork --kill-child --propagation private \
  "$BASH" "$script" --enter "$fs" \
  bash -c 'cargo --version >&2 && cd /src && echo "$1" | ./scripts/run.sh' _ "$prompt" \
  >"$tmp/answer" &
inner=$!
rc=0
wait "$inner" || rc=$?
inner=""
t_end=$EPOCHSECONDS

echo "--- answer ---"
cat "$tmp/answer"
echo "--------------"
if [ "$rc" -ne 0 ]; then
  log "./scripts/run.sh exited with $rc"
  exit 1
fi
if ! grep -q '[^[:space:]]' "$tmp/answer"; then
  log "./scripts/run.sh printed no answer"
  exit 1
fi
log "the README's first command works on a bare $suite"
