#!/usr/bin/env bash
# The local MySQL images that the sandbox and the tests run mysqld from. MySQL is not packaged
# for Debian 12 and Docker Hub is out of reach, so each image is a minimal chroot of a
# distribution that packages that MySQL line, with its server, its client headers and a
# compiler (to build the UDF against that server's own headers); `docker import` turns the
# chroot into an image. Nothing of those distributions touches the host.
#
#   VERSION  image                    from
#   9        workerhost-mysql:9       Debian sid (development suite): mysql-server-core 9.x
#   8.4      workerhost-mysql:8.4     Ubuntu 26.04 LTS (resolute): mysql-server-core 8.4.x
#   8.0      workerhost-mysql:8.0     Ubuntu 24.04 LTS (noble, with noble-updates): 8.0.x
#
# Each image is also tagged with the exact server version (workerhost-mysql:8.0.46), and 9 as
# workerhost-mysql:latest. Built once: the chroot stays under build/mysql-VERSION-root, the
# image in the Docker engine; a second run checks both and returns in a second. Needs root and
# a running Docker engine (scripts/docker-engine.sh starts one). Prints each image's name.
#
#   scripts/mysql-image.sh [--rebuild] [VERSION...]   (no VERSION: all three)
set -euo pipefail
cd "$(dirname "$0")/.."

REPO=workerhost-mysql
ALL_VERSIONS=(9 8.4 8.0)
UBUNTU_MIRROR=http://archive.ubuntu.com/ubuntu
# Ubuntu's archive keyring, to check the suites' Release files: Debian 12 does not package it,
# so its .deb comes from Ubuntu's pool and must match this digest before it is trusted.
UBUNTU_KEYRING_DEB=pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb
UBUNTU_KEYRING_SHA256=36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8
COMMON_PACKAGES=(libmysqlclient-dev gcc libc6-dev make)

say() { echo "mysql-image: $*" >&2; }

rebuild=0
versions=()
for arg in "$@"; do
    case $arg in
        --rebuild) rebuild=1 ;;
        9|8.4|8.0) versions+=("$arg") ;;
        *) say "unknown argument '$arg'; usage: $0 [--rebuild] [9|8.4|8.0 ...]"; exit 2 ;;
    esac
done
[[ ${#versions[@]} -gt 0 ]] || versions=("${ALL_VERSIONS[@]}")

if [[ $(id -u) -ne 0 ]]; then
    say "building the chroots needs root (debootstrap, chroot); run: sudo $0 $*"
    exit 1
fi

# The Debian mirror the host's own apt sources use.
debian_mirror() {
    local found
    found=$(grep -hoE '^(URIs:|deb) +[a-z]+://[^ ]+debian/?' /etc/apt/sources.list \
                /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -v security | awk '{print $2}' | head -n 1)
    echo "${found:-http://deb.debian.org/debian}"
}

ubuntu_keyring() {
    local dir=build/ubuntu-keyring deb
    if [[ ! -f $dir/ubuntu-archive-keyring.gpg ]]; then
        mkdir -p "$dir"
        deb=$dir/keyring.deb
        curl -fsS --retry 3 -o "$deb" "$UBUNTU_MIRROR/$UBUNTU_KEYRING_DEB" || {
            say "cannot download Ubuntu's archive keyring from $UBUNTU_MIRROR"; exit 1; }
        echo "$UBUNTU_KEYRING_SHA256  $deb" | sha256sum -c --quiet - || {
            say "Ubuntu's keyring package does not match its pinned digest; not trusting it"
            exit 1; }
        # Into a new file, moved into place only when whole: a later run trusts what is there.
        dpkg-deb --fsys-tarfile "$deb" \
            | tar -xO ./usr/share/keyrings/ubuntu-archive-keyring.gpg >"$dir/keyring.new" \
            && [[ -s $dir/keyring.new ]] || {
            say "cannot take the keyring out of Ubuntu's keyring package"; exit 1; }
        mv "$dir/keyring.new" "$dir/ubuntu-archive-keyring.gpg"
        rm -f "$deb"
    fi
    echo "$PWD/$dir/ubuntu-archive-keyring.gpg"
}

build_image() {
    local version=$1 root=build/mysql-$1-root log=build/mysql-$1-root.log
    local suite mirror server_package extra_suite="" keyring_args=() script=""
    local packages=()
    case $version in
        9)   suite=sid; mirror=$(debian_mirror); server_package=mysql-server-core
             packages=(mysql-server-core mysql-client pkg-config) ;;
        8.4) suite=resolute; mirror=$UBUNTU_MIRROR; server_package=mysql-server-core
             packages=(mysql-server-core mysql-client) ;;
        8.0) suite=noble; extra_suite=noble-updates; mirror=$UBUNTU_MIRROR
             server_package=mysql-server-core-8.0
             packages=(mysql-server-core-8.0 mysql-client-8.0) ;;
    esac
    packages+=("${COMMON_PACKAGES[@]}")
    if [[ $mirror == "$UBUNTU_MIRROR" ]]; then
        # Debian 12's debootstrap has no script named after newer Ubuntu releases; gutsy's is
        # the one every later Ubuntu release uses.
        local keyring
        keyring=$(ubuntu_keyring) || exit 1  # $(...) does not stop the script by itself
        keyring_args=(--keyring="$keyring")
        script=/usr/share/debootstrap/scripts/gutsy
    fi

    [[ $rebuild -eq 0 ]] || rm -rf "$root"
    if [[ ! -f $root/.complete ]]; then
        rm -rf "$root"
        mkdir -p "$root"
        say "MySQL $version, step 1/3: a minimal $suite in $root (from $mirror); about a minute"
        # shellcheck disable=SC2086
        debootstrap --variant=minbase "${keyring_args[@]}" "$suite" "$root" "$mirror" $script \
            >"$log" 2>&1 || {
            say "debootstrap failed; the end of $log:"; tail -n 15 "$log" >&2; exit 1; }
        # A development suite's Release file may be past its Valid-Until; services never start
        # inside the chroot.
        echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99no-valid-until"
        printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
        chmod +x "$root/usr/sbin/policy-rc.d"
        if [[ -n $extra_suite ]]; then
            echo "deb $mirror $extra_suite main" >>"$root/etc/apt/sources.list"
        fi
        say "MySQL $version, step 2/3: ${packages[*]}"
        {
            chroot "$root" apt-get update -q
            chroot "$root" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends "${packages[@]}"
            chroot "$root" apt-get clean
        } >>"$log" 2>&1 || {
            say "installing MySQL $version in the chroot failed; the end of $log:"
            tail -n 15 "$log" >&2
            exit 1
        }
        rm -rf "$root"/var/lib/apt/lists/*
        touch "$root/.complete"
    fi

    local exact image
    exact=$(chroot "$root" dpkg-query -W -f='${Version}' "$server_package" \
            | sed -E 's/^[0-9]+://; s/-[^-]*$//')
    image="$REPO:$exact"
    if [[ $rebuild -eq 1 ]] || ! docker image inspect "$image" >/dev/null 2>&1; then
        say "MySQL $version, step 3/3: docker import of the chroot as $image"
        tar -C "$root" --exclude=./.complete -c . | docker import - "$image" >/dev/null
    fi
    docker tag "$image" "$REPO:$version"
    [[ $version != 9 ]] || docker tag "$image" "$REPO:latest"
    echo "$REPO:$version ($exact)"
}

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
fi
for version in "${versions[@]}"; do
    build_image "$version"
done
