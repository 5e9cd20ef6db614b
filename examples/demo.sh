#!/usr/bin/env bash
# The main job, end to end: install, start kata-agent as PID 1 of fresh namespaces (a stand-in
# for the guest VM) serving on a local unix socket, and drive it with kata-agent-ctl.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_INSTALL:-}" = 1 ] || bash .ci/install

work=$(mktemp -d /tmp/kata-demo.XXXXXX)
sock="$work/agent.sock"
addr="unix://$sock"
cleanup() {
    # unshare does not forward signals: stop the agent (its child, PID 1 inside) directly
    if [ -n "${agent_pid:-}" ]; then
        pkill -TERM -P "$agent_pid" 2>/dev/null || true
        wait "$agent_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting kata-agent as PID 1 in new pid/mount/net/uts/ipc namespaces"
KATA_AGENT_SERVER_ADDR="$addr" unshare --fork --kill-child=SIGTERM --pid --mount --net --uts --ipc \
    python3 -m agent 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done

ctl() { echo "\$ kata-agent-ctl $*"; kata-agent-ctl --addr "$addr" "$@" || true; }
ctl check
ctl version
# Every method of the contract is callable with a JSON request:
python3 examples/pod.py "$addr"

echo "== agent log (JSON lines)"
head -n 20 "$work/agent.log"
