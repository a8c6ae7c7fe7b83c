#!/usr/bin/env bash
# flowpin setup: idempotent, and fast when everything is already in place.
#  - Debian packages of scripts/debian-packages.txt (apt-get update only when one is missing)
#  - kernel headers for bcc, mapped from Debian's linux-headers-amd64 only when the
#    running kernel has none of its own (said when it is done)
#  - bpffs on /sys/fs/bpf
#  - a venv from Debian's python3 with system site packages (bcc, libnftables), and
#    `pip install -e .[dev]`
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
# The package list lives in one file, read here and by the tests; the deployment tests'
# extra packages are left out with FLOWPIN_DEV_PKGS= (as the VMs' provisioning does).
read -r -a PKGS <<<"$(sed 's/#.*//' scripts/debian-packages.txt | tr '\n' ' ')"
# shellcheck disable=SC2206  # the dev packages are a space-separated list
PKGS+=(${FLOWPIN_DEV_PKGS-vagrant systemd})

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    say "flowpin's setup installs packages and mounts bpffs: run it as root"; exit 1
fi

# shellcheck source=scripts/debs.sh
. scripts/debs.sh
ensure_debs "${PKGS[@]}"

# bcc compiles at load time against /lib/modules/$(uname -r)/build. Only when the running
# kernel has no headers of its own, map Debian's generic ones: networking programs use the
# UAPI headers only, which are stable across kernel versions.
KREL=$(uname -r)
if [ ! -e "/lib/modules/$KREL/build/include" ]; then
    ensure_debs linux-headers-amd64
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1)
    common=${hdr%-amd64}-common
    say "no kernel headers for $KREL: mapping $hdr (Debian's) for bcc"
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$hdr" "/lib/modules/$KREL/build"
    ln -sfn "$common" "/lib/modules/$KREL/source"
fi

if ! mountpoint -q /sys/fs/bpf; then
    say "mounting bpffs on /sys/fs/bpf"
    mount -t bpf bpf /sys/fs/bpf
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating venv $VENV (Debian's python3, system site packages)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.flowpin-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    say "pip install -e .[dev]"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
"$VENV/bin/python" - <<'PY'
import bcc, nftables, prometheus_client, pyroute2, systemd.daemon, vici  # noqa: F401 -- fail here, by name, if one is missing
PY
say "ready ($VENV)"
