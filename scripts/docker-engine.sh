#!/usr/bin/env bash
# Runs a command with a Docker engine at hand: the one already running when it answers, else a
# dockerd of the project's own, started for the command and stopped after it, so that nothing
# is left running. Our dockerd keeps its data under build/docker (images survive between runs)
# and uses no bridge network and no iptables rules: containers share the host's network, and
# they reach and are reached through loopback only.
#
#   scripts/docker-engine.sh COMMAND [ARG...]
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "docker-engine: $*" >&2; }

if [[ $# -eq 0 ]]; then
    say "usage: $0 COMMAND [ARG...]"
    exit 2
fi

if docker info >/dev/null 2>&1; then
    exec "$@"
fi

if ! command -v dockerd >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
        say "no Docker engine answers and docker.io is not installed; as root run: apt-get install docker.io"
        exit 1
    fi
    say "installing docker.io"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >/dev/null
fi
if [[ $(id -u) -ne 0 ]]; then
    say "no Docker engine answers, and starting one needs root; start Docker, or run as root"
    exit 1
fi

state=$PWD/build/docker
mkdir -p "$state"
export DOCKER_HOST=unix://$state/docker.sock
dockerd --bridge=none --iptables=false --ip6tables=false \
        --data-root="$state/data" --exec-root="$state/exec" --pidfile="$state/dockerd.pid" \
        --host="$DOCKER_HOST" >"$state/dockerd.log" 2>&1 &
engine=$!

stop_engine() {
    kill -TERM "$engine" 2>/dev/null || true
    wait "$engine" 2>/dev/null || true
    # dockerd leaves its default network namespace mounted under its exec root, and a dockerd
    # that failed during start may leave its data root mounted on itself: nothing stays.
    for mounted in $(awk -v root="$state/" 'index($2, root) == 1 {print $2}' /proc/self/mounts | sort -r); do
        umount "$mounted" 2>/dev/null || true
    done
}
trap stop_engine EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for _ in $(seq 1 300); do
    docker info >/dev/null 2>&1 && break
    if ! kill -0 "$engine" 2>/dev/null; then
        say "dockerd exited during start; the end of $state/dockerd.log:"
        tail -n 15 "$state/dockerd.log" >&2
        exit 1
    fi
    sleep 0.1
done
docker info >/dev/null 2>&1 || { say "dockerd did not answer within 30s ($state/dockerd.log)"; exit 1; }

# Not exec: the trap above stops our dockerd once the command is done.
"$@"
