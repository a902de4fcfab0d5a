# shellcheck shell=bash
# Parsers for scripts/mac-acceptance.sh. They read macOS tools' text output
# on stdin and print one plain value on stdout, so that
# scripts/tests/mac-parse.test.sh can run them on Linux against the samples
# in scripts/tests/samples/. Sourcing this file only defines functions.
#
# The samples were written by hand from the tools' documented and published
# formats (footprint(1), memory_pressure's source, sysctl(8)), not captured
# on a Mac. Each parser says what it accepts; when a Mac prints something
# else, the acceptance script reports "could not read ..." with the text it
# got: please report that text so the parser and a sample can be fixed.
#
# Every parser returns non-zero and prints nothing when it finds no value, so
# a caller can tell "absent" from "0".

# A figure as printed by footprint(1) or a person, "118 MB", "1.5 GB",
# "16384", "1,234 KB", as bytes. Units count in 1024s: footprint's
# human-readable figures are binary (its "16384 bytes per page" header, and
# KB/MB/GB steps of 1024 in its tables). No unit, "B" or "bytes": bytes.
to_bytes() {
  local number="${1//,/}" unit="${2:-B}"
  local mult
  case "$unit" in
    B | b | byte | bytes) mult=1 ;;
    K | KB | KiB | k | kB) mult=1024 ;;
    M | MB | MiB) mult=1048576 ;;
    G | GB | GiB) mult=1073741824 ;;
    T | TB | TiB) mult=1099511627776 ;;
    *) return 1 ;;
  esac
  [[ "$number" =~ ^[0-9]+(\.[0-9]+)?$ ]] || return 1
  # awk for the fraction; %.0f keeps integers exact up to 2^53 bytes.
  awk -v n="$number" -v m="$mult" 'BEGIN { printf "%.0f\n", n * m }'
}

# `footprint -p PID` (or `footprint -f bytes -p PID`) output -> the
# process's footprint in bytes.
#
# Takes the figure after "Footprint:" on the header line
#   locara [12345]: 64-bit    Footprint: 118 MB (16384 bytes per page)
# which is footprint's own tally of the process's dirty, swapped and
# compressed memory: an independent reading of what the kernel charges, the
# thing the acceptance check wants to compare with Locara's figure (which
# comes from proc_pid_rusage's ri_phys_footprint). When no header carries a
# figure (a format change, or a trimmed paste), falls back to the
# "phys_footprint:" line of the "Auxiliary data" section, which footprint
# copies from the kernel ("phys_footprint_peak:" is not it). `footprint -j`
# JSON is not read: its schema is undocumented, and the text carries the
# same figure. With several processes in the output, the first header wins:
# the script asks for one pid at a time.
parse_footprint_bytes() {
  local line header="" aux=""
  while IFS= read -r line || [ -n "$line" ]; do
    if [ -z "$header" ] && [[ "$line" =~ Footprint:[[:space:]]*([0-9][0-9,]*(\.[0-9]+)?)[[:space:]]*([A-Za-z]+)? ]]; then
      header="$(to_bytes "${BASH_REMATCH[1]}" "${BASH_REMATCH[3]:-B}")" || header=""
    elif [ -z "$aux" ] && [[ "$line" =~ ^[[:space:]]*phys_footprint:[[:space:]]*([0-9][0-9,]*(\.[0-9]+)?)[[:space:]]*([A-Za-z]+)? ]]; then
      aux="$(to_bytes "${BASH_REMATCH[1]}" "${BASH_REMATCH[3]:-B}")" || aux=""
    fi
  done
  if [ -n "$header" ]; then
    echo "$header"
  elif [ -n "$aux" ]; then
    echo "$aux"
  else
    return 1
  fi
}

# `sysctl iogpu.wired_limit_mb` or `sysctl -n iogpu.wired_limit_mb` output
# -> the limit in MB (0: the system's default). Nothing and non-zero when the
# key is absent (older macOS names it debug.iogpu.wired_limit; "unknown oid").
parse_wired_limit() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ "$line" =~ ^[[:space:]]*(iogpu\.wired_limit_mb[[:space:]]*[:=][[:space:]]*)?([0-9]+)[[:space:]]*$ ]]; then
      echo "${BASH_REMATCH[2]}"
      return 0
    fi
  done
  return 1
}

# `sysctl kern.memorystatus_vm_pressure_level` (with or without -n) ->
# normal, warn or critical. The kernel's values are its
# NOTE_MEMORYSTATUS_PRESSURE_* flags: 1 normal, 2 warn, 4 critical.
parse_kernel_pressure_level() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ "$line" =~ ^[[:space:]]*(kern\.memorystatus_vm_pressure_level[[:space:]]*[:=][[:space:]]*)?([0-9]+)[[:space:]]*$ ]]; then
      case "${BASH_REMATCH[2]}" in
        1) echo normal ;;
        2) echo warn ;;
        4) echo critical ;;
        *) return 1 ;;
      esac
      return 0
    fi
  done
  return 1
}

# `memory_pressure -S -l LEVEL -s SECONDS` output (stdout and stderr
# together) -> how the simulation went:
#   reset    it set the level, held it, and reset the system ("Reset system
#            state");
#   holding  it set the level and is still holding it ("Waiting N seconds
#            before resetting system state", no reset yet);
#   denied   the kernel refused the trigger sysctl: not root
#            ("kern.memorypressure_manual_trigger failed ... not permitted");
#   failed   anything else that names a failure or a usage error.
# The tool prints no level of its own: whether the level was reached is read
# from the daemon and from kern.memorystatus_vm_pressure_level.
parse_memory_pressure_result() {
  local text
  text="$(cat)"
  if [[ "$text" == *"memorypressure_manual_trigger failed"* ]]; then
    if [[ "$text" == *"ot permitted"* || "$text" == *"ermission denied"* ]]; then
      echo denied
    else
      echo failed
    fi
  elif [[ "$text" == *"Reset system state"* ]]; then
    echo reset
  elif [[ "$text" =~ Waiting\ [0-9]+\ seconds\ before\ resetting ]]; then
    echo holding
  elif [[ "$text" == *"Incorrect level"* || "$text" == *"Expected level"* || "$text" == *"Usage:"* ]]; then
    echo failed
  else
    return 1
  fi
}

# The same output -> "System-wide memory free percentage", a number, shown
# in the table as context for the simulated level.
parse_memory_free_percent() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ "$line" =~ System-wide\ memory\ free\ percentage:\ *([0-9]+)% ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
  done
  return 1
}

# The first stdout line of `locara serve`, "listening on http://ADDRESS" ->
# ADDRESS (host:port).
parse_listen_address() {
  local line
  while IFS= read -r line || [ -n "$line" ]; do
    if [[ "$line" =~ ^listening\ on\ http://([^[:space:]/]+)/?[[:space:]]*$ ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
  done
  return 1
}

# JSON goes through python3: it comes with the Xcode command line tools,
# which building Locara needs anyway.

# daemon.json from the data directory -> its url's address (host:port).
parse_daemon_json_address() {
  python3 -c '
import json, sys
try:
    url = json.load(sys.stdin)["url"]
except Exception:
    sys.exit(1)
if not isinstance(url, str) or not url.startswith("http://"):
    sys.exit(1)
print(url[len("http://"):].rstrip("/"))
'
}

# `locara ps --json` -> the footprint in bytes that the daemon reports for
# the model whose worker has pid $1. Non-zero when no model has that pid or
# its footprint is not measured yet (null while loading).
parse_ps_json_footprint() {
  python3 -c '
import json, sys
try:
    status = json.load(sys.stdin)
    pid = int(sys.argv[1])
except Exception:
    sys.exit(1)
for m in status.get("models", []):
    if m.get("pid") == pid:
        f = m.get("footprint")
        if isinstance(f, int) and not isinstance(f, bool):
            print(f)
            sys.exit(0)
sys.exit(1)
' "$1"
}

# `locara ps --json` -> one line per model: NAME PID STATE BUSY, with "-"
# for a pid not known yet. Names never hold spaces (catalog names).
parse_ps_json_models() {
  python3 -c '
import json, sys
try:
    status = json.load(sys.stdin)
except Exception:
    sys.exit(1)
for m in status.get("models", []):
    pid = m.get("pid")
    print(m["name"], "-" if pid is None else pid, m["state"], m["sequences_busy"])
'
}

# `locara ps --json` -> "LEVEL REPORTED OS_LEVEL REFUSING_LOADS", e.g.
# "critical critical critical true". LEVEL is the level whose restrictions
# are in force; REPORTED the last one reported (by the OS or a
# simulation); OS_LEVEL the OS's own.
parse_ps_json_pressure() {
  python3 -c '
import json, sys
try:
    p = json.load(sys.stdin)["pressure"]
    print(p["level"], p["reported"], p["os_level"], "true" if p["refusing_loads"] else "false")
except Exception:
    sys.exit(1)
'
}

# `locara ps --json` -> the models held that are not generating (no busy
# sequence), comma-separated, or "-" for none. At critical, the ladder
# unloads every one of them; a model still loading counts, since it is not
# generating either.
parse_ps_json_idle() {
  python3 -c '
import json, sys
try:
    status = json.load(sys.stdin)
except Exception:
    sys.exit(1)
idle = [m["name"] for m in status.get("models", []) if m.get("sequences_busy", 0) == 0]
print(",".join(idle) if idle else "-")
'
}

# normal, warn, critical -> 0, 1, 2, so levels compare as numbers.
pressure_rank() {
  case "$1" in
    normal) echo 0 ;;
    warn) echo 1 ;;
    critical) echo 2 ;;
    *) return 1 ;;
  esac
}

# The difference allowed between footprint(1)'s figure ($1, bytes) and
# Locara's (bytes): 10 % of the footprint, at least 8 MiB. The two readings
# are seconds apart (an idle worker's K/V pool may shrink in between), come
# from two tallies (footprint walks the regions; Locara reads the kernel's
# phys_footprint ledger, which counts page tables and GPU allocations in its
# own way), and footprint's human-readable figure is rounded (to 0.1 GB
# above 1 GB). 10 % still catches the errors that matter: reporting RSS or
# mapped weights as footprint, or missing the Metal buffers, is off by far
# more. The 8 MiB floor is for small workers (SmolLM2's is tens of MiB),
# where 10 % is less than the allocator's and page tables' jitter.
footprint_tolerance() {
  local measured="$1" tenth floor=$((8 * 1024 * 1024))
  tenth=$((measured / 10))
  if [ "$tenth" -gt "$floor" ]; then echo "$tenth"; else echo "$floor"; fi
}

# True when Locara's figure ($2) is within footprint_tolerance of
# footprint(1)'s ($1); both bytes.
footprint_within_tolerance() {
  local measured="$1" reported="$2" diff
  [[ "$measured" =~ ^[0-9]+$ && "$reported" =~ ^[0-9]+$ ]] || return 1
  diff=$((measured - reported))
  [ "$diff" -lt 0 ] && diff=$((-diff))
  [ "$diff" -le "$(footprint_tolerance "$measured")" ]
}

# Bytes -> "118.0 MiB", for the table.
human_bytes() {
  awk -v b="$1" 'BEGIN {
    if (b >= 1073741824) printf "%.2f GiB\n", b / 1073741824
    else printf "%.1f MiB\n", b / 1048576
  }'
}
