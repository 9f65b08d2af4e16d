#!/usr/bin/env bash
# Idempotent setup: the Debian packages the project needs, then .venv with the package and its
# test extra. A second run checks and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# MySQL runs in a container (Debian 12 has no MySQL): docker.io for the engine, debootstrap for
# the image that scripts/mysql-image.sh builds; openssl makes a certificate for a TLS test;
# chromium and chromium-driver run the console's browser tests (selenium, headless).
PACKAGES=(gearman-job-server gearman-tools libgearman-dev mariadb-server mariadb-client
          libmariadb-dev gcc make pkg-config valgrind python3-venv docker.io debootstrap
          openssl chromium chromium-driver)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages: ${missing[*]}" >&2
        echo "setup: run this as root, then run make setup again:" >&2
        echo "    sudo sh -c '$cmd'" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    # Debian's packages start their services on a normal machine; the project runs its own.
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.setup-stamp
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "setup: installing the package and its test extra into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi
