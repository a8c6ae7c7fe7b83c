#!/usr/bin/env bash
# The inside of make deb-check (scripts/deb-check.sh), run as root in a fresh bookworm
# chroot by scripts/fresh-check.sh: $1 holds flowpin-old.deb and flowpin-new.deb.
# Each check prints "ok" or "FAIL"; the last line says how many of each.
set -uo pipefail
FILES=$1
NS=fpdeb
CHECK=/root/check
CAPS=$(sed -n 's/^CapabilityBoundingSet=//p' /lib/systemd/system/flowpin.service 2>/dev/null)
passed=0 failed=0
export DEBIAN_FRONTEND=noninteractive
say() { printf 'deb-check: %s\n' "$*"; }
ok() { passed=$((passed + 1)); say "ok: $*"; }
fail() { failed=$((failed + 1)); say "FAIL: $*"; }
check() {  # check "what" CMD...: CMD's success is the check
    local what=$1; shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
finish() {
    [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null
    [ -n "${CHARON:-}" ] && kill "$CHARON" 2>/dev/null
    ip netns del "$NS" 2>/dev/null
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
}
trap 'finish; exit $?' EXIT
# (a function: not for what runs in the background, where $! would be a subshell's pid and
# a kill would leave the process itself running; those call nsenter themselves)
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }
# flowpin's hooks on DEV HOOK: clsact filters as tc lists them, and the programs on the tcx
# hook (the daemon's attach mode on a kernel with tcx), as the kernel lists them when asked
# through libbpf with ctypes (Debian 12's bpftool and tc predate tcx). 46/47: BPF_TCX_INGRESS
# and BPF_TCX_EGRESS (linux/bpf.h); a program's name is at offset 64 of bpf_prog_info.
tcx_progs() {
    in_ns python3 - "$1" "$2" 2>/dev/null <<'PY'
import ctypes, socket, sys
lib = ctypes.CDLL("libbpf.so.1")
class Query(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("query_flags", ctypes.c_uint32),
                ("attach_flags", ctypes.c_uint32), ("prog_ids", ctypes.POINTER(ctypes.c_uint32)),
                ("prog_cnt", ctypes.c_uint32), ("prog_attach_flags", ctypes.c_void_p)]
ids = (ctypes.c_uint32 * 64)()
q = Query(sz=ctypes.sizeof(Query), prog_ids=ids, prog_cnt=64)
hook = {"ingress": 46, "egress": 47}[sys.argv[2]]
if lib.bpf_prog_query_opts(socket.if_nametoindex(sys.argv[1]), hook, ctypes.byref(q)):
    sys.exit(0)
for prog_id in ids[:q.prog_cnt]:
    info, size = (ctypes.c_uint8 * 80)(), ctypes.c_uint32(80)
    lib.bpf_obj_get_info_by_fd(lib.bpf_prog_get_fd_by_id(prog_id), info, ctypes.byref(size))
    print(bytes(info[64:80]).split(b"\0")[0].decode())
PY
}
filters() { in_ns tc filter show dev "$1" "$2" 2>/dev/null; tcx_progs "$1" "$2"; }
# (tc's output in a variable first: with pipefail, grep -q leaving early would fail the
# pipeline with tc's SIGPIPE, and a negated check would pass for the wrong reason)
attached() {
    local lan wan; lan=$(filters lan0 ingress); wan=$(filters wan0 egress)
    grep -q fp_outbound <<<"$lan" && grep -q fp_wan_out <<<"$wan"
}
none_left() {
    local all; all=$(filters lan0 ingress; filters lan0 egress; filters wan0 ingress
                     filters wan0 egress)
    ! grep -q fp_ <<<"$all"
}

# ---- install: apt resolves the dependencies from Debian, Recommends included (apt's default)
apt-get update -q >/dev/null
t=$(date +%s)
if ! apt-get install -y -q "$FILES/flowpin-old.deb" >"$CHECK.install.log" 2>&1; then
    mkdir -p "$CHECK"; tail -30 "$CHECK.install.log"; fail "apt-get install flowpin-old.deb"
    exit 1
fi
ok "apt-get install ./flowpin-old.deb with its dependencies ($(( $(date +%s) - t )) s)"
mkdir -p "$CHECK"
CAPS=$(sed -n 's/^CapabilityBoundingSet=//p' /lib/systemd/system/flowpin.service)

# ---- what is where
for f in /usr/sbin/flowpin /etc/flowpin/flowpin.toml /lib/systemd/system/flowpin.service \
         /usr/share/doc/flowpin/copyright /usr/share/doc/flowpin/examples/flowpin.example.toml; do
    check "$f installed" test -e "$f"
done
check "/usr/share/doc/flowpin/install.md(.gz) installed" \
    sh -c 'ls /usr/share/doc/flowpin/install.md* >/dev/null 2>&1'
check "/etc/flowpin/flowpin.toml is a conffile" \
    sh -c "dpkg-query -W -f='\${Conffiles}' flowpin | grep -q /etc/flowpin/flowpin.toml"
# (from /, not the clone: python3 -c puts the working directory first on sys.path)
check "the product only: no lab, no bench, no rig subcommands" env -C / python3 -c '
import importlib.util, sys
from importlib.metadata import entry_points
assert not [m for m in ("lab", "bench", "tests") if importlib.util.find_spec(m)], "rig module"
assert not list(entry_points(group="flowpin.subcommands")), "rig subcommands"'
check "flowpin --help lists no lab/demo/bench" \
    sh -c '! /usr/sbin/flowpin --help | grep -Eq "\b(lab|demo|bench)\b"'
check "the unit starts /usr/sbin/flowpin" \
    grep -q "^ExecStart=/usr/sbin/flowpin daemon --config /etc/flowpin/flowpin.toml" \
    /lib/systemd/system/flowpin.service

# ---- the placeholder, left: refused by file, line and key
out=$(/usr/sbin/flowpin daemon --config /etc/flowpin/flowpin.toml 2>&1); rc=$?
line=$(grep -n '^lan-interfaces' /etc/flowpin/flowpin.toml | cut -d: -f1)
check "unedited config refused (exit $rc): $out" \
    sh -c "[ $rc -eq 2 ] && printf '%s' \"\$1\" | grep -q '^flowpin: error: /etc/flowpin/flowpin.toml:$line: datapath.lan-interfaces: \"CHANGE-ME-lan-interface\" is a placeholder'" \
    _ "$out"

# ---- bcc needs kernel headers at /lib/modules/$(uname -r)/build. This chroot runs on the
# host's kernel, which has no Debian headers package; the Recommends brought Debian's
# linux-headers-amd64, mapped there as make setup does on such a host (docs/install.md).
KREL=$(uname -r)
if [ ! -e "/lib/modules/$KREL/build/include" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1)
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$hdr" "/lib/modules/$KREL/build"; ln -sfn "${hdr%-amd64}-common" "/lib/modules/$KREL/source"
    say "mapped $hdr for bcc (the host's kernel $KREL has no headers package)"
fi

# ---- a gateway in a network namespace: LAN and WAN veths, a real charon
ip netns add "$NS"
in_ns ip link add lan0 type veth peer name lan0p
in_ns ip link add wan0 type veth peer name wan0p
for l in lan0 lan0p wan0 wan0p lo; do in_ns ip link set "$l" up; done
cat >"$CHECK/strongswan.conf" <<CONF
charon {
  plugins { vici { socket = unix://$CHECK/charon.vici } }
}
charon-systemd {
  plugins { vici { socket = unix://$CHECK/charon.vici } }
}
CONF
charon=$(ls /usr/sbin/charon-systemd /usr/lib/ipsec/charon 2>/dev/null | head -1)
# its own /run (pid file), as the lab runs several charons
STRONGSWAN_CONF=$CHECK/strongswan.conf nsenter --net="/run/netns/$NS" unshare -m sh -c \
    "mount -t tmpfs tmpfs /run; exec $charon" >"$CHECK/charon.log" 2>&1 &
CHARON=$!
for _ in $(seq 100); do [ -S "$CHECK/charon.vici" ] && break; sleep 0.1; done
check "charon ($charon) up, VICI at $CHECK/charon.vici" test -S "$CHECK/charon.vici"

sed -i -e 's/"CHANGE-ME-lan-interface"/"lan0"/' \
    -e "s|^socket = \"/var/run/charon.vici\"|socket = \"$CHECK/charon.vici\"|" \
    -e 's|^# wan-interfaces = \["eth0"\]|wan-interfaces = ["wan0"]|' /etc/flowpin/flowpin.toml
check "flowpin daemon --check-config-like parse of the edited file" python3 -c '
import sys; sys.path.append("/usr/share/flowpin/vendor")
from controlplane.config import load; load("/etc/flowpin/flowpin.toml")'

start_daemon() {  # as flowpin.service would: its capability bounding set, no new privileges
    local log=$CHECK/daemon-$1.log bnd
    bnd="-all,$(for c in $CAPS; do printf '+%s,' "$(echo "${c#CAP_}" | tr A-Z a-z)"; done)"
    nsenter --net="/run/netns/$NS" setpriv --bounding-set "${bnd%,}" --no-new-privs \
        /usr/sbin/flowpin daemon --config /etc/flowpin/flowpin.toml >"$log" 2>&1 &
    DAEMON=$!
    local t0; t0=$(date +%s)
    for _ in $(seq 600); do
        kill -0 "$DAEMON" 2>/dev/null || break
        if /usr/sbin/flowpin show sysopt >/dev/null 2>&1; then
            say "daemon $DAEMON answering after $(( $(date +%s) - t0 )) s: $(grep -o \
                'data path .* attached to [^;]*' "$log")"
            return 0
        fi
        sleep 0.2
    done
    cat "$log"; return 1
}
stop_daemon() {  # as systemd stops it: SIGTERM, wait
    kill -TERM "$DAEMON"; wait "$DAEMON"; DAEMON=
    if /usr/sbin/flowpin show sysopt >/dev/null 2>&1; then fail "a daemon still answers"; fi
}
PINS=/sys/fs/bpf/flowpin/default

check "the installed daemon starts in the unit's sandbox" start_daemon 1
check "  attached to lan0, WAN guard on wan0, following charon" \
    sh -c "grep -q 'attached to lan0' $CHECK/daemon-1.log && grep -q 'WAN guard attached on wan0' $CHECK/daemon-1.log"
check "  filters on lan0 and wan0" attached
check "  maps pinned with their layout in $PINS" \
    sh -c '[ -e "$1/fp_layout" ] && [ "$(ls "$1" | wc -l)" -gt 5 ]' _ "$PINS"
check "  flowpin show sysopt answers" /usr/sbin/flowpin show sysopt
# the pins' inodes: a map reused keeps its pin, one made anew gets another (any map names)
pins() { stat -c '%n %i' "$PINS"/*; }
inodes=$(pins)

# ---- systemd-analyze verify on the installed unit (systemd and man-db only for this, as an
# admin has them): it also opens the unit's Documentation=man:flowpin(8), the package's page
apt-get install -y -q --no-install-recommends systemd man-db >/dev/null 2>&1
check "systemd-analyze verify flowpin.service" \
    sh -c 'out=$(systemd-analyze verify /lib/systemd/system/flowpin.service 2>&1); rc=$?;
           echo "$out" | grep flowpin; [ $rc -eq 0 ] && ! echo "$out" | grep -q flowpin'

# ---- upgrade: a newer package over the running daemon, which is then restarted on it (what
# the postinst's try-restart does under systemd) and keeps the pinned maps
check "apt-get install ./flowpin-new.deb (upgrade, the daemon running)" \
    sh -c "apt-get install -y -q $FILES/flowpin-new.deb >$CHECK.upgrade.log 2>&1"
check "  version 0.1.0+check1" \
    sh -c "[ \"\$(dpkg-query -W -f='\${Version}' flowpin)\" = 0.1.0+check1 ]"
check "  the edited config kept" grep -q '"lan0"' /etc/flowpin/flowpin.toml
stop_daemon
check "  the daemon restarted on the new package" start_daemon 2
check "  the same pinned maps ($(pins | wc -l) pins, same inodes)" \
    sh -c '[ "$(stat -c "%n %i" "$1"/*)" = "$2" ]' _ "$PINS" "$inodes"

# ---- maps of another layout (as a flowpin whose maps.h changed would find them): the
# installed daemon refuses them, says what to do, and leaves them and the filters alone
stop_daemon
layout() {  # layout [HEX]: print the pinned layout id, or write HEX (16 digits) there
    env -C / python3 - "$PINS/fp_layout" "$@" <<'PY'
import os, sys
from controlplane import libbpf
fd = libbpf.obj_get(sys.argv[1])
if len(sys.argv) > 2:
    libbpf.array_update(fd, 0, bytes.fromhex(sys.argv[2]))
print(libbpf.array_lookup(fd, 0, 8).hex())
os.close(fd)
PY
}
mine=$(layout)
layout 0123456789abcdef >/dev/null
out=$(in_ns timeout 120 /usr/sbin/flowpin daemon --config /etc/flowpin/flowpin.toml 2>&1); rc=$?
check "a daemon refuses maps of another layout (exit $rc)" \
    sh -c "[ $rc -eq 1 ] && printf '%s' \"\$1\" | grep -q 'this flowpin needs layout' &&
           printf '%s' \"\$1\" | grep -q 'rm -r $PINS'" _ "$out"
say "  it said: $(printf '%s' "$out" | grep 'needs layout')"
check "  the maps and filters left as they were" \
    sh -c '[ "$(stat -c "%n %i" "$1"/*)" = "$2" ]' _ "$PINS" "$inodes"
check "  ... filters" attached
layout "$mine" >/dev/null
check "  back to its own layout, it starts again" start_daemon 3

# ---- remove: the daemon stopped, the data path and the config stay (fail closed)
stop_daemon
check "apt-get remove flowpin" sh -c "apt-get remove -y -q flowpin >$CHECK.remove.log 2>&1"
check "  /usr/sbin/flowpin gone" test ! -e /usr/sbin/flowpin
check "  /etc/flowpin/flowpin.toml kept" test -e /etc/flowpin/flowpin.toml
check "  pinned maps kept" sh -c '[ "$(stat -c "%n %i" "$1"/*)" = "$2" ]' _ "$PINS" "$inodes"
check "  LAN filters and WAN guard still attached" attached

# ---- purge (from the gateway's network namespace, where its filters are)
check "apt-get purge flowpin" in_ns sh -c "apt-get purge -y -q flowpin >$CHECK.purge.log 2>&1"
check "  config gone" test ! -e /etc/flowpin
check "  pinned maps gone" test ! -e /sys/fs/bpf/flowpin
check "  no flowpin filter left on lan0 or wan0" none_left
check "  not installed" sh -c "! dpkg-query -W -f='\${Status}' flowpin 2>/dev/null | grep -q 'ok installed'"
