#!/usr/bin/env bash
# teatime against Syncthing (and rsync) on 127.0.0.1, in the same run.
#
#   benches/e2e/run.sh [small|full]     # small: < 5 min, generated corpus; full: Go source tree, 100k idle
#
# Installs what is missing (syncthing, rsync, git, golang-1.19-src for the full tier,
# matplotlib for the plot), builds the release binary unless TEATIME_BIN is set, then runs
# benches/e2e/harness.py. Results: target/e2e-bench/TIER/{results.json,table.md,latency-TIER.png}.
# Nothing listens or connects beyond 127.0.0.1 (the harness checks every socket of the
# processes it starts, and prints Syncthing's own evidence).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tier=${1:-small}
case $tier in small | full) ;; *) echo "usage: $0 [small|full]" >&2; exit 2 ;; esac

need=()
for tool in syncthing rsync git ss; do command -v "$tool" >/dev/null || need+=("$tool")
done
[[ $tier == full && ! -d /usr/share/go-1.19/src ]] && need+=(golang-1.19-src)
if ((${#need[@]})); then
    pkgs=("${need[@]/ss/iproute2}")
    if [[ $(id -u) == 0 ]]; then
        apt-get install -y "${pkgs[@]}"
    else
        echo "missing: ${pkgs[*]} (apt-get install -y ${pkgs[*]})" >&2; exit 77
    fi
fi
python3 -c 'import matplotlib' 2>/dev/null || pip install --quiet matplotlib || echo "no matplotlib: no plot" >&2

bin=${TEATIME_BIN:-}
if [[ -z $bin ]]; then
    (cd "$root" && nice -n 10 cargo build --release --bin teatime)
    bin=$root/target/release/teatime
fi
out=${E2E_OUT:-$root/target/e2e-bench/$tier}
work=${E2E_WORK:-${TMPDIR:-/tmp}/teatime-e2e-$tier}
exec python3 "$root/benches/e2e/harness.py" --tier "$tier" --bin "$bin" --work "$work" --out "$out" "${@:2}"
