#!/usr/bin/env bash
# Acceptance on an Apple Silicon Mac: the checks that need macOS itself,
# which CI on Linux cannot make. Run it from a checkout, as yourself (not
# with sudo): ./scripts/mac-acceptance.sh
#
# It builds the release binary, pulls the two test models into a temporary
# data directory, runs one chat, starts a daemon and loads both models, then
#   * compares each worker's footprint as macOS's footprint(1) reads it with
#     the one `locara ps --json` reports;
#   * simulates memory pressure with `memory_pressure -S` (warn, then
#     critical; this needs root, so sudo asks for your password) and checks
#     that the daemon's pressure level rose and that at critical it unloaded
#     every model that was not generating;
#   * checks that iogpu.wired_limit_mb (the GPU wired-memory limit, which
#     Locara reads and must never write) is the same after the run as before.
# It prints one row per check and exits non-zero if any failed. The daemon
# is stopped and the temporary directory removed however the script ends.
#
# Settings (environment):
#   LOCARA_ACCEPTANCE_HOLD=20  seconds memory_pressure holds each level
#   LOCARA_ACCEPTANCE_KEEP=1   keep the temporary directory (logs, outputs)
#   LOCARA_ACCEPTANCE_LIB=1    when sourced: define the parsers, run nothing
#
# The parsers of the tools' output are in scripts/lib/mac-parse.sh, tested on
# Linux against hand-written samples (scripts/tests/samples/). If a check
# says it "could not read" a tool's output, please report that output.

# shellcheck source=scripts/lib/mac-parse.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/mac-parse.sh"
if [ "${LOCARA_ACCEPTANCE_LIB:-}" = 1 ]; then
  # shellcheck disable=SC2317  # reached only when the file is executed
  return 0 2>/dev/null || exit 0
fi

# macOS's /bin/bash is 3.2: no associative arrays, no mapfile, and an empty
# array is "unbound" under set -u, hence the ${a[@]+"${a[@]}"} below.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS="smollm2:135m gemma3:270m"
HOLD="${LOCARA_ACCEPTANCE_HOLD:-20}"
LOCARA=target/release/locara

# ------------------------------------------------------------------ results

ROW_NAMES=()
ROW_RESULTS=()
ROW_DETAILS=()
TABLE_PRINTED=0

record() {
  ROW_NAMES+=("$1")
  ROW_RESULTS+=("$2")
  ROW_DETAILS+=("$3")
  printf '%s  %s: %s\n' "$2" "$1" "$3" >&2
}

failures() {
  local n=0 r
  for r in ${ROW_RESULTS[@]+"${ROW_RESULTS[@]}"}; do
    [ "$r" = PASS ] || n=$((n + 1))
  done
  echo "$n"
}

print_table() {
  local i
  TABLE_PRINTED=1
  echo
  printf '%-36s %-6s %s\n' CHECK RESULT FIGURES
  printf '%-36s %-6s %s\n' ----- ------ -------
  for ((i = 0; i < ${#ROW_NAMES[@]}; i++)); do
    printf '%-36s %-6s %s\n' "${ROW_NAMES[$i]}" "${ROW_RESULTS[$i]}" "${ROW_DETAILS[$i]}"
  done
  echo
  if [ "$(failures)" -eq 0 ]; then
    echo "all ${#ROW_NAMES[@]} checks passed"
  else
    echo "$(failures) of ${#ROW_NAMES[@]} checks did not pass"
  fi
}

say() { printf '==> %s\n' "$*" >&2; }

# Runs a command for at most $1 seconds. macOS has no timeout(1); perl,
# which it ships, keeps an alarm across exec, so the command itself gets
# SIGALRM (exit status 142) when time is up.
with_timeout() {
  local secs="$1"
  shift
  if command -v perl >/dev/null 2>&1; then
    perl -e 'alarm shift @ARGV; exec @ARGV or die "exec $ARGV[0]: $!\n"' "$secs" "$@"
  else
    "$@"
  fi
}

alive() { kill -0 "$1" 2>/dev/null; }

# True when pid $1 is still one of our locara processes (not a reused pid).
is_locara() {
  local cmd
  cmd="$(ps -p "$1" -o command= 2>/dev/null)" || return 1
  [[ "$cmd" == *locara* ]]
}

# ------------------------------------------------------------------ cleanup

TMP=""
DAEMON_PID=""
WORKER_PIDS=()
MP_PID=""
MP=()

stop_daemon() {
  local i
  [ -n "$DAEMON_PID" ] || return 0
  if alive "$DAEMON_PID"; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
      alive "$DAEMON_PID" || break
      sleep 0.5
    done
    if alive "$DAEMON_PID"; then
      kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
  fi
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=""
}

cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  # A simulation cut short never resets the system's level itself: end it,
  # then put the level back to normal.
  if [ -n "$MP_PID" ] && alive "$MP_PID"; then
    kill -TERM "$MP_PID" 2>/dev/null || true
    wait "$MP_PID" 2>/dev/null || true
    if [ ${#MP[@]} -gt 0 ]; then
      "${MP[@]}" -S -l normal -s 1 >/dev/null 2>&1 || true
    fi
  fi
  stop_daemon
  for pid in ${WORKER_PIDS[@]+"${WORKER_PIDS[@]}"}; do
    if alive "$pid" && is_locara "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [ "$TABLE_PRINTED" = 0 ] && [ ${#ROW_NAMES[@]} -gt 0 ]; then
    record "run" FAIL "interrupted or stopped early (exit status $status)"
    print_table
  fi
  if [ -n "$TMP" ] && [ -d "$TMP" ]; then
    if [ "${LOCARA_ACCEPTANCE_KEEP:-}" = 1 ]; then
      echo "kept $TMP (logs: serve.err, run.out, footprint-*.txt, memory-pressure-*.txt)"
    else
      if [ "$(failures)" -gt 0 ] && [ -s "$TMP/serve.err" ]; then
        echo "--- the daemon's log (last 30 lines; LOCARA_ACCEPTANCE_KEEP=1 keeps it all)"
        tail -n 30 "$TMP/serve.err"
      fi
      rm -rf "$TMP"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ steps

locara_status() { with_timeout 30 "$LOCARA" ps --json 2>/dev/null; }

# sysctl's exit status is not consulted: under pipefail a failing sysctl
# would add "absent" after a figure the parser did print.
wired_limit_now() {
  local text
  text="$(sysctl -n iogpu.wired_limit_mb 2>&1)" || true
  parse_wired_limit <<<"$text" || echo absent
}

kernel_level_now() {
  local text
  text="$(sysctl -n kern.memorystatus_vm_pressure_level 2>/dev/null)" || true
  parse_kernel_pressure_level <<<"$text" || echo "?"
}

# Sets MP to how memory_pressure runs as root: itself when this is root,
# else through sudo (asking for the password when there is a terminal).
find_root_runner() {
  MP=()
  if [ "$(id -u)" -eq 0 ]; then
    MP=(memory_pressure)
  elif command -v sudo >/dev/null 2>&1; then
    if sudo -n true 2>/dev/null; then
      MP=(sudo -n memory_pressure)
    elif [ -t 0 ]; then
      say "memory_pressure -S needs root: sudo asks for your password"
      if sudo -v; then
        MP=(sudo -n memory_pressure)
      fi
    fi
  fi
}

check_build() {
  say "building (cargo build --release -p locara)"
  # shellcheck source=scripts/deps.sh
  source scripts/deps.sh
  locara_need_deps
  if cargo build --release -p locara; then
    record "build" PASS "cargo build --release -p locara; $("$LOCARA" --version 2>/dev/null || echo '?')"
  else
    record "build" FAIL "cargo build --release -p locara failed (output above)"
    return 1
  fi
}

check_pulls() {
  local model ok=0
  for model in $MODELS; do
    say "pulling $model into the temporary data directory"
    if with_timeout 1800 "$LOCARA" pull "$model"; then
      record "pull $model" PASS "into $LOCARA_HOME"
    else
      record "pull $model" FAIL "locara pull $model failed (output above)"
      ok=1
    fi
  done
  return "$ok"
}

check_chat() {
  local answer words
  say "one chat: locara run"
  if with_timeout 300 "$LOCARA" run smollm2:135m "Name three colours of the rainbow." \
    --temperature 0 --max-tokens 48 </dev/null >"$TMP/run.out" 2>"$TMP/run.err"; then
    answer="$(tr -s '[:space:]' ' ' <"$TMP/run.out" | sed 's/^ //; s/ $//')"
    words="$(wc -w <"$TMP/run.out" | tr -d ' ')"
    if [ -n "$answer" ]; then
      record "chat (locara run)" PASS "$words words: \"${answer:0:60}\""
    else
      record "chat (locara run)" FAIL "exit status 0 but no answer on stdout"
    fi
  else
    record "chat (locara run)" FAIL "exit status $?: $(tail -n 1 "$TMP/run.err" 2>/dev/null)"
  fi
}

check_daemon_starts() {
  local i addr="" from_file=""
  say "starting the daemon: locara serve --port 0 --keep-alive -1"
  # keep_alive -1 pins the models: warn then leaves them loaded (it unloads
  # only unpinned idle ones), so critical has two models to shed, and
  # shedding them proves that critical overrides pins.
  "$LOCARA" serve --port 0 --keep-alive -1 >"$TMP/serve.out" 2>"$TMP/serve.err" &
  DAEMON_PID=$!
  for ((i = 0; i < 120; i++)); do
    addr="$(head -n 1 "$TMP/serve.out" 2>/dev/null | parse_listen_address)" && break
    alive "$DAEMON_PID" || break
    sleep 0.25
  done
  if [ -z "$addr" ]; then
    record "daemon starts" FAIL "no 'listening on' line in 30 s: $(tail -n 1 "$TMP/serve.err" 2>/dev/null)"
    return 1
  fi
  from_file="$(parse_daemon_json_address <"$LOCARA_HOME/daemon.json" 2>/dev/null)" || from_file="absent"
  if [ "$from_file" = "$addr" ] && [ -s "$LOCARA_HOME/admin.token" ]; then
    record "daemon starts" PASS "listening on $addr (pid $DAEMON_PID); daemon.json agrees"
  else
    record "daemon starts" FAIL "stdout says $addr, daemon.json says $from_file, admin.token $([ -s "$LOCARA_HOME/admin.token" ] && echo present || echo missing)"
    return 1
  fi
}

check_loads() {
  local model out
  for model in $MODELS; do
    say "locara load $model"
    if out="$(with_timeout 300 "$LOCARA" load "$model" 2>&1)"; then
      record "load $model" PASS "$out"
    else
      record "load $model" FAIL "$(echo "$out" | tail -n 1)"
    fi
  done
}

# footprint(1) of one worker, in bytes; its text is kept in
# $TMP/footprint-PID.txt. Byte counts first (-f bytes: no rounding), then the
# default human-readable form in case this macOS lacks -f.
footprint_of() {
  local pid="$1" file="$TMP/footprint-$1.txt"
  footprint -f bytes -p "$pid" >"$file" 2>&1 || true
  parse_footprint_bytes <"$file" && return 0
  footprint -p "$pid" >"$file" 2>&1 || true
  parse_footprint_bytes <"$file" && return 0
  # footprint needs root for processes it may not inspect as this user.
  local text
  if [ "$(id -u)" -ne 0 ] && sudo -n true 2>/dev/null; then
    text="$(sudo -n footprint -p "$pid" 2>&1)" || true
    printf '%s\n' "$text" >"$file"
    parse_footprint_bytes <"$file" && return 0
  fi
  return 1
}

check_footprints() {
  local status model line name pid state measured reported diff allowed found
  if ! command -v footprint >/dev/null 2>&1; then
    for model in $MODELS; do
      record "footprint $model" FAIL "footprint(1) not found (it comes with macOS)"
    done
    return 0
  fi
  status="$(locara_status)" || status=""
  for model in $MODELS; do
    found=""
    while read -r name pid state _; do
      [ "$name" = "$model" ] && found="$pid $state"
    done < <(parse_ps_json_models <<<"$status" 2>/dev/null || true)
    pid="${found%% *}"
    state="${found#* }"
    if [ -z "$found" ] || [ "$pid" = "-" ]; then
      record "footprint $model" FAIL "not loaded, or no worker pid in locara ps --json"
      continue
    fi
    WORKER_PIDS+=("$pid")
    say "footprint -p $pid ($model)"
    if ! measured="$(footprint_of "$pid")"; then
      record "footprint $model" FAIL "could not read footprint(1)'s figure for pid $pid; its output: $(head -n 3 "$TMP/footprint-$pid.txt" | tr '\n' ' ')"
      echo "footprint(1) printed (please report this if it is not an error):" >&2
      cat "$TMP/footprint-$pid.txt" >&2
      continue
    fi
    # Locara's figure right after footprint's: an idle worker holds still.
    if ! reported="$(locara_status | parse_ps_json_footprint "$pid")"; then
      record "footprint $model" FAIL "locara ps --json has no footprint for pid $pid (state $state)"
      continue
    fi
    diff=$((measured - reported))
    [ "$diff" -lt 0 ] && diff=$((-diff))
    allowed="$(footprint_tolerance "$measured")"
    if footprint_within_tolerance "$measured" "$reported"; then
      record "footprint $model" PASS "pid $pid: footprint(1) $(human_bytes "$measured"), locara $(human_bytes "$reported"), off by $(human_bytes "$diff") (allowed $(human_bytes "$allowed"))"
    else
      record "footprint $model" FAIL "pid $pid: footprint(1) $(human_bytes "$measured"), locara $(human_bytes "$reported"), off by $(human_bytes "$diff") (allowed $(human_bytes "$allowed"))"
    fi
  done
}

# Loaded models now, as "name pid" lines.
loaded_models() {
  locara_status | parse_ps_json_models 2>/dev/null | awk '$3 == "loaded" { print $1, $2 }'
}

# Simulates pressure $1 for $HOLD seconds and watches the daemon meanwhile.
# Sets SEEN_LEVEL (highest level in force), SEEN_REFUSING (true when loads
# were refused at some point), OS_SEEN (highest kernel level), IDLE_LEFT
# (idle models when the watch ended), MP_RESULT and MP_FREE.
SEEN_LEVEL=normal
SEEN_REFUSING=false
OS_SEEN=normal
IDLE_LEFT="?"
MP_RESULT=""
MP_FREE="?"
simulate() {
  local level="$1" out="$TMP/memory-pressure-$1.txt" deadline status p now kernel
  SEEN_LEVEL=normal
  SEEN_REFUSING=false
  OS_SEEN=normal
  IDLE_LEFT="?"
  say "memory_pressure -S -l $level -s $HOLD"
  "${MP[@]}" -S -l "$level" -s "$HOLD" >"$out" 2>&1 &
  MP_PID=$!
  deadline=$((SECONDS + HOLD + 10))
  while [ "$SECONDS" -lt "$deadline" ]; do
    status="$(locara_status)" || status=""
    if p="$(parse_ps_json_pressure <<<"$status")"; then
      now="${p%% *}"
      if [ "$(pressure_rank "$now")" -gt "$(pressure_rank "$SEEN_LEVEL")" ]; then
        SEEN_LEVEL="$now"
      fi
      [ "${p##* }" = true ] && SEEN_REFUSING=true
      IDLE_LEFT="$(parse_ps_json_idle <<<"$status")" || IDLE_LEFT="?"
    fi
    kernel="$(kernel_level_now)"
    if [ "$kernel" != "?" ] && [ "$(pressure_rank "$kernel")" -gt "$(pressure_rank "$OS_SEEN")" ]; then
      OS_SEEN="$kernel"
    fi
    if [ "$level" = warn ] && [ "$SEEN_LEVEL" != normal ]; then
      break
    fi
    if [ "$level" = critical ] && [ "$SEEN_LEVEL" = critical ] && [ "$IDLE_LEFT" = "-" ]; then
      break
    fi
    # The tool gave up at once (not root, or a usage error): stop watching.
    if ! alive "$MP_PID"; then
      case "$(parse_memory_pressure_result <"$out" 2>/dev/null)" in
        denied | failed | "") break ;;
      esac
    fi
    sleep 0.5
  done
  # Let the tool hold the level out and reset it: the next step starts from
  # the OS's own level.
  wait "$MP_PID" 2>/dev/null || true
  MP_PID=""
  MP_RESULT="$(parse_memory_pressure_result <"$out")" || MP_RESULT="unreadable"
  MP_FREE="$(parse_memory_free_percent <"$out")" || MP_FREE="?"
  if [ "$MP_RESULT" = unreadable ]; then
    echo "memory_pressure printed (please report this if it is not an error):" >&2
    cat "$out" >&2
  fi
}

check_pressure() {
  local before line name pid model mp_note idle_before workers_left pids_before=()
  if ! command -v memory_pressure >/dev/null 2>&1; then
    record "pressure warn" FAIL "memory_pressure not found (it comes with macOS)"
    record "pressure critical" FAIL "memory_pressure not found"
    record "critical sheds idle models" FAIL "not run"
    return 0
  fi
  find_root_runner
  if [ ${#MP[@]} -eq 0 ]; then
    local why="memory_pressure -S needs root, and sudo could not ask for a password (no terminal, or no sudo): run the script from a terminal"
    record "pressure warn" FAIL "$why"
    record "pressure critical" FAIL "$why"
    record "critical sheds idle models" FAIL "not run"
    return 0
  fi
  before="$(locara_status | parse_ps_json_pressure)" || before="? ? ? ?"
  before="${before%% *}"

  simulate warn
  mp_note="memory_pressure: $MP_RESULT, memory free ${MP_FREE}%; kernel level seen: $OS_SEEN"
  if [ "$MP_RESULT" = denied ]; then
    local denied="memory_pressure was refused the trigger sysctl: it needs root (sudo)"
    record "pressure warn" FAIL "$denied"
    record "pressure critical" FAIL "$denied"
    record "critical sheds idle models" FAIL "not run"
    return 0
  elif [ "$(pressure_rank "$SEEN_LEVEL")" -ge 1 ]; then
    record "pressure warn" PASS "daemon level $before -> $SEEN_LEVEL; $mp_note"
  else
    record "pressure warn" FAIL "daemon level stayed $SEEN_LEVEL (was $before); $mp_note"
  fi

  # Both models are pinned, so warn should have left them; load any that
  # went, so that critical has something to shed.
  for model in $MODELS; do
    if ! loaded_models | awk -v m="$model" '$1 == m { found = 1 } END { exit !found }'; then
      say "reloading $model before critical"
      with_timeout 300 "$LOCARA" load "$model" >/dev/null 2>&1 || true
    fi
  done
  idle_before="$(locara_status | parse_ps_json_idle)" || idle_before="?"
  while read -r name pid; do
    [ "$pid" = "-" ] && continue
    pids_before+=("$pid")
    WORKER_PIDS+=("$pid")
  done < <(loaded_models)

  simulate critical
  mp_note="memory_pressure: $MP_RESULT, memory free ${MP_FREE}%; kernel level seen: $OS_SEEN"
  if [ "$MP_RESULT" = denied ]; then
    record "pressure critical" FAIL "memory_pressure was refused the trigger sysctl: it needs root (sudo)"
  elif [ "$SEEN_LEVEL" = critical ] && [ "$SEEN_REFUSING" = true ]; then
    record "pressure critical" PASS "daemon level -> critical, new loads refused; $mp_note"
  else
    record "pressure critical" FAIL "daemon level reached $SEEN_LEVEL, loads refused: $SEEN_REFUSING; $mp_note"
  fi

  # Unloading ends a worker: its pid must be gone, so the OS has every page.
  workers_left=""
  for pid in ${pids_before[@]+"${pids_before[@]}"}; do
    if alive "$pid" && is_locara "$pid"; then
      workers_left="$workers_left $pid"
    fi
  done
  if [ "$idle_before" = "-" ] || [ "$idle_before" = "?" ]; then
    record "critical sheds idle models" FAIL "no idle model was loaded before critical (${idle_before}), so nothing could be shed"
  elif [ "$IDLE_LEFT" = "-" ] && [ -z "$workers_left" ]; then
    record "critical sheds idle models" PASS "idle before: $idle_before; after: none; their workers (pids ${pids_before[*]:-none}) exited"
  else
    record "critical sheds idle models" FAIL "idle before: $idle_before; after: $IDLE_LEFT; workers still running:${workers_left:- none}"
  fi
}

check_daemon_stops() {
  local pid i
  say "stopping the daemon"
  pid="$DAEMON_PID"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do
    alive "$pid" || break
    sleep 0.5
  done
  if alive "$pid"; then
    stop_daemon
    record "daemon stops on SIGTERM" FAIL "still running 20 s after SIGTERM (killed)"
  else
    wait "$pid" 2>/dev/null || true
    DAEMON_PID=""
    record "daemon stops on SIGTERM" PASS "stopped within $(((i + 1) / 2)) s"
  fi
}

# ------------------------------------------------------------------ main

main() {
  local wired_before wired_after
  if [ "$(uname -s)" != Darwin ] || [ "$(uname -m)" != arm64 ]; then
    echo "This acceptance script is for Apple Silicon Macs (this is $(uname -s) $(uname -m))." >&2
    echo "On Linux, scripts/test.sh runs the test suite." >&2
    exit 2
  fi
  if [ "$(id -u)" -eq 0 ]; then
    say "running as root: the build's files in target/ will belong to root; running as yourself is better (sudo is asked for when needed)"
  fi
  # Set before anything runs, compared at the very end.
  wired_before="$(wired_limit_now)"

  # A daemon or settings of the person's own must not take part.
  unset LOCARA_URL LOCARA_TOKEN LOCARA_HOST LOCARA_PORT LOCARA_BUDGET LOCARA_KEEP_ALIVE \
    LOCARA_PARALLEL LOCARA_CONTEXT LOCARA_KV_TYPE LOCARA_CATALOG LOCARA_MEM_TEST_STAND_IN
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/locara-acceptance.XXXXXX")"
  export LOCARA_HOME="$TMP/home"
  mkdir -p "$LOCARA_HOME"

  say "the pressure checks use memory_pressure -S, which needs root: sudo will ask for your password then"
  if ! check_build; then
    print_table
    exit 1
  fi
  if check_pulls; then
    check_chat
    if check_daemon_starts; then
      check_loads
      check_footprints
      check_pressure
      check_daemon_stops
    fi
  fi

  wired_after="$(wired_limit_now)"
  if [ "$wired_before" = "$wired_after" ]; then
    record "iogpu.wired_limit_mb unchanged" PASS "before $wired_before, after $wired_after"
  else
    record "iogpu.wired_limit_mb unchanged" FAIL "before $wired_before, after $wired_after"
  fi

  print_table
  [ "$(failures)" -eq 0 ]
}

main
