#!/usr/bin/env bash
# build-deb: the Debian package of flowpin (the gateway's: the product only), built with
# Debian's own tools (debhelper, dh-python's pybuild with its pyproject plugin) from a copy
# of this checkout's files (tracked and new, not ignored), so the tree stays clean.
# The .deb lands in out/deb/ (or $1). The build tools are installed here if missing: they
# are the build machine's, never the gateway's.
#   FLOWPIN_DEB_VERSION  build as this version (a changelog entry on top; deb-check's upgrade)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-out/deb}")
BUILD_PKGS=(debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
            python3-wheel fakeroot)
say() { printf 'build-deb: %s\n' "$*"; }

missing=()
for p in "${BUILD_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing the build tools: ${missing[*]}"
    [ "$(id -u)" -eq 0 ] || { say "run as root to install them"; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=900 update -q
    apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}"
fi

WORK=$(mktemp -d /tmp/flowpin-deb.XXXXXX)
trap '[ -n "${FLOWPIN_DEB_KEEP:-}" ] || rm -rf "$WORK"' EXIT
mkdir "$WORK/flowpin"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp -P --parents -t "$WORK/flowpin"
if [ -n "${FLOWPIN_DEB_VERSION:-}" ]; then
    entry=$(printf 'flowpin (%s) bookworm; urgency=medium\n\n  * Build %s.\n\n -- %s  %s\n\n' \
        "$FLOWPIN_DEB_VERSION" "$FLOWPIN_DEB_VERSION" \
        "$(sed -n 's/^ -- \(.*>\)  .*/\1/p' debian/changelog | head -1)" "$(date -R)")
    { printf '%s\n' "$entry"; cat debian/changelog; } >"$WORK/flowpin/debian/changelog"
fi
# Debian's python3, whatever else a PATH may put first (pyenv, a venv)
(cd "$WORK/flowpin" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; exit 1; }
mkdir -p "$OUT"
deb=$(ls "$WORK"/flowpin_*_all.deb)
cp "$deb" "$OUT/"
say "$OUT/$(basename "$deb")"
