#!/usr/bin/env bash
# The local MySQL image that the sandbox and the tests run mysqld from: MySQL is not packaged
# for Debian 12, so a minimal chroot of Debian's development suite (sid) carries Debian's own
# MySQL server, its client headers, a compiler and libgearman (to build the UDF against MySQL's
# headers), and `docker import` turns the chroot into an image. Nothing of sid touches the host.
#
# Built once: the chroot stays under build/mysql-root, the image in the Docker engine; a second
# run checks both and returns in a second. Needs root and a running Docker engine
# (scripts/docker-engine.sh starts one). Prints the image's name last.
#
#   scripts/mysql-image.sh           build what is missing
#   scripts/mysql-image.sh --rebuild a fresh chroot and image
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT_DIR=build/mysql-root
REPO=workerhost-mysql
PACKAGES=(mysql-server-core mysql-client libmysqlclient-dev gcc libc6-dev make pkg-config
          libgearman-dev)

say() { echo "mysql-image: $*" >&2; }

if [[ ${1:-} == --rebuild ]]; then
    rm -rf "$ROOT_DIR"
fi

if [[ $(id -u) -ne 0 ]]; then
    say "building the chroot needs root (debootstrap, chroot); run: sudo $0"
    exit 1
fi

# The mirror the host's own apt sources use: the only one this machine may reach.
mirror() {
    local found
    found=$(grep -hoE '^(URIs:|deb) +[a-z]+://[^ ]+debian/?' /etc/apt/sources.list \
                /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -v security | awk '{print $2}' | head -n 1)
    echo "${found:-http://deb.debian.org/debian}"
}

if [[ ! -f $ROOT_DIR/.complete ]]; then
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
    fi
    rm -rf "$ROOT_DIR"
    mkdir -p "$ROOT_DIR"
    say "step 1/3: a minimal Debian sid in $ROOT_DIR (from $(mirror)); about a minute"
    debootstrap --variant=minbase sid "$ROOT_DIR" "$(mirror)" >build/mysql-root.log 2>&1 || {
        say "debootstrap failed; the end of build/mysql-root.log:"; tail -n 15 build/mysql-root.log >&2
        exit 1
    }
    # sid's Release file may be past its Valid-Until; services never start inside the chroot.
    echo 'Acquire::Check-Valid-Until "false";' >"$ROOT_DIR/etc/apt/apt.conf.d/99no-valid-until"
    printf '#!/bin/sh\nexit 101\n' >"$ROOT_DIR/usr/sbin/policy-rc.d"
    chmod +x "$ROOT_DIR/usr/sbin/policy-rc.d"
    say "step 2/3: ${PACKAGES[*]}"
    {
        chroot "$ROOT_DIR" apt-get update -q
        chroot "$ROOT_DIR" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
        chroot "$ROOT_DIR" apt-get clean
    } >>build/mysql-root.log 2>&1 || {
        say "installing MySQL in the chroot failed; the end of build/mysql-root.log:"
        tail -n 15 build/mysql-root.log >&2
        exit 1
    }
    rm -rf "$ROOT_DIR"/var/lib/apt/lists/*
    touch "$ROOT_DIR/.complete"
fi

version=$(chroot "$ROOT_DIR" dpkg-query -W -f='${Version}' mysql-server-core \
          | sed -E 's/^[0-9]+://; s/-[^-]*$//')
image="$REPO:$version"
if ! docker image inspect "$image" >/dev/null 2>&1; then
    say "step 3/3: docker import of the chroot as $image"
    tar -C "$ROOT_DIR" --exclude=./.complete -c . | docker import - "$image" >/dev/null
    docker tag "$image" "$REPO:latest"
fi
echo "$image"
