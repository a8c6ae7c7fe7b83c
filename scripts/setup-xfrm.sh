#!/usr/bin/env bash
# What `make test-xfrm` needs on top of `make setup`, installed only for that target:
#  - QEMU (Debian's qemu-system-x86) and busybox-static (virtme-ng's initramfs)
#  - Debian's kernel and the headers of the SAME version (linux-image-amd64 and
#    linux-headers-amd64 are one source package: their versions always match), so bcc
#    compiles in the guest against the guest kernel's own headers
#  - virtme-ng from PyPI in its own venv (.venv-vm): the project's venv stays as it is
set -euo pipefail
cd "$(dirname "$0")/.."
VM_VENV=${XFRM_VENV:-.venv-vm}
say() { printf 'setup-xfrm: %s\n' "$*"; }

PKGS=(qemu-system-x86 busybox-static linux-image-amd64 linux-headers-amd64)
# shellcheck source=scripts/debs.sh
. scripts/debs.sh
DEBS_WHO=setup-xfrm ensure_debs "${PKGS[@]}"
img=$(dpkg-query -W -f='${Depends}' linux-image-amd64 | grep -o 'linux-image-[^ ,]*' | head -1)
hdr=$(dpkg-query -W -f='${Depends}' linux-headers-amd64 | grep -o 'linux-headers-[^ ,]*' | head -1)
if [ "${img#linux-image-}" != "${hdr#linux-headers-}" ]; then
    say "kernel image $img and headers $hdr differ: bcc in the guest needs the same version"
    exit 1
fi
if [ ! -x "$VM_VENV/bin/vng" ]; then
    say "creating $VM_VENV with virtme-ng"
    /usr/bin/python3 -m venv "$VM_VENV"
    "$VM_VENV/bin/pip" install -q --disable-pip-version-check 'virtme-ng>=1.30'
fi
say "ready: ${img#linux-image-}, $("$VM_VENV/bin/vng" --version 2>&1 | head -1)"
