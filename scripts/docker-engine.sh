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
# Several runs from one checkout share our dockerd (one data root takes one engine): each run
# holds users.lock shared while it uses the engine, and the last one to let go stops it.
# start.lock makes the look-then-start of one run whole.
exec 8>"$state/users.lock" 9>"$state/start.lock"

stop_engine() {
    local pid
    pid=$(cat "$state/dockerd.pid" 2>/dev/null || true)
    if [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null; then
        for _ in $(seq 1 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    # dockerd leaves its default network namespace mounted under its exec root, and a dockerd
    # that failed during start may leave its data root mounted on itself: nothing stays.
    for mounted in $(awk -v root="$state/" 'index($2, root) == 1 {print $2}' /proc/self/mounts | sort -r); do
        umount "$mounted" 2>/dev/null || true
    done
}

leave() {
    flock -u 8
    if flock -xn 8; then  # no other run uses the engine
        stop_engine
        flock -u 8
    fi
}

flock -x 9
flock -s 8
trap leave EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if ! docker info >/dev/null 2>&1; then
    stop_engine  # what a dockerd that died left mounted
    # A session of its own: the engine outlives this run while other runs use it.
    setsid dockerd --bridge=none --iptables=false --ip6tables=false \
            --data-root="$state/data" --exec-root="$state/exec" --pidfile="$state/dockerd.pid" \
            --host="$DOCKER_HOST" >"$state/dockerd.log" 2>&1 </dev/null 8>&- 9>&- &
    engine=$!
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
fi
flock -u 9

# Not exec: the trap above stops the engine once the last run using it is done.
"$@" 8>&- 9>&-
