#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 25), on the stable toolchain:
# cargo-fuzz with `--sanitizer none` needs no nightly (teatime's own code has no
# `unsafe`; libFuzzer still finds panics, hangs, out-of-memory and failed invariants).
#
#   fuzz/run.sh [SECONDS]
#
# Installs what it needs: cargo-fuzz (pinned, `cargo install --locked`), and a C++
# compiler for libFuzzer if none is present (apt-get, when run as root). Seeds come from
# fuzz/corpus/<target>/ (read only); what a run discovers goes to a temporary directory.
# A crash fails the script and prints the crashing input (hex and base64) and how to
# reproduce it; the input is also left in fuzz/artifacts/<target>/.
# Without network access to crates.io it cannot install or build: it says so and exits
# 0 (skipped); with access, any failure is a failure.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_PER_TARGET="${1:-25}"
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(frame_decoder ticket_parser path_validator changes_admission)

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

crates_io_reachable() {
  if command -v curl >/dev/null 2>&1; then
    curl -sSf --max-time 20 -o /dev/null https://index.crates.io/config.json
  elif command -v wget >/dev/null 2>&1; then
    wget -q -T 20 -O /dev/null https://index.crates.io/config.json
  else
    return 0 # cannot tell: treat a failure as a failure
  fi
}

# A step failed: skip (exit 0) if crates.io is out of reach, else fail.
failed() {
  if ! crates_io_reachable; then
    echo "fuzz: SKIPPED: $1 failed and crates.io is unreachable from this machine (offline?)."
    echo "fuzz: no fuzzing was done; run fuzz/run.sh on a machine with network access."
    exit 0
  fi
  echo "fuzz: FAILED: $1 (crates.io is reachable, so this is not a network problem)" >&2
  exit 1
}

start=$(date +%s)

if ! command -v c++ >/dev/null 2>&1; then
  echo "== installing a C++ compiler (libFuzzer is C++)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++ >/dev/null; } \
      || failed "installing g++"
  else
    echo "fuzz: FAILED: no C++ compiler (c++), and cannot install one (not root, or no apt-get)" >&2
    exit 1
  fi
fi

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" || failed "installing cargo-fuzz"
fi

echo "== building the fuzz targets (stable, --sanitizer none)"
cargo fuzz build --sanitizer none || failed "building the fuzz targets"
echo "fuzz: setup and build took $(($(date +%s) - start)) s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
crashed=()
summary=()
for target in "${TARGETS[@]}"; do
  echo "== fuzzing $target for ${SECONDS_PER_TARGET}s"
  mkdir -p "$work/$target" "artifacts/$target"
  before="$(ls "artifacts/$target")"
  log="$work/$target.log"
  # New inputs go to the temporary corpus (first directory); the seeds are only read.
  if cargo fuzz run --sanitizer none "$target" "$work/$target" "corpus/$target" -- \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    summary+=("$(printf '%-18s %10s runs %8s execs/s' "$target" "${runs:-?}" "${rate:-?}")")
    grep -h '^caught' "$log" || true
  else
    tail -n 60 "$log"
    crashed+=("$target")
    for input in artifacts/"$target"/*; do
      [ -f "$input" ] || continue
      grep -qxF "$(basename "$input")" <<<"$before" && continue
      echo "---- crashing input $input ($(wc -c <"$input") bytes), hex:"
      od -A x -t x1z -v "$input" | head -n 256
      echo "---- base64:"
      base64 -w 0 "$input" | head -c 16384
      echo
      echo "---- reproduce: cd fuzz && cargo fuzz run --sanitizer none $target $input"
    done
  fi
done

echo "== fuzz summary (${SECONDS_PER_TARGET}s per target, $(($(date +%s) - start)) s in all)"
printf '%s\n' "${summary[@]}"
if [ "${#crashed[@]}" -gt 0 ]; then
  echo "fuzz: FAILED: crash in ${crashed[*]} (inputs printed above)" >&2
  exit 1
fi
