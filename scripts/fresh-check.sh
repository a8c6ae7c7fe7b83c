#!/usr/bin/env bash
# fresh-check: the README's Quick start on a Debian 12 installed from nothing.
#
# debootstraps a minimal bookworm (variant minbase) into a temporary directory, gives it the
# host's kernel filesystems, copies a clean clone of this checkout in (its committed state:
# what a user gets from `git clone`) and runs inside it what a new user runs: `apt-get install
# make`, `make demo`, then a short part of the suite that exercises charon, the eBPF data
# path and the lab. It prints how long each phase took.
#
# Everything runs in private mount and PID namespaces, and the new system lives on a tmpfs:
# every mount and file it makes is invisible to the host and gone when it ends, every
# process it starts (charons, daemons) is killed with it, also on Ctrl-C or a SIGKILL. It
# never touches the host's bpffs pins, namespaces or processes: the chroot gets its own
# bpffs, its own /run (so its own /run/netns). It needs about 3 GB of memory for the tmpfs.
#
# Caches, to make reruns fast without making them less fresh: debootstrap's tarball of the
# base system's .debs and apt's downloaded .debs (apt checks each against the freshly
# fetched index). The system inside is installed from nothing each run.
#
#   FLOWPIN_FRESH_CACHE   cache directory (/var/cache/flowpin-fresh)
#   FLOWPIN_FRESH_MIRROR  Debian mirror (http://deb.debian.org/debian)
#   FLOWPIN_FRESH_TESTS   the pytest arguments of the suite's part (see TESTS below)
#   FLOWPIN_FRESH_SIZE    the tmpfs's size limit (6G)
#   FLOWPIN_FRESH_RUN     run this command in the clone instead of the Quick start and the
#                         suite's part (make deb-check: scripts/deb-check.sh)
#   FLOWPIN_FRESH_FILES   a directory copied to /root/files in the new system first
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${FLOWPIN_FRESH_CACHE:-/var/cache/flowpin-fresh}
MIRROR=${FLOWPIN_FRESH_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
TARBALL=$CACHE/$SUITE-minbase.tgz
# charon + the lab (IKE/CHILD_SA, traffic, the missing-algorithm preflight), the eBPF data
# path (verdict table, a held TCP stream over veth) and the pure unit tests.
TESTS=${FLOWPIN_FRESH_TESTS:-tests/unit tests/lab/test_preflight.py tests/lab/test_lab.py \
tests/datapath/test_verdicts.py tests/datapath/test_veth.py}

say() { printf 'fresh-check: %s\n' "$*"; }

# ---- outside: the host part (root, debootstrap, a work directory) ----------------------
if [ -z "${FLOWPIN_FRESH_INNER:-}" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "run it as root (it debootstraps, mounts and runs the lab)"; exit 1
    fi
    t0=$(date +%s)
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap on the host"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q \
            debootstrap
    fi
    if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
        say "note: uncommitted changes are not part of the check (it clones the commit)"
    fi
    mkdir -p "$CACHE/apt-archives/partial"
    WORK=$(mktemp -d /var/tmp/flowpin-fresh.XXXXXX)
    export FLOWPIN_FRESH_INNER=1 FLOWPIN_FRESH_WORK=$WORK FLOWPIN_FRESH_REPO=$PWD
    export FLOWPIN_FRESH_COMMIT FLOWPIN_FRESH_T0=$t0
    FLOWPIN_FRESH_COMMIT=$(git rev-parse HEAD)
    # Ctrl-C reaches the inner part too, which cleans up; this part must outlive it to
    # remove what is left. A handler, not an ignore (an ignore is inherited across exec).
    trap ':' INT TERM
    rc=0
    unshare --mount --pid --fork --propagation private -- "$0" "$@" || rc=$?
    # The namespaces are gone with their last process, and their mounts (the tmpfs with the
    # new system among them) with them; here are only logs and an empty mount point.
    if findmnt -rn -o TARGET | grep -q "^$WORK"; then
        say "something is still mounted under $WORK: not removing it"; exit 1
    fi
    rm -rf --one-file-system "$WORK"
    exit $rc
fi

# ---- inside: PID 1 of a private PID namespace, in a private mount namespace ------------
WORK=$FLOWPIN_FRESH_WORK
ROOT=$WORK/root
declare -a PHASES=()

print_times() {
    local p
    for p in "${PHASES[@]}"; do say "$p"; done
    say "total $(( $(date +%s) - FLOWPIN_FRESH_T0 )) s"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    # Everything else in this PID namespace was started by this run (inside the chroot):
    # as PID 1, `kill -1` reaches exactly those processes and no host process.
    kill -KILL -1 2>/dev/null
    sleep 0.2
    # Innermost first, the tmpfs of the new system last (the namespace would drop them
    # anyway when this process ends).
    findmnt -rn -o TARGET | grep "^$ROOT" | sort -r | while read -r m; do
        umount -l "$m"
    done
    print_times
    if [ "$rc" -eq 0 ]; then say "PASSED"; else say "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

phase() {  # phase NAME CMD...: run it, and record how long it took
    local name=$1 start rc=0
    shift
    say "== $name"
    start=$(date +%s)
    "$@" || rc=$?
    PHASES+=("$(printf '%-10s %5d s%s' "$name" $(( $(date +%s) - start )) \
        "$([ $rc -eq 0 ] || echo "  (failed, exit $rc)")")")
    return $rc
}

bootstrap() {
    mkdir -p "$CACHE" "$ROOT"
    mount -t tmpfs -o "size=${FLOWPIN_FRESH_SIZE:-6G},mode=0755" tmpfs "$ROOT"
    # The tarball holds the base system's .debs only (downloaded once, refreshed monthly);
    # --unpack-tarball installs them from nothing into the new root.
    if [ ! -s "$TARBALL" ] || [ -n "$(find "$TARBALL" -mtime +30)" ]; then
        say "downloading the base system into $TARBALL"
        debootstrap --variant=minbase --make-tarball="$TARBALL.part" "$SUITE" \
            "$WORK/tarball" "$MIRROR" >"$WORK/debootstrap-tarball.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap-tarball.log"; return 1; }
        mv "$TARBALL.part" "$TARBALL"
        rm -rf --one-file-system "$WORK/tarball"
    fi
    debootstrap --variant=minbase --unpack-tarball="$TARBALL" "$SUITE" "$ROOT" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; return 1; }
}

mounts() {
    # (The root is a mount point, the tmpfs: the lab's charons make / private in their own
    # mount namespace, which fails on a plain directory.)
    mount -t proc proc "$ROOT/proc"  # this PID namespace's
    mount --rbind /sys "$ROOT/sys"
    # Its own bpffs instance: the pins made inside go away with it; the host's stay unseen.
    mount -t bpf bpf "$ROOT/sys/fs/bpf"
    mount --rbind /dev "$ROOT/dev"  # with /dev/pts, /dev/shm and /dev/net/tun
    # /run: where the lab keeps namespaces (/run/netns), charons' state and daemons' sockets.
    mount -t tmpfs -o mode=0755 tmpfs "$ROOT/run"
    mount -t tmpfs tmpfs "$ROOT/tmp"
    mount --bind "$CACHE/apt-archives" "$ROOT/var/cache/apt/archives"
    # The site's network settings, as any machine there has them: its resolver, and the TLS
    # trust pip needs (a site whose egress re-signs HTTPS has its CA on every machine).
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/site-ca-certificates.crt"
}

clone() {
    git clone -q --no-hardlinks "$FLOWPIN_FRESH_REPO" "$ROOT/root/flowpin"
    git -C "$ROOT/root/flowpin" checkout -q "$FLOWPIN_FRESH_COMMIT"
    say "cloned $(git -C "$ROOT/root/flowpin" log -1 --format='%h %s')"
}

inside() {  # a login-like root shell in the chroot: a clean environment, not the host's
    chroot "$ROOT" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" \
        PIP_CERT=/etc/site-ca-certificates.crt \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "cd /root/flowpin && $1"
}

phase bootstrap bootstrap
phase mounts mounts
phase clone clone
if [ -n "${FLOWPIN_FRESH_FILES:-}" ]; then
    cp -r "$FLOWPIN_FRESH_FILES" "$ROOT/root/files"
fi
if [ -n "${FLOWPIN_FRESH_RUN:-}" ]; then
    phase run inside "$FLOWPIN_FRESH_RUN"
    exit 0
fi
# What the README asks of a fresh machine before its two commands.
phase make inside "apt-get update -q && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends make"
phase demo inside "make demo"
# The suite's part runs with the venv `make demo` made (through `make setup`, as `make test`).
phase tests inside "make setup && .venv/bin/python -m pytest -q -p no:cacheprovider $TESTS"
