#!/usr/bin/env bash
# Runs the parsers of scripts/mac-acceptance.sh (scripts/lib/mac-parse.sh)
# on the samples in scripts/tests/samples/ and compares each result with the
# exact value the sample holds. Runs anywhere bash and python3 run; called
# by crates/locara/tests/mac_acceptance.rs. Prints one line per failure and
# a summary line "mac-parse: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
# shellcheck source=scripts/lib/mac-parse.sh
source scripts/lib/mac-parse.sh

samples=scripts/tests/samples
passed=0
failed=0

# expect NAME WANT GOT: one check of a value.
expect() {
  if [ "$2" == "$3" ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL $1: expected '$2', got '$3'"
  fi
}

# parses PARSER SAMPLE WANT [ARG]: the parser on the sample prints WANT and
# succeeds.
parses() {
  local got rc
  got="$("$1" ${4:+"$4"} <"$samples/$2")"
  rc=$?
  expect "$1 < $2: exit status" 0 "$rc"
  expect "$1 < $2" "$3" "$got"
}

# refuses PARSER SAMPLE [ARG]: the parser finds no value in the sample: it
# fails and prints nothing (a caller must not mistake that for a figure).
refuses() {
  local got rc
  got="$("$1" ${3:+"$3"} <"$samples/$2")"
  rc=$?
  expect "$1 < $2 fails" 1 "$((rc != 0))"
  expect "$1 < $2 prints nothing" "" "$got"
}

# Units, 1024-based, fractions rounded to the byte.
expect "to_bytes 118 MB" 123731968 "$(to_bytes 118 MB)"
expect "to_bytes 34816 KB" 35651584 "$(to_bytes 34816 KB)"
expect "to_bytes 1.52 GB" 1632087572 "$(to_bytes 1.52 GB)"
expect "to_bytes 1,234 KB" 1263616 "$(to_bytes 1,234 KB)"
expect "to_bytes 4096" 4096 "$(to_bytes 4096)"
expect "to_bytes 12 parsecs fails" 1 "$(to_bytes 12 parsecs >/dev/null && echo 0 || echo 1)"
expect "to_bytes x MB fails" 1 "$(to_bytes x MB >/dev/null && echo 0 || echo 1)"

# footprint(1): the header's figure; the auxiliary phys_footprint line only
# when the header has none (never phys_footprint_peak).
parses parse_footprint_bytes footprint-p-mb.txt 123731968
parses parse_footprint_bytes footprint-p-kb.txt 35651584
parses parse_footprint_bytes footprint-p-gb.txt 1632087572
parses parse_footprint_bytes footprint-f-bytes.txt 123731968
parses parse_footprint_bytes footprint-aux-only.txt 101711872
refuses parse_footprint_bytes footprint-no-process.txt
expect "footprint: header wins over a differing phys_footprint line" 2097152 \
  "$(printf 'x [1]: 64-bit    Footprint: 2 MB (16384 bytes per page)\n    phys_footprint: 3 MB\n' | parse_footprint_bytes)"

# sysctl
parses parse_wired_limit sysctl-wired-limit.txt 0
parses parse_wired_limit sysctl-wired-limit-n.txt 24576
refuses parse_wired_limit sysctl-wired-limit-unknown.txt
parses parse_kernel_pressure_level sysctl-pressure-level.txt warn
expect "kernel level 4 (sysctl -n)" critical "$(echo 4 | parse_kernel_pressure_level)"
expect "kernel level 1 (sysctl -n)" normal "$(echo 1 | parse_kernel_pressure_level)"
expect "kernel level 3 is no level" "" "$(echo 3 | parse_kernel_pressure_level)"

# memory_pressure -S
parses parse_memory_pressure_result memory-pressure-warn.txt reset
parses parse_memory_pressure_result memory-pressure-holding.txt holding
parses parse_memory_pressure_result memory-pressure-denied.txt denied
refuses parse_memory_pressure_result footprint-no-process.txt
parses parse_memory_free_percent memory-pressure-warn.txt 58
parses parse_memory_free_percent memory-pressure-holding.txt 57

# locara serve and daemon.json
parses parse_listen_address serve-stdout.txt 127.0.0.1:54817
parses parse_daemon_json_address daemon.json 127.0.0.1:54817
refuses parse_listen_address footprint-no-process.txt

# locara ps --json
parses parse_ps_json_footprint ps-json-two-models.json 121634816 41873
parses parse_ps_json_footprint ps-json-two-models.json 318767104 41880
refuses parse_ps_json_footprint ps-json-two-models.json 99999
refuses parse_ps_json_footprint ps-json-critical.json 41873
refuses parse_ps_json_footprint footprint-p-mb.txt 41873
parses parse_ps_json_models ps-json-two-models.json \
  "$(printf 'smollm2:135m 41873 loaded 0\ngemma3:270m 41880 loaded 0')"
parses parse_ps_json_models ps-json-critical.json ""
parses parse_ps_json_pressure ps-json-two-models.json "normal normal normal false"
parses parse_ps_json_pressure ps-json-warn.json "warn warn warn false"
parses parse_ps_json_pressure ps-json-critical.json "critical critical critical true"
refuses parse_ps_json_pressure daemon.json
parses parse_ps_json_idle ps-json-two-models.json "smollm2:135m,gemma3:270m"
parses parse_ps_json_idle ps-json-warn.json "smollm2:135m,gemma3:270m"
parses parse_ps_json_idle ps-json-critical.json "-"
parses parse_ps_json_idle ps-json-critical-busy.json "-"

# Levels as numbers.
expect "rank normal" 0 "$(pressure_rank normal)"
expect "rank critical" 2 "$(pressure_rank critical)"
expect "rank of an unknown level fails" 1 "$(pressure_rank recovering >/dev/null && echo 0 || echo 1)"

# The tolerance: 10 % of footprint(1)'s figure, at least 8 MiB.
expect "tolerance of 34 MiB is the 8 MiB floor" 8388608 "$(footprint_tolerance 35651584)"
expect "tolerance of 118 MiB is 10 %" 12373196 "$(footprint_tolerance 123731968)"
expect "tolerance of 1.52 GiB is 10 %" 163208757 "$(footprint_tolerance 1632087572)"
within() { footprint_within_tolerance "$1" "$2" && echo yes || echo no; }
# The samples' own pairing: footprint(1) 118 MiB, Locara 116 MiB.
expect "118 MiB vs 116 MiB" yes "$(within 123731968 121634816)"
expect "118 MiB vs 118 MiB + 10 %" yes "$(within 123731968 136105164)"
expect "118 MiB vs 118 MiB + 10 % + 1 byte" no "$(within 123731968 136105165)"
expect "118 MiB vs 118 MiB - 10 % - 1 byte" no "$(within 123731968 111358771)"
expect "34 MiB vs 42 MiB (the floor)" yes "$(within 35651584 44040192)"
expect "34 MiB vs 42 MiB + 1 byte" no "$(within 35651584 44040193)"
expect "118 MiB vs mapped weights counted in (216 MiB)" no "$(within 123731968 226492416)"
expect "1.52 GiB vs 1.40 GiB" yes "$(within 1632087572 1503238553)"
expect "1.52 GiB vs 1.30 GiB" no "$(within 1632087572 1395864371)"
expect "no figure is never within" no "$(within "" 121634816)"

expect "human_bytes MiB" "118.0 MiB" "$(human_bytes 123731968)"
expect "human_bytes GiB" "1.52 GiB" "$(human_bytes 1632087572)"

# The script itself, sourced with the guard, only defines the parsers: it
# neither runs its checks (here it would stop at "for Apple Silicon Macs")
# nor changes the caller's directory.
root="$PWD"
# shellcheck disable=SC2016  # expanded by the inner bash
got="$(cd / && LOCARA_ACCEPTANCE_LIB=1 bash -c \
  'source "$1"; declare -F parse_footprint_bytes >/dev/null && echo "defined, still in $PWD"' \
  _ "$root/scripts/mac-acceptance.sh" 2>&1)"
expect "LOCARA_ACCEPTANCE_LIB=1 source scripts/mac-acceptance.sh" "defined, still in /" "$got"

echo "mac-parse: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
