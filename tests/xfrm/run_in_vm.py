"""Run part of the suite on kernel IPsec: in a VM with Debian's own kernel (XFRM, ESP).

This host's kernel has no ESP, so here strongSwan runs its kernel-libipsec backend; real
gateways run kernel-netlink. virtme-ng boots Debian's ``linux-image-6.1.0-*-amd64`` over a
read-only view of this machine's root filesystem, the suite runs inside on kernel-netlink,
and pytest's summary and exit code come back here.

    python tests/xfrm/run_in_vm.py [pytest arguments]      (default: tests/e2e)

Environment: ``XFRM_ACCEL`` = auto (default) | kvm | tcg; ``XFRM_MEMORY`` (default 4G);
``XFRM_OUT`` the results folder, outside the repository (default
/var/tmp/flowpin-xfrm/<time>); ``XFRM_TIMEOUT`` seconds for
the whole VM run (default 5400); ``XFRM_AFTER`` commands to run in the guest after pytest,
separated by ``;;`` (e.g. ``flowpin demo --out OUT/demo``; OUT is the results folder),
their output in after.log.

Exit code: pytest's; 3 if the VM did not boot or the guest died before pytest reported
(its console log is printed); 2 if something this needs is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VM_VENV = Path(os.environ.get("XFRM_VENV", REPO / ".venv-vm"))
GUEST = REPO / "tests" / "xfrm" / "guest.sh"
KVM_PROBE_S = 60.0
CPUS = 2


def say(msg: str) -> None:
    print(f"test-xfrm: {msg}", flush=True)


def debian_kernel() -> tuple[Path, str]:
    """The newest Debian 6.1 image that has its own headers (same version) installed: bcc
    compiles in the guest against /lib/modules/<release>/build."""
    found = []
    for img in Path("/boot").glob("vmlinuz-6.1.0-*-amd64"):
        release = img.name[len("vmlinuz-"):]
        if (Path("/lib/modules") / release / "build" / "include").exists():
            found.append((tuple(int(n) for n in re.findall(r"\d+", release)), img, release))
    if not found:
        raise SystemExit(say("no Debian kernel with matching headers: install "
                             "linux-image-amd64 and linux-headers-amd64 (make test-xfrm "
                             "does)") or 2)
    _key, img, release = max(found)
    return img, release


def vng_command(kernel: Path, accel: str, out: Path, memory: str, exec_cmd: str) -> list[str]:
    cmd = [str(VM_VENV / "bin" / "vng"), "--run", str(kernel), "--cpus", str(CPUS),
           "--memory", memory, "--force-9p", "--rwdir", str(out),
           # A second, cacheable export of the host root (see guest.sh): virtme-ng's own
           # root is 9p without caching when no Rust virtiofsd exists (Debian 12 has none).
           "--qemu-opts=-virtfs local,path=/,mount_tag=fphost,security_model=none,"
           "readonly=on,multidevs=remap",
           "--exec", exec_cmd]
    if accel == "tcg":
        cmd.append("--disable-kvm")
    return cmd


def vm_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VM_VENV / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return env


def probe_kvm(kernel: Path, out: Path) -> tuple[bool, str]:
    """Whether this host's KVM runs a stock kernel: boot one and wait for its answer. (A
    PVM-flavoured /dev/kvm runs only specially built guests: QEMU fails or hangs.)"""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    marker = "flowpin-kvm-answers"
    cmd = vng_command(kernel, "kvm", out, "1G", f"echo {marker}")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=vm_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            errors="replace", start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=KVM_PROBE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # vng, virtme-run and QEMU: one session
        proc.communicate()
        return False, f"a KVM guest gave no answer within {KVM_PROBE_S:.0f} s"
    if marker in text:
        return True, f"a KVM guest answered in {time.monotonic() - t0:.1f} s"
    last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "no output")
    return False, f"KVM guest failed: {last.strip()[:160]}"


def run_vm(cmd: list[str], console: Path, timeout: float) -> int | None:
    """Run vng, copying the console to ours and to ``console``; None on timeout."""
    with open(console, "w") as log:
        proc = subprocess.Popen(cmd, env=vm_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", start_new_session=True)
        expired = threading.Event()

        def expire() -> None:  # a silent hang must end too, not only a chatty one
            expired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write(line)
                sys.stdout.flush()
            rc = proc.wait()
        finally:
            timer.cancel()
        return None if expired.is_set() else rc


def main(argv: list[str]) -> int:
    t0 = time.monotonic()
    if os.geteuid() != 0:
        say("run it as root (the suite creates namespaces, QEMU needs /dev/kvm)")
        return 2
    if not (VM_VENV / "bin" / "vng").exists() or not shutil.which("qemu-system-x86_64"):
        say("virtme-ng or QEMU missing: `make test-xfrm` installs them")
        return 2
    if not (REPO / ".venv" / "bin" / "python").exists():
        say("the project's venv is missing: `make setup`")
        return 2
    kernel, release = debian_kernel()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Outside the repository: the guest lays an overlay over the repository, which would
    # hide a results folder inside it (the guest's writes would never reach the host, and
    # the run would look like a VM that never reported).
    out = Path(os.environ.get("XFRM_OUT") or Path("/var/tmp/flowpin-xfrm") / stamp).resolve()
    if out == REPO or REPO in out.parents:
        say(f"XFRM_OUT={out} is inside the repository, which the guest overlays: choose a "
            "folder outside it")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    pytest_args = argv or ["tests/e2e"]
    (out / "pytest-args").write_text("\n".join(pytest_args) + "\n")
    after = [c.strip().replace("OUT/", f"{out}/")
             for c in os.environ.get("XFRM_AFTER", "").split(";;") if c.strip()]
    (out / "after").write_text("".join(f"{c}\n" for c in after))
    for stale in ("result.json", "pytest.log", "junit.xml", "after.log"):
        (out / stale).unlink(missing_ok=True)

    want = os.environ.get("XFRM_ACCEL", "auto")
    if want == "auto":
        ok, why = probe_kvm(kernel, out)
        accel = "kvm" if ok else "tcg"
        say(f"KVM probe: {why} -> {accel.upper()}")
    elif want in ("kvm", "tcg"):
        accel, why = want, "XFRM_ACCEL"
    else:
        say(f"XFRM_ACCEL must be auto, kvm or tcg, not {want!r}")
        return 2
    say(f"booting {kernel} ({release}) with {CPUS} CPUs, {accel.upper()}; results in {out}")
    # The guest gets no environment from here but what its command line sets: pass the
    # fault suite's settings (FLOWPIN_FAULTS_PROCS, FLOWPIN_FAULTS_MIN_PPS) and the resume
    # test's (FLOWPIN_RESUME_RATE) on.
    passed = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(os.environ.items())
                     if k.startswith(("FLOWPIN_FAULTS_", "FLOWPIN_RESUME_")))
    exec_cmd = f"FLOWPIN_VM_ACCEL={accel} {passed}bash {GUEST} {REPO} {out}"
    cmd = vng_command(kernel, accel, out, os.environ.get("XFRM_MEMORY", "4G"), exec_cmd)
    t_boot = time.monotonic()
    rc = run_vm(cmd, out / "console.log", float(os.environ.get("XFRM_TIMEOUT", "5400")))
    wall = time.monotonic() - t0
    try:
        res = json.loads((out / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        res = None
    if res is None:
        tail = (out / "console.log").read_text(errors="replace").splitlines()[-60:]
        say(("the VM run timed out" if rc is None else f"the VM exited ({rc})") +
            " before the guest reported a pytest result: it did not boot, or the guest "
            f"died. Console log ({out / 'console.log'}), last lines:")
        print("\n".join(tail))
        return 3
    res |= {"accel": accel, "accel_reason": why, "kernel_image": str(kernel),
            "pytest_args": pytest_args, "wall_s": round(wall, 1),
            "boot_s": round(wall - res["guest_setup_s"] - res["pytest_s"]
                            - res["after_s"] - (t_boot - t0), 1)}
    (out / "result.json").write_text(json.dumps(res, indent=2))
    summary = next((ln for ln in reversed((out / "pytest.log").read_text(
        errors="replace").splitlines()) if ln.startswith("=")), "(no pytest summary)")
    say(f"kernel {res['kernel']}; IPsec backend {res['backend']}; {accel.upper()} ({why})")
    say(f"pytest: {summary.strip('= ')}; exit {res['pytest_exit']}")
    if after:
        say(f"after pytest: {len(after)} commands, exit codes {res['after_exit']}, "
            f"{res['after_s']:.0f} s (output in {out / 'after.log'})")
    say(f"time: {wall:.0f} s in all (boot {res['boot_s']:.0f} s, guest setup "
        f"{res['guest_setup_s']:.0f} s, pytest {res['pytest_s']:.0f} s); results in {out}")
    if res["backend"] != "kernel-netlink":
        say("the guest did not get kernel-netlink: this run proves nothing about XFRM")
        return 4 if res["pytest_exit"] == 0 else res["pytest_exit"]
    return int(res["pytest_exit"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
