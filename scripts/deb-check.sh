#!/usr/bin/env bash
# deb-check: the Debian package on a Debian 12 installed from nothing (make deb-check).
#
# Builds the package twice from this checkout (scripts/build-deb.sh: version 0.1.0 as
# committed, and the same code as a newer version, for the upgrade), then, in the
# debootstrapped bookworm of scripts/fresh-check.sh (its tmpfs root, caches and private
# namespaces: nothing of it touches the host), runs scripts/deb-check-inside.sh: install
# with apt (dependencies from Debian), what is where, the placeholder refused, the daemon
# against a real charon in a network namespace under the unit's capability bounding set,
# upgrade (pinned maps kept), remove (state kept), purge (filters and pins gone).
# fresh-check clones the committed state: commit first.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'deb-check: %s\n' "$*"; }
[ "$(id -u)" -eq 0 ] || { say "run it as root"; exit 1; }

t0=$(date +%s)
DEBS=$(mktemp -d /var/tmp/flowpin-debs.XXXXXX)
trap 'rm -rf "$DEBS"' EXIT
scripts/build-deb.sh "$DEBS/old"
FLOWPIN_DEB_VERSION=0.1.0+check1 scripts/build-deb.sh "$DEBS/new"
mv "$DEBS"/old/*.deb "$DEBS/flowpin-old.deb"
mv "$DEBS"/new/*.deb "$DEBS/flowpin-new.deb"
rmdir "$DEBS/old" "$DEBS/new"
say "built both packages in $(( $(date +%s) - t0 )) s"
export FLOWPIN_FRESH_FILES=$DEBS FLOWPIN_FRESH_RUN="scripts/deb-check-inside.sh /root/files"
scripts/fresh-check.sh
say "total $(( $(date +%s) - t0 )) s"
