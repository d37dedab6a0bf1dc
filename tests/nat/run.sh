#!/usr/bin/env bash
# NAT traversal, proved on one machine with network namespaces and no internet.
#
#   sudo tests/nat/run.sh            # needs root; installs nftables/jq from Debian if missing
#
# Builds, for each scenario, a small internet of its own:
#
#        peer a 10.0.1.2                                     peer b 10.0.2.2
#             |                                                   |
#   nat-a 10.0.1.1 | 198.18.1.2 ---+-- pub ---+--- 198.18.2.2 | 10.0.2.1 nat-b
#                   (masquerade)   |          |    (masquerade)
#                                  relay 198.18.0.1 (HTTP :3340, QUIC address discovery :7842)
#
# The "internet" is 198.18.0.0/15 (reserved for benchmarks, routed nowhere).
# Each NAT is Linux masquerade with a stateful filter, like a home router: endpoint-
# independent mapping (it keeps the source port, whatever the destination), address-and-
# port-dependent filtering (only replies come in; unsolicited packets are dropped before
# conntrack records them). The relay is the `iroh-relay` crate's server (relaying over
# plain HTTP, QUIC address discovery over TLS with a throwaway CA), built from
# tests/nat/relay/ (its own cargo project and target dir). Peers run
# `teatime --network lan --relay http://198.18.0.1:3340 --relay-ca CA`, each with its own
# home and folder. No namespace has a default route or any link to the host: nothing can
# leave (checked before each scenario).
#
# Scenarios, each on a fresh network, relay and pair of peers:
#   1-holepunch     the peers meet through the relay, then switch to a direct path to
#                   the other NAT's public address (`teatime peers --json` and iroh's log)
#   2-udp-blocked   UDP between the two NATs' public addresses is dropped: the peers sync
#                   through the relay, and stay on it (the drops are counted)
#   3-relay-gone    the relay stops after the peers meet: the direct path keeps them in
#                   sync, on the same session
#   3-control       3 with UDP blocked: no direct path and no relay, nothing may sync
#                   (so 3 passes because of the direct path)
#   4-moved         peer b moves (new private address, new NAT public address): they sync
#                   again, then punch a direct path to its new address
#   4-renumbered    only NAT b's public address changes (b sees nothing): the same
# Syncing means: write a file on one side, wait (with a deadline) until it is byte-
# identical on the other, both ways. One line per scenario: result, name, paths in
# order, time to converge, notes. Exit status 0 when all pass, 1 when one fails (or the
# setup does), 77 when this machine cannot make network namespaces (not root).
#
# Environment: TEATIME_BIN (default target/debug/teatime, built if missing),
# NAT_TIMEOUT (seconds per wait, default 30), NAT_CONTROL_SECS (how long the control
# must stay unsynced, default 10), NAT_ONLY (scenarios to run, e.g. "1-holepunch
# 4-moved"), NAT_KEEP=1 (keep the temp dir: logs, homes, folders), NAT_LOG (teatime's
# RUST_LOG; iroh's path events are needed), NAT_RELAY_LOG (the relay's RUST_LOG).
# shellcheck disable=SC2317 # scenarios (and so what they call) are called by name: run NAME FUNCTION
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
timeout_s=${NAT_TIMEOUT:-30}
control_s=${NAT_CONTROL_SECS:-10}

say() { printf '%s\n' "$*" >&2; }
cannot() {
  say "nat: cannot run: $*"
  exit 1
}
skip() {
  echo "nat: SKIPPED: $*"
  exit 77
}

# --- prerequisites ------------------------------------------------------------------

[ "$(id -u)" = 0 ] || skip "needs root to make network namespaces (running as uid $(id -u))"
need_pkgs=()
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v nft >/dev/null || need_pkgs+=(nftables)
command -v jq >/dev/null || need_pkgs+=(jq)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "nat: installing ${need_pkgs[*]}"
  command -v apt-get >/dev/null || cannot "missing ${need_pkgs[*]} and no apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"; } >/dev/null ||
    cannot "apt-get install ${need_pkgs[*]} failed"
fi

probe="ttnat$$-probe"
ip netns add "$probe" 2>/dev/null || skip "cannot make a network namespace here (ip netns add failed)"
ip netns del "$probe"

started_at=$EPOCHSECONDS
teatime=${TEATIME_BIN:-$root/target/debug/teatime}
if [ ! -x "$teatime" ]; then
  say "nat: building teatime"
  (cd "$root" && cargo build --quiet --bin teatime) || cannot "building teatime failed"
fi
say "nat: building the relay (tests/nat/relay)"
CARGO_TARGET_DIR="$here/relay/target" cargo build --quiet --locked --manifest-path "$here/relay/Cargo.toml" ||
  cannot "building the relay failed"
relay_bin=$here/relay/target/debug/teatime-nat-relay
built_at=$EPOCHSECONDS

# --- bookkeeping and teardown -------------------------------------------------------

P="ttnat$$-" # namespace names: unique to this run
work=$(mktemp -d /tmp/teatime-nat.XXXXXX)
pidfile=$work/pids # every process started, so teardown finds them (scenarios run in subshells)
: >"$pidfile"
passed=0 fails=0

started() { echo "$1" >>"$pidfile"; }

# stop PID...: SIGTERM, a bounded wait (5 s) for all of them, then SIGKILL for those
# still there.
stop() {
  local pid left=("$@") _
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 50); do
    for pid in "${!left[@]}"; do kill -0 "${left[$pid]}" 2>/dev/null || unset 'left[pid]'; done
    [ ${#left[@]} -gt 0 ] || break
    sleep 0.1
  done
  [ ${#left[@]} -eq 0 ] || kill -KILL "${left[@]}" 2>/dev/null || true
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

stop_all() {
  local pids
  mapfile -t pids <"$pidfile"
  stop "${pids[@]}"
  : >"$pidfile"
}

# Ends whatever still runs in the namespaces (by pid), then deletes them.
net_down() {
  local n pids=()
  for n in pub nata natb a b; do
    mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$P$n" 2>/dev/null)
  done
  stop "${pids[@]}"
  for n in pub nata natb a b; do ip netns del "$P$n" 2>/dev/null || true; done
}

cleanup() {
  local code=$?
  trap - EXIT INT TERM
  stop_all
  net_down
  if [ "${NAT_KEEP:-}" = 1 ]; then say "nat: kept $work"; else rm -rf "$work"; fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Microseconds since the epoch, and seconds elapsed since such a stamp.
now_us() { printf '%s' "${EPOCHREALTIME/./}"; }
secs_since() {
  local d=$(($(now_us) - $1))
  printf '%d.%02d' $((d / 1000000)) $(((d / 10000) % 100))
}

# wait_until SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds; fails after
# SECONDS.
wait_until() {
  local end=$(($(now_us) + $1 * 1000000))
  shift
  until "$@"; do
    [ "$(now_us)" -lt "$end" ] || return 1
    sleep 0.1
  done
}

# --- the network --------------------------------------------------------------------

INTERNET=198.18.0.0/15 # the test's "internet" (RFC 2544: reserved, routed nowhere)
RELAY_IP=198.18.0.1
RELAY_URL=http://$RELAY_IP:3340
PUB_A=198.18.1.2  # NAT a's public address
PUB_B=198.18.2.2  # NAT b's public address
PUB_B2=198.18.2.3 # ... after scenario 4's change

nsx() { # namespace command...
  local n=$1
  shift
  ip netns exec "$P$n" "$@"
}

# add_nat NAME PUBLIC_ADDR/24 LAN_PREFIX (10.0.1): a NAT router and its one peer.
add_nat() {
  local n=$1 wan=$2 lan=$3 peer=${1#nat}
  ip -n "$P"pub link add "wan-$peer" type veth peer name wan netns "$P$n"
  ip -n "$P$n" addr add "$wan" dev wan
  ip -n "$P$n" link set wan up
  ip -n "$P"pub link set "wan-$peer" up
  ip -n "$P$n" link add lan type veth peer name eth0 netns "$P$peer"
  ip -n "$P$n" addr add "$lan.1/24" dev lan
  ip -n "$P$n" link set lan up
  ip -n "$P$peer" addr add "$lan.2/24" dev eth0
  ip -n "$P$peer" link set eth0 up
  routes "$peer" "$lan.1"
  # mDNS stays on the private link (the NAT does not forward multicast).
  ip -n "$P$peer" route add 224.0.0.0/4 dev eth0
  nsx "$n" sysctl -qw net.ipv4.ip_forward=1
  nsx "$n" nft -f - <<EOF
table ip nat {
  chain post { type nat hook postrouting priority srcnat; oifname "wan" masquerade; }
}
table ip filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
  }
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iifname { "lan", "lo" } accept
  }
}
EOF
}

# routes NS GATEWAY: the test's internet (and nothing else) via GATEWAY.
routes() { ip -n "$P$1" route replace "$INTERNET" via "$2"; }

net_up() {
  local n
  for n in pub nata natb a b; do
    ip netns add "$P$n"
    # IPv4 only: link-local IPv6 would only add addresses nobody can reach.
    nsx "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
    ip -n "$P$n" link set lo up
  done
  ip -n "$P"pub addr add "$RELAY_IP/32" dev lo
  nsx pub sysctl -qw net.ipv4.ip_forward=1
  add_nat nata "$PUB_A/24" 10.0.1
  ip -n "$P"pub addr add 198.18.1.1/24 dev wan-a
  add_nat natb "$PUB_B/24" 10.0.2
  ip -n "$P"pub addr add 198.18.2.1/24 dev wan-b
  routes nata 198.18.1.1
  routes natb 198.18.2.1
  # The public side's firewall: empty until a scenario drops something.
  nsx pub nft -f - <<'EOF'
table inet wall {
  chain forward { type filter hook forward priority filter; }
}
EOF
  # Nothing can leave: no namespace has a route beyond the test's own networks (public
  # and private addresses elsewhere, and the host's own gateway).
  local dst probes=(1.1.1.1 10.255.255.1 172.16.0.1 192.168.1.1 192.0.2.1)
  mapfile -t -O 5 probes < <(ip -4 route show default | awk '$3 !~ /^(10\.0\.[12]\.|198\.1[89]\.)/ {print $3}')
  for n in pub nata natb a b; do
    for dst in "${probes[@]}"; do
      if ip -n "$P$n" route get "$dst" >/dev/null 2>&1; then
        say "nat: namespace $n has a route to $dst"
        ip -n "$P$n" route >&2
        return 1
      fi
    done
  done
}

block_udp_between_nats() {
  nsx pub nft add rule inet wall forward ip saddr "$PUB_A" ip daddr "$PUB_B" meta l4proto udp counter drop
  nsx pub nft add rule inet wall forward ip saddr "$PUB_B" ip daddr "$PUB_A" meta l4proto udp counter drop
}

udp_dropped() { # packets the rules above dropped
  nsx pub nft -j list chain inet wall forward | jq '[.nftables[] | .rule? | select(.) | .expr[] | .counter? | select(.) | .packets] | add // 0'
}

# --- relay and peers ----------------------------------------------------------------

relay_pid=
start_relay() {
  local out=$sdir/relay.out
  : >"$out"
  # `ip netns exec` and `env` exec, so $! is the relay itself (not a shell around it).
  ip netns exec "$P"pub env RUST_LOG="${NAT_RELAY_LOG:-warn}" "$relay_bin" "$RELAY_IP" 3340 7842 \
    "$sdir/relay-ca.pem" >"$out" 2>"$sdir/relay.log" &
  relay_pid=$!
  started "$relay_pid"
  wait_until 20 relay_ready "$out" || {
    why="the relay did not start"
    return 1
  }
}

relay_ready() {
  grep -qs '^ready' "$1" && return 0
  if ! kill -0 "$relay_pid" 2>/dev/null; then # it died: no point waiting
    why="the relay exited: $(tail -n 1 "$sdir/relay.log")"
    exit 1
  fi
  return 1
}

stop_relay() {
  stop "$relay_pid"
  ! kill -0 "$relay_pid" 2>/dev/null
}

# teatime_bg PEER ARGS...: runs teatime in PEER's namespace, in the background.
teatime_bg() {
  local p=$1
  shift
  ip netns exec "$P$p" env HOME="$sdir/$p" NO_COLOR=1 RUST_LOG="${NAT_LOG:-teatime=info,iroh::_events=debug}" \
    "$teatime" --home "$sdir/$p/home" --name "$p" --network lan --relay "$RELAY_URL" \
    --relay-ca "$sdir/relay-ca.pem" "$@" >"$sdir/$p/out" 2>>"$sdir/$p/log" &
  started "$!"
}

# teatime_cli PEER ARGS...: a command talking to PEER's running folder (control socket).
teatime_cli() {
  local p=$1
  shift
  HOME="$sdir/$p" "$teatime" --home "$sdir/$p/home" "$@"
}

start_peers() {
  mkdir -p "$sdir/a/dir" "$sdir/b/dir"
  teatime_bg a share "$sdir/a/dir"
  wait_until "$timeout_s" grep -qs . "$sdir/a/out" || {
    why="peer a printed no ticket"
    return 1
  }
  teatime_bg b join "$(head -n1 "$sdir/a/out")" "$sdir/b/dir"
}

# path PEER: how PEER reaches the other one: direct, relay, none (connected, no path
# selected yet) or down.
path() {
  teatime_cli "$1" peers "$sdir/$1/dir" --json 2>/dev/null |
    jq -r '[.[] | select(.me | not)][0] // {} | if .connected then (.path // "none") else "down" end' 2>/dev/null ||
    echo down
}

both_direct() {
  local pa pb
  pa=$(path a) pb=$(path b)
  if [ "$pa" != direct ] || [ "$pb" != direct ]; then
    why="path not direct: a=$pa b=$pb"
    return 1
  fi
}

# selected_paths PEER [FROM_LINE]: the paths iroh selected, in order, from PEER's log
# (from line FROM_LINE on): "relay>198.18.1.2:50952".
selected_paths() {
  tail -n +"${2:-1}" "$sdir/$1/log" | sed -n -e 's/.*path::selected.* network_path=Relay(.*/relay/p' \
    -e 's/.*path::selected.* network_path=Ip([^>]*->\([^)]*\)).*/\1/p' | uniq | paste -sd'>' -
}

# kinds PATHS: "relay>198.18.1.2:50952" -> "relay>direct".
kinds() { printf '%s' "$1" | sed 's/[0-9.]*:[0-9]*/direct/g'; }

log_lines() { wc -l <"$sdir/$1/log"; }

# since PEER: when PEER's session with the other started (status --json), to tell a
# session that survived from a new one.
since() {
  teatime_cli "$1" status "$sdir/$1/dir" --json 2>/dev/null | jq -r '.peers[0].connected_since // "none"'
}

# Every path a saw, in order (polled), until `until` or SECONDS pass.
watch_path() { # PEER UNTIL SECONDS -> sets $seen ("relay>direct")
  local end=$(($(now_us) + $3 * 1000000)) p last=
  seen=
  while :; do
    p=$(path "$1")
    if [ "$p" != "$last" ] && [ "$p" != down ] && [ "$p" != none ]; then
      seen=${seen:+$seen>}$p
      last=$p
    fi
    [ "$p" = "$2" ] && return 0
    [ "$(now_us)" -lt "$end" ] || return 1
    sleep 0.1
  done
}

# converge FROM TO NAME: writes a fresh file on FROM and waits until TO has it
# byte-identical; sets $took (seconds).
converge() {
  local from=$1 to=$2 name=$3 secs=${4:-$timeout_s} t0
  head -c 200 /dev/urandom | base64 >"$sdir/$from/$name"
  t0=$(now_us)
  mv "$sdir/$from/$name" "$sdir/$from/dir/$name"
  if wait_until "$secs" cmp -s "$sdir/$from/dir/$name" "$sdir/$to/dir/$name"; then
    took=$(secs_since "$t0")
  else
    took=
    return 1
  fi
}

# both_ways TAG [SECONDS]: a->b then b->a; sets $times ("a>b 0.21s, b>a 0.18s").
both_ways() {
  local ab secs=${2:-$timeout_s}
  converge a b "$1-ab.txt" "$secs" || {
    why="a>b did not converge in ${secs}s"
    return 1
  }
  ab=$took
  converge b a "$1-ba.txt" "$secs" || {
    why="b>a did not converge in ${secs}s"
    return 1
  }
  times="a>b ${ab}s, b>a ${took}s"
}

# --- scenarios ----------------------------------------------------------------------

# Each sets $times and $note, and $why when it fails; the path column comes from b's log.

# wait_path PEER WANT: until PEER's path to the other is WANT (direct or relay).
wait_path() {
  watch_path "$1" "$2" "$timeout_s" || {
    why="no $2 path in ${timeout_s}s (paths: ${seen:-none})"
    return 1
  }
}

# Both peers on WANT (direct or relay).
both_on() {
  local pa pb
  pa=$(path a) pb=$(path b)
  if [ "$pa" != "$1" ] || [ "$pb" != "$1" ]; then
    why="expected $1 paths, got a=$pa b=$pb"
    return 1
  fi
}

scenario_holepunch() {
  start_relay
  start_peers
  local t0 logged
  t0=$(now_us)
  wait_path b direct
  note="direct after $(secs_since "$t0")s"
  both_ways hp
  both_on direct
  # iroh's log agrees: the relay first, then a path to a's NAT (its public address).
  logged=$(selected_paths b)
  case $logged in
    relay\>*"$PUB_A":*) note="$note; b's iroh selected $logged" ;;
    *)
      why="iroh selected: ${logged:-nothing}, not the relay then $PUB_A"
      return 1
      ;;
  esac
}

scenario_udp_blocked() {
  start_relay
  block_udp_between_nats
  start_peers
  wait_path b relay
  both_ways ub
  both_on relay
  local dropped
  dropped=$(udp_dropped)
  [ "$dropped" -gt 0 ] || {
    why="no UDP between the NATs was even tried: nothing was dropped"
    return 1
  }
  note="$dropped UDP packets between the NATs dropped (hole punching tried)"
}

scenario_relay_gone() {
  start_relay
  start_peers
  wait_path b direct
  both_ways rg1
  local s0
  s0=$(since a)
  [ "$s0" != none ] || {
    why="status shows no session"
    return 1
  }
  stop_relay || {
    why="the relay did not stop"
    return 1
  }
  both_ways rg2
  both_on direct
  [ "$(since a)" = "$s0" ] || {
    why="the session was replaced after the relay stopped"
    return 1
  }
  note="relay stopped, then synced on the same session"
}

# The control for relay-gone: no direct path (UDP blocked) and then no relay: a file
# written now must not arrive. Shows that relay-gone passes because of the direct path.
scenario_control() {
  start_relay
  block_udp_between_nats
  start_peers
  wait_path b relay
  both_ways c1
  stop_relay || {
    why="the relay did not stop"
    return 1
  }
  if converge a b c2.txt "$control_s"; then
    why="synced with neither relay nor direct path (in ${took}s): the test cannot tell paths apart"
    return 1
  fi
  times="a>b none in ${control_s}s (expected)"
  note="relay stopped, UDP blocked: nothing synced, as it must"
}

# after_change MARK_A T0 SESSION TAG: once b's public address changed (to $PUB_B2): sync both
# ways, then wait for a direct path to the new address; sets $note.
after_change() {
  local mark=$1 t0=$2 s0=$3 logged session
  [ "$s0" != none ] || {
    why="status showed no session before the change"
    return 1
  }
  both_ways "$4" $((timeout_s * 2))
  local synced
  synced=$(secs_since "$t0")
  wait_path b direct
  logged=$(selected_paths a "$mark")
  case $logged in
    *"$PUB_B2":*) ;;
    *)
      why="a never selected a path to b's new address (selected: ${logged:-nothing})"
      return 1
      ;;
  esac
  if [ "$(since a)" = "$s0" ]; then session="same session"; else session="new session"; fi
  note="synced ${synced}s after the change, direct to $PUB_B2 after $(secs_since "$t0")s, $session"
}

scenario_moved() {
  start_relay
  start_peers
  wait_path b direct
  both_ways mv1
  local mark s0 t0
  mark=$(($(log_lines a) + 1)) s0=$(since a) t0=$(now_us)
  # Peer b moves to another network: a new private address behind a new public one
  # (removing the old public address drops the masquerade's mappings).
  ip -n "$P"natb addr del "$PUB_B/24" dev wan
  ip -n "$P"natb addr add "$PUB_B2/24" dev wan
  routes natb 198.18.2.1
  ip -n "$P"b addr del 10.0.2.2/24 dev eth0
  ip -n "$P"b addr add 10.0.2.3/24 dev eth0
  routes b 10.0.2.1
  ip -n "$P"b route add 224.0.0.0/4 dev eth0
  after_change "$mark" "$t0" "$s0" mv2
}

# Like moved, but only NAT b's public address changes: b's own interface sees nothing,
# its direct path just goes silent.
scenario_renumbered() {
  start_relay
  start_peers
  wait_path b direct
  both_ways rn1
  local mark s0 t0
  mark=$(($(log_lines a) + 1)) s0=$(since a) t0=$(now_us)
  ip -n "$P"natb addr del "$PUB_B/24" dev wan
  ip -n "$P"natb addr add "$PUB_B2/24" dev wan
  routes natb 198.18.2.1
  after_change "$mark" "$t0" "$s0" rn2
}

# --- run ----------------------------------------------------------------------------

run() { # NAME FUNCTION
  local name=$1 fn=$2 t0 result logged
  case " ${NAT_ONLY:-$1} " in *" $1 "*) ;; *) return 0 ;; esac
  sdir=$work/$name
  mkdir -p "$sdir/a/home" "$sdir/b/home"
  # A fixed free-space floor, not 1% of the disk: a nearly full shared disk must not
  # stall these runs (the harness of tests/it does the same).
  printf 'min_disk_free = "16777216"\n' | tee "$sdir/a/home/config.toml" >"$sdir/b/home/config.toml"
  seen='' times='' note='' why=''
  t0=$(now_us)
  net_up
  # In a subshell, so `set -e` holds inside the scenario (it would not in a condition);
  # what it found comes back through a file.
  set +e
  (
    set -eE
    trap 'why=${why:-"failed: $BASH_COMMAND"}' ERR
    trap 'declare -p seen times note why >"$sdir/found"' EXIT
    "$fn"
  )
  result=$?
  set -e
  # shellcheck disable=SC1091
  [ -f "$sdir/found" ] && . "$sdir/found"
  if [ "$result" = 0 ]; then result=PASS; else result=FAIL; fi
  # The paths b's iroh selected, in order (teatime's own view was checked by polling
  # `teatime peers --json`, which can miss a path that lasted less than a poll).
  logged=$(kinds "$(selected_paths b)")
  seen=${logged:-${seen:-none}}
  printf '%-4s  %-13s  path=%-26s  converge: %-28s  %s\n' "$result" "$name" "$seen" "${times:--}" \
    "${why:-$note} [$(secs_since "$t0")s]"
  if [ "$result" = PASS ]; then passed=$((passed + 1)); else
    fails=$((fails + 1))
    for f in relay.log a/log b/log; do
      [ -s "$sdir/$f" ] && { say "--- $name: last lines of $f"; tail -n 15 "$sdir/$f" >&2; }
    done
  fi
  stop_all
  net_down
}

run 1-holepunch scenario_holepunch
run 2-udp-blocked scenario_udp_blocked
run 3-relay-gone scenario_relay_gone
run 3-control scenario_control
run 4-moved scenario_moved
run 4-renumbered scenario_renumbered
say "nat: builds $((built_at - started_at))s, scenarios $((EPOCHSECONDS - built_at))s"
echo "nat: $passed passed, $fails failed"
[ "$fails" = 0 ]
