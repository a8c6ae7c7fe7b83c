#!/usr/bin/env bash
# Provision one VM of flowpin's Vagrant topology (run by the Vagrantfile, as root).
#
#   vagrant/provision.sh ROLE [--stage kernel|main] [--dry-run]
#   ROLE: bo-client | bo-gw | ho-gw | ho-server
#
# Gateways, stage kernel: make sure the headers of the running kernel can be installed
#   (an old box may run a kernel whose headers left the mirror: then the current kernel and
#   its headers are installed and the Vagrantfile reboots the VM).
# Gateways, stage main: the project's own scripts/setup.sh (Debian packages, venv, bpffs)
#   on a copy of the source in /opt/flowpin, with the real headers of the box's kernel;
#   charon-systemd + swanctl (the ipsec starter masked: one charon); the files rendered by
#   `python -m lab.deploy` (swanctl connection, charon timers + kernel-netlink,
#   flowpin.toml, forwarding, addressing); flowpin.service enabled and started.
# Hosts: python3 and curl (for vagrant/check), the addressing and routes, nothing else.
#
# --dry-run prints every command it would run and every file it would write (with its
# contents, the PSK masked) and changes nothing: it runs only uname, id, sed and the
# renderer's --print (FLOWPIN_DRY_PYTHON, default the project's venv or python3), so it works
# on any machine, as a non-root user too.
set -euo pipefail

usage() { echo "usage: $0 bo-client|bo-gw|ho-gw|ho-server [--stage kernel|main] [--dry-run]" >&2; exit 2; }

ROLE=${1:-}
[ $# -gt 0 ] && shift
DRY=0
STAGE=main
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --stage) STAGE=${2:-}; shift ;;
        *) usage ;;
    esac
    shift
done
case "$ROLE" in
    bo-gw|ho-gw) GATEWAY=1 ;;
    bo-client|ho-server) GATEWAY=0 ;;
    *) usage ;;
esac
case "$STAGE" in kernel|main) ;; *) usage ;; esac

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=${FLOWPIN_SRC:-$(dirname "$HERE")}   # the project (synced to /flowpin-src by Vagrant)
PREFIX=/opt/flowpin                      # flowpin.service runs $PREFIX/.venv/bin/flowpin
KREL=$(uname -r)
export DEBIAN_FRONTEND=noninteractive

say() { printf 'provision[%s]: %s\n' "$ROLE" "$*"; }

# run CMD ARGS...: run it, or print it (shell-quoted) in a dry run.
run() {
    if [ "$DRY" = 1 ]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

apt_install() {
    run apt-get install -y -q --no-install-recommends "$@"
}

if [ "$DRY" = 0 ] && [ "$(id -u)" -ne 0 ]; then
    say "run as root (Vagrant's shell provisioner does)"; exit 1
fi
[ "$DRY" = 1 ] && say "dry run: nothing is executed or written"

# --- stage kernel (gateways) ---------------------------------------------------------------
if [ "$STAGE" = kernel ]; then
    [ "$GATEWAY" = 1 ] || { say "stage kernel is for gateways only"; exit 0; }
    run apt-get update -q
    if [ "$DRY" = 1 ]; then
        say "would check: apt-cache show linux-headers-$KREL"
        say "if present:"
        apt_install "linux-headers-$KREL"
        say "else (the VM then reboots into the new kernel):"
        apt_install linux-image-amd64 linux-headers-amd64
    elif apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
        say "headers for the running kernel $KREL are available"
        apt_install "linux-headers-$KREL"
    else
        say "no linux-headers-$KREL on the mirror: installing the current kernel and its" \
            "headers; the VM reboots into it"
        apt_install linux-image-amd64 linux-headers-amd64
    fi
    exit 0
fi

# --- hosts ---------------------------------------------------------------------------------
render() {
    # render PYTHON: the node's files into /etc, from the project's own definitions. A dry
    # run prints them as rendered from this script's source tree (by FLOWPIN_DRY_PYTHON).
    local py=$1 dry_py=${FLOWPIN_DRY_PYTHON:-python3}
    [ -z "${FLOWPIN_DRY_PYTHON:-}" ] && [ -x "$(dirname "$HERE")/.venv/bin/python" ] &&
        dry_py="$(dirname "$HERE")/.venv/bin/python"
    if [ "$DRY" = 1 ]; then
        run "$py" -m lab.deploy render --node "$ROLE" --out /etc
        say "files it would write:"
        (cd "$(dirname "$HERE")" &&
            "$dry_py" -m lab.deploy render --node "$ROLE" --print) |
            sed 's/^--- /+ write /'
    else
        (cd "$SRC" && "$py" -m lab.deploy render --node "$ROLE" --out /etc)
    fi
}

install_units() {
    for unit in "$@"; do
        run install -m 0644 "$SRC/vagrant/$unit" "/etc/systemd/system/$unit"
    done
    run systemctl daemon-reload
}

if [ "$GATEWAY" = 0 ]; then
    run apt-get update -q
    apt_install python3 curl iproute2 iputils-ping
    # Hosts have no venv: the deploy module needs only the standard library here.
    render python3
    install_units flowpin-net.service
    run systemctl enable flowpin-net.service
    run systemctl restart flowpin-net.service
    say "ready: addresses and routes of $ROLE"
    exit 0
fi

# --- gateways ------------------------------------------------------------------------------
# One charon: charon-systemd (strongswan.service, swanctl). strongswan-charon (which the
# project's setup installs) pulls the legacy ipsec starter, which would start a second charon
# on the same ports and VICI socket: mask it before any package can start it.
run systemctl mask strongswan-starter.service
run apt-get update -q
# The real headers of the box's kernel (bcc compiles against them); setup.sh maps Debian's
# generic headers only when these are missing, and they are not, here.
apt_install "linux-headers-$KREL" charon-systemd strongswan-swanctl nftables rsync

say "installing the project in $PREFIX (from $SRC)"
run mkdir -p "$PREFIX"
run rsync -a --delete --exclude .git/ --exclude .venv/ --exclude .vagrant/ \
    --exclude __pycache__/ --exclude .pytest_cache/ --exclude .ruff_cache/ \
    --exclude '*.egg-info/' "$SRC/" "$PREFIX/"
# The project's own setup (packages, venv with bcc from Debian, bpffs). FLOWPIN_DEV_PKGS=''
# leaves out what only the build machine's tests need (vagrant, systemd-analyze).
run env FLOWPIN_DEV_PKGS= VENV="$PREFIX/.venv" "$PREFIX/scripts/setup.sh"
# /usr/sbin/flowpin, where flowpin.service (shared with the Debian package) finds it.
run ln -sfn "$PREFIX/.venv/bin/flowpin" /usr/sbin/flowpin
# the man page the unit's Documentation= names, as the Debian package installs it
run install -D -m 0644 "$PREFIX/docs/man/flowpin.8" /usr/local/share/man/man8/flowpin.8

SRC=$PREFIX
if [ -z "${FLOWPIN_PSK:-}" ]; then
    # Both gateways need the same key: the Vagrantfile makes one and passes it to both.
    if [ "$DRY" = 0 ]; then say "FLOWPIN_PSK is not set"; exit 1; fi
    say "FLOWPIN_PSK is not set (the Vagrantfile sets it)"
fi
render "$PREFIX/.venv/bin/python"

run sysctl -q -p /etc/sysctl.d/90-flowpin.conf
install_units flowpin-net.service flowpin.service
run systemctl enable flowpin-net.service strongswan.service flowpin.service
run systemctl restart flowpin-net.service
# strongswan.service loads /etc/swanctl (our connection) and /etc/strongswan.d at start.
run systemctl restart strongswan.service
run systemctl restart flowpin.service
if [ "$DRY" = 0 ]; then
    for _ in $(seq 60); do
        systemctl is-active -q flowpin.service && flowpin show sysopt >/dev/null 2>&1 && break
        sleep 1
    done
    systemctl --no-pager --lines=5 status strongswan.service flowpin.service || true
    flowpin show sysopt
    swanctl --list-conns
fi
say "ready: strongswan.service (kernel-netlink) and flowpin.service"
