# shellcheck shell=bash
# ensure_debs PKG...: install the Debian packages of the list that are not installed yet,
# without their "Recommends" (whatever is needed is named), waiting for another apt to
# finish rather than failing. Sourced by the setup scripts: one home for how flowpin
# installs packages.
ensure_debs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    printf '%s: installing Debian packages: %s\n' "${DEBS_WHO:-setup}" "${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=900 update -q
    # strongSwan's maintainer scripts try to start services; there may be no init system.
    apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}"
}
