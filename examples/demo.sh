#!/usr/bin/env bash
# The main job, end to end: install, start kata-agent as PID 1 of fresh namespaces (a stand-in
# for the guest VM) serving on a local unix socket, and drive a pod's life with kata-agent-ctl.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_INSTALL:-}" = 1 ] || bash .ci/install
runtime="${RUNTIME:-crun}"

work=$(mktemp -d /tmp/kata-demo.XXXXXX)
cleanup() {
    # the launcher stops the agent, and its namespaces (mounts, containers) go with it
    if [ -n "${launcher:-}" ]; then
        kill -TERM "$launcher" 2>/dev/null || true
        wait "$launcher" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting kata-agent as PID 1 in new pid/mount/net/uts/ipc/cgroup namespaces ($runtime)"
# The launcher gives the namespaces what a guest has: a fresh /run, and cgroup v1 hierarchies
# of their own (this host's hybrid cgroup2 mount, which crun refuses, is not there).
mkdir -p "$work/share"
python3 -m tests.e2e.guest --workdir "$work/guest" --runtime "$runtime" >"$work/address" &
launcher=$!
for _ in $(seq 300); do [ -s "$work/address" ] && break; sleep 0.1; done
addr=$(cat "$work/address")
[ -n "$addr" ] || { echo "the agent did not start"; cat "$work/guest/agent.log" 2>/dev/null; exit 1; }

ctl() { echo "\$ kata-agent-ctl $*"; kata-agent-ctl --addr "$addr" "$@" || true; }
ctl check
ctl version
# A pod's life, every step a kata-agent-ctl call (CreateSandbox ... DestroySandbox):
python3 examples/pod.py "$addr" "$work/share"

echo
echo "== agent log (JSON lines), the runtime calls it made"
grep -E '"(sandbox|container) |"runtime call"' "$work/guest/agent.log" | head -n 30 || true
