#!/usr/bin/env bash
# demo.sh: bgswitch live, in network namespaces (run as root: `sudo make demo`).
#
# Builds client -> node -> {blue, green} in namespaces bgsdemo-* (tests/lib/netns.py), attaches
# bgswitch to the node's client-facing veth with its state in /sys/fs/bpf/bgsdemo, defines
# service web 10.77.100.1:80 with two blue and two green backends, and runs client load from
# tests/lib/traffic.py: 50 new connections a second plus 4 long-lived connections. It then shows,
# second by second, where new connections go before and after a flip, the long-lived ones
# staying on blue and blue's live-flow count draining to zero as they close, a rollback, and a
# canary: 10% of new connections to green, then a rollout to 30% and 60%. A client on the node
# itself (its namespace named with `bgswitch local add`: the cgroup socket hooks) switches too.
# Everything it made is removed on exit, Ctrl-C included. Takes about 40 seconds.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
PY=/usr/bin/python3 # Debian's python3, not a pyenv one on PATH
BGS=${BGSWITCH:-$REPO/.output/bgswitch}
PREFIX=bgsdemo
PIN=/sys/fs/bpf/bgsdemo
NODE_NS=/run/netns/$PREFIX-node
CLIENT_NS=/run/netns/$PREFIX-client
IFACE="n-client"
VIP=10.77.100.1
RATE=50
LONG=4
CLOSE_SPREAD=2

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (namespaces, XDP, /sys/fs/bpf): sudo make demo" >&2
	exit 1
fi
if [ ! -x "$BGS" ]; then
	echo "demo: $BGS missing: run make first" >&2
	exit 1
fi

if [ -t 1 ]; then
	B=$'\e[1m' BLUE=$'\e[1;34m' GREEN=$'\e[1;32m' DIM=$'\e[2m' N=$'\e[0m'
else
	B='' BLUE='' GREEN='' DIM='' N=''
fi

say() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
note() { printf '    %s\n' "$*"; }
bgs() { nsenter --net="$NODE_NS" "$BGS" --pin-root "$PIN" "$@"; }
show() { # run a bgswitch command, echoing it first
	printf '    %s$ bgswitch %s%s\n' "$DIM" "$*" "$N"
	bgs "$@" | sed 's/^/    /'
}
colorize() { sed -e "s/blue/${BLUE}blue${N}/g" -e "s/green/${GREEN}green${N}/g"; }

TMP=
LOAD_PID=
cleanup() {
	set +e
	trap - EXIT INT TERM
	echo
	say "Cleaning up"
	if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then
		kill -INT "$LOAD_PID" 2>/dev/null
		for _ in $(seq 50); do kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$LOAD_PID" 2>/dev/null
	fi
	[ -n "$LOAD_PID" ] && wait "$LOAD_PID" 2>/dev/null
	if [ -d "$PIN" ] && [ -e "$NODE_NS" ]; then
		bgs detach "$IFACE" --purge >/dev/null 2>&1
	fi
	[ -d "$PIN" ] && rm -rf "$PIN"
	if [ -n "$TMP" ] && [ -f "$TMP/state.json" ]; then
		$PY tests/lib/netns.py down --state "$TMP/state.json"
	else
		$PY tests/lib/netns.py down --prefix "$PREFIX"
	fi
	[ -n "$TMP" ] && rm -rf "$TMP"
	note "namespaces $PREFIX-*, their processes and $PIN removed"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Leftovers of an earlier demo that was killed before its cleanup ran: the names are the demo's.
if ip netns list | grep -q "^$PREFIX-" || [ -e "$PIN" ]; then
	say "Removing leftovers of an earlier demo run"
	if [ -d "$PIN" ] && [ -e "$NODE_NS" ]; then
		bgs detach "$IFACE" --purge >/dev/null 2>&1 || true
	fi
	[ -d "$PIN" ] && rm -rf "$PIN"
	$PY tests/lib/netns.py down --prefix "$PREFIX"
fi

TMP=$(mktemp -d /tmp/bgsdemo.XXXXXX)
PROG=$TMP/progress # the load client's per-second lines
OUT=$TMP/load.out  # READY, then its JSON summary
# The demo's changes go to an audit trail of its own, removed with the rest.
export BGSWITCH_AUDIT_LOG=$TMP/audit.log

say "Building the network: client -> node -> blue / green (namespaces $PREFIX-*)"
$PY tests/lib/netns.py up --prefix "$PREFIX" --state "$TMP/state.json"
cat <<EOF
    client  10.77.1.2  ----  node (bgswitch on $IFACE: XDP in, TC out)
                               |-- ${BLUE}blue${N}   servers 10.77.2.11:8081, 10.77.2.12:8081
                               '-- ${GREEN}green${N}  servers 10.77.3.11:8082, 10.77.3.12:8082
    Clients talk to the VIP $VIP:80, which no machine owns: bgswitch's XDP program rewrites
    each new connection to a backend of the active color and pins the connection there.
EOF

say "Attaching bgswitch and defining service 'web' with 2 blue and 2 green backends"
show attach "$IFACE"
show service add web "$VIP:80"
for be in 10.77.2.11:8081 10.77.2.12:8081; do show backend add web blue "$be" | colorize; done
for be in 10.77.3.11:8082 10.77.3.12:8082; do show backend add web green "$be" | colorize; done

say "Serving local clients too: sockets of the node's own namespace (cgroup socket hooks)"
note "Packets of a client on the node never cross XDP; its connect() to the VIP is sent to a"
note "backend chosen the same way, once per socket."
show local add

say "Starting client load: $RATE new connections/s (one request each), $LONG long-lived ones"
note "Each server answers with its color; every failed or wrongly answered request is counted."
nsenter --net="$CLIENT_NS" $PY tests/lib/traffic.py load --vip "$VIP" --port 80 --duration 90 \
	--new-rate "$RATE" --long "$LONG" --long-close-spread "$CLOSE_SPREAD" --progress \
	>"$OUT" 2>"$PROG" &
LOAD_PID=$!
for _ in $(seq 100); do
	grep -q READY "$OUT" 2>/dev/null && break
	kill -0 "$LOAD_PID" 2>/dev/null || { echo "demo: load client died:" >&2; cat "$PROG" >&2; exit 1; }
	sleep 0.1
done

# Python snippets: the live-flow counts of web from status --json, and the load summary.
read -r -d '' LIVE <<'EOF' || true
import json, sys
c = json.load(sys.stdin)["services"][0]["colors"]
b, g = c["blue"]["live_flows"], c["green"]["live_flows"]
print(f"bgswitch: live flows blue {b:2d}, green {g:2d}")
EOF
read -r -d '' SUMMARY <<'EOF' || true
import json, sys
s = json.load(sys.stdin)
n = s["tcp_new"]
print(f"    new connections: {n['attempts']} made, {n['ok']} answered, by color {n['by_color']}, "
      f"{n['failed']} failed")
bad = n["failed"]
for c in s["tcp_long"]:
    print(f"    long-lived {c['id']}: {c['ok']} requests, all answered by {c['color']} "
          f"{c['backend']}; color changes {len(c['changes'])}, failures {len(c['failures'])}")
    bad += len(c["changes"]) + len(c["failures"])
sys.exit(1 if bad else 0)
EOF
read -r -d '' COLORS <<'EOF' || true
import collections, json, sys
r = json.load(sys.stdin)["results"]
c = collections.Counter(x["color"] if x["ok"] else "failed" for x in r)
print(f"local client on the node: {len(r)} new connections to the VIP: " +
      ", ".join(f"{n} {k}" for k, n in sorted(c.items())))
EOF
local_client() { # 10 connections to the VIP from the node's own namespace
	nsenter --net="$NODE_NS" $PY tests/lib/traffic.py probe --addr "$VIP" --port 80 --count 10 |
		$PY -c "$COLORS" | sed 's/^/    /' | colorize
}
live() { bgs status web --json | $PY -c "$LIVE"; }
blue_live() {
	bgs status web --json | $PY -c 'import json, sys
print(json.load(sys.stdin)["services"][0]["colors"]["blue"]["live_flows"])'
}
shown=0
progress() { # print the load client's lines not shown yet, each with the live-flow counts
	local n
	n=$(wc -l <"$PROG")
	if [ "$n" -gt "$shown" ]; then
		sed -n "$((shown + 1)),${n}p" "$PROG" | while IFS= read -r line; do
			printf '    %s | %s\n' "$line" "$(live)" | colorize
		done
		shown=$n
	fi
}
next_line() { # wait (at most 3 s) for the load client's next line and show it
	local _
	for _ in $(seq 30); do
		[ "$(wc -l <"$PROG")" -gt "$shown" ] && break
		sleep 0.1
	done
	progress
}
watch_for() { # show progress for $1 seconds
	local _
	for _ in $(seq $(($1 * 5))); do
		progress
		sleep 0.2
	done
}

say "Before the flip: everything goes to ${BLUE}blue${N}${B}"
note "Each second: new connections by the color that answered | long-lived connections"
note "open, by color | live flows by color from 'bgswitch status --json'."
watch_for 5
next_line
local_client

say "FLIP: new connections now go to ${GREEN}green${N}${B}; open ones stay where they are"
show flip web | colorize
watch_for 6
local_client

say "Draining: the $LONG long-lived connections opened before the flip still talk to ${BLUE}blue${N}${B}"
note "Now they close, one every ${CLOSE_SPREAD}s; watch blue's live-flow count fall to zero."
kill -USR1 "$LOAD_PID"
for _ in $(seq 30); do
	watch_for 1
	if [ "$(blue_live)" = 0 ]; then
		break
	fi
done
watch_for 1
note "blue has no live flows left: it could be stopped or upgraded now without cutting anyone."
next_line

say "ROLLBACK: back to ${BLUE}blue${N}${B} (the color before the last flip)"
show rollback web | colorize
watch_for 5

say "CANARY: 10% of new connections to ${GREEN}green${N}${B}, chosen by a hash of each connection"
note "Still one 8-byte write: the switch word carries green's share of new flows."
show shift web green 10% | colorize
watch_for 4

say "ROLLOUT: ${GREEN}green${N}${B} 30%, then 60%, 2 s each"
note "A guarded rollout (--guard) would watch green's backends through every step and roll back."
show rollout web green --steps 30,60 --interval 2s | colorize
watch_for 3

say "Stopping the load"
kill -INT "$LOAD_PID"
for _ in $(seq 100); do kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.1; done
wait "$LOAD_PID" || true
LOAD_PID=
progress
show status web | colorize
say "Summary of the client's view"
if tail -n 1 "$OUT" | $PY -c "$SUMMARY" | colorize; then
	say "Done: zero failed requests across a flip, a rollback, a canary and a rollout."
else
	say "Some requests failed (see above)."
	exit 1
fi
