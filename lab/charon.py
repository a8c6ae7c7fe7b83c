"""One charon per gateway namespace, started by the lab.

Each charon runs in its gateway's network namespace with a private mount namespace whose
``/run`` is the gateway's state directory (see :func:`netns.private_run`). So, seen from the
host, ``<state>/<gw>/`` holds that charon's ``strongswan.conf``, ``charon.pid``,
``charon.log`` and its VICI socket ``charon.vici``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from lab import netns
from lab.backend import KERNEL_LIBIPSEC

CHARON_CANDIDATES = ("/usr/lib/ipsec/charon", "/usr/libexec/ipsec/charon")

# Crypto and plumbing plugins for PSK IKEv2; the IPsec backend is put first (the first
# backend loaded wins), kernel-netlink is always needed for addresses and routes. charon
# skips a listed plugin it cannot find without a word, so each must come from a package
# setup installs (a unit test checks that against the files on disk); openssl also brings
# AES-GCM and Curve25519.
BASE_PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gmp x509 pubkey pkcs1 "
                "pem kdf socket-default vici")


class CharonError(RuntimeError):
    """charon is missing, did not start, or died; the message carries its log tail."""


def binary() -> str:
    for cand in CHARON_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    raise CharonError("charon is not installed: the Debian package strongswan-charon is "
                      "missing (run `make setup`)")


def plugins(backend: str) -> tuple[str, ...]:
    """The plugins a lab charon loads on ``backend``, in load order."""
    ipsec = ("kernel-libipsec", "kernel-netlink") if backend == KERNEL_LIBIPSEC \
        else ("kernel-netlink",)
    return ipsec + tuple(BASE_PLUGINS.split())


def config_text(backend: str, options: dict[str, str] | None = None) -> str:
    """strongswan.conf for one lab charon. Paths are as charon sees them (/run private).

    Timers are short so that tests do not wait minutes: an IKEv2 peer is declared dead
    after ~5 s of silence (1 + 1.4 + 1.96 s of retransmits after the DPD probe).
    ``options`` are extra ``charon.*`` settings; a ``load`` among them replaces the plugin
    list rather than adding a second `load =` line.
    """
    opts = dict(options or {})
    load = opts.pop("load", " ".join(plugins(backend)))
    # strongswan.conf takes one `key = value` per line.
    return "\n".join([
        "charon {",
        f"    load = {load}",
        "    install_virtual_ip = no",
        "    retransmit_timeout = 1.0",
        "    retransmit_base = 1.4",
        "    retransmit_tries = 2",
        "    retry_initiate_interval = 0",
        *(f"    {k} = {v}" for k, v in sorted(opts.items())),
        "    filelog {",
        "        lab {",
        "            path = /run/charon.log",
        "            time_format = %H:%M:%S",
        "            default = 1",
        "            ike = 1",
        "            knl = 1",
        "            flush_line = yes",
        "        }",
        "    }",
        "    syslog {",
        "        daemon {",
        "            default = -1",
        "        }",
        "    }",
        "    plugins {",
        "        vici {",
        "            socket = unix:///run/charon.vici",
        "        }",
        "    }",
        "}",
        "",
    ])


class Charon:
    """A charon process in one gateway namespace; its files live in ``run_dir``."""

    def __init__(self, ns: str, run_dir: Path, backend: str,
                 options: dict[str, str] | None = None) -> None:
        self.ns = ns
        self.run_dir = run_dir
        self.backend = backend
        self.options = options or {}

    def plugins(self) -> tuple[str, ...]:
        """The plugins this charon is told to load (its ``load`` list)."""
        load = self.options.get("load")
        return tuple(load.split()) if load else plugins(self.backend)

    @property
    def vici_path(self) -> str:
        return str(self.run_dir / "charon.vici")

    @property
    def log_path(self) -> Path:
        return self.run_dir / "charon.log"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "charon.pid"

    def pid(self) -> int | None:
        """charon's pid if it runs (checked against /proc, not just the pid file)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None
        return pid if b"charon" in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no charon log)"
        return "\n".join(text[-lines:])

    def start(self, timeout: float = 10.0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "strongswan.conf").write_text(config_text(self.backend, self.options))
        for stale in (self.pid_path, Path(self.vici_path)):
            stale.unlink(missing_ok=True)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "STRONGSWAN_CONF": "/run/strongswan.conf"}
        with open(self.run_dir / "charon.stderr", "ab") as err:
            proc = subprocess.Popen(
                [binary()], env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                preexec_fn=netns.preexec(self.ns, self.run_dir), close_fds=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CharonError(f"charon in {self.ns} exited with status {proc.returncode}:\n"
                                  f"{self.log_tail()}")
            if os.path.exists(self.vici_path) and self.running():
                return
            time.sleep(0.05)
        raise CharonError(f"charon in {self.ns} did not open its VICI socket within "
                          f"{timeout:.0f} s:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            # Reap it if it is our child; otherwise it is reaped by init.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
