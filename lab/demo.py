"""``flowpin demo`` (``make demo``): Cisco's story, told by two real labs side by side.

A user at the branch office (bo-client) downloads a large file from head office (ho-server)
with stock curl from a stock HTTP server, rate-limited so it lasts ~40 s. Mid-download the
WAN drops IKE and ESP until DPD gives up (the way it happens in the field); 20 s later it
recovers and the tunnel is re-established. One lab runs with preserve-vpn-flows **off**:
the download is torn down (it stalls, curl's low-speed limit gives up, and flowpin logs
302014). The other runs with it **on**: the download completes and its sha256 matches.

Both labs run at once (they are separate namespaces and charons), so the demo takes about
as long as one download. Everything is removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import topology
from lab.flap import KINDS, flap
from lab.lab import Lab, LabError

PORT = 8080
LEAD_S = 8.0  # download time before the outage


@dataclass
class Run:
    """One download through one lab, and what happened to it."""

    preserve: bool
    lab: Lab
    size: int
    rate: int
    how: str
    outage: float
    out: Path
    sha256: str = ""
    phase: str = "starting"
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s since start, bytes)
    t_disrupt: float | None = None
    t_sa_gone: float | None = None
    t_back: float | None = None
    curl_rc: int | None = None
    curl_out: str = ""
    pinned: dict[str, int] = field(default_factory=dict)  # gateway -> most flows pinned
    held: dict[str, int] = field(default_factory=dict)  # gateway -> packets held
    teardowns: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def label(self) -> str:
        return f"preserve-vpn-flows {'on' if self.preserve else 'off'}"

    @property
    def received(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    @property
    def sha_ok(self) -> bool:
        return self.out.exists() and _sha256(self.out) == self.sha256

    @property
    def completed(self) -> bool:
        return self.curl_rc == 0 and self.received == self.size and self.sha_ok

    @property
    def resume_delay(self) -> float | None:
        """From the tunnel back to the first byte of the download passing again."""
        if self.t_back is None or self.curl_rc not in (0, None):
            return None
        before = max((b for t, b in self.samples if t <= self.t_back), default=0)
        return next((round(t - self.t_back, 2) for t, b in self.samples
                     if t > self.t_back and b > before), None)

    def result(self) -> str:
        if self.error:
            return f"error: {self.error}"
        if self.completed:
            return "completed, sha256 matches"
        if self.curl_rc == 28:
            return "torn down (stalled, curl gave up)"
        return f"failed (curl exit {self.curl_rc})"

    def as_dict(self) -> dict[str, Any]:
        return {"preserve": self.preserve, "how": self.how, "outage_s": self.outage_measured,
                "result": self.result(), "completed": self.completed, "sha_ok": self.sha_ok,
                "bytes_received": self.received, "size": self.size,
                "resume_delay_s": self.resume_delay, "pinned": self.pinned,
                "held_packets": self.held, "curl_exit": self.curl_rc,
                "teardown_lines": self.teardowns}

    @property
    def outage_measured(self) -> float | None:
        if self.t_disrupt is None or self.t_back is None:
            return None
        return round(self.t_back - self.t_disrupt, 1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _make_file(path: Path, size: int) -> str:
    """``size`` bytes that do not compress (so nothing on the way shrinks them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _serve(lab: Lab, www: Path) -> subprocess.Popen:
    server = lab.popen(topology.SERVER, [sys.executable, "-m", "http.server", str(PORT),
                                         "--bind", "::", "--directory", str(www)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):  # until it answers (from the client, through the tunnel)
        r = lab.exec(topology.CLIENT, ["curl", "-sf", "-o", "/dev/null", "--max-time", "1",
                                       f"http://{topology.HOST_ADDR[topology.SERVER][0]}:"
                                       f"{PORT}/"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
        if r.returncode == 0:
            return server
        time.sleep(0.1)
    raise LabError("the HTTP server on ho-server did not answer")


def shape(lab: Lab, rate: int) -> None:
    """Limit ho-server's sending to ``rate`` bytes/s (a tbf qdisc, through pyroute2): the
    head office's uplink, so the download lasts long enough for the story. (curl's own
    --limit-rate reads in bursts and pauses for seconds, which would hide the outage.)"""
    from pyroute2 import IPRoute

    with IPRoute(netns=lab.ns(topology.SERVER)) as ipr:
        idx = ipr.link_lookup(ifname="eth0")[0]
        ipr.tc("add", "tbf", idx, handle="1:", rate=f"{rate * 8}bit", burst=max(16384, rate // 10),
               latency="100ms")


def download(run: Run, stop: threading.Event, url_host: str | None = None) -> None:
    """The whole story for one lab (already up): serve, download, disrupt, wait, measure."""
    lab = run.lab
    www = lab.state_dir / "www"
    run.sha256 = _make_file(www / "big.bin", run.size)
    _serve(lab, www)
    host = url_host or topology.HOST_ADDR[topology.SERVER][0]
    url = f"http://[{host}]:{PORT}/big.bin" if ":" in host else f"http://{host}:{PORT}/big.bin"
    # Long enough for a held flow to come back (TCP's backoff after an outage of S seconds
    # retransmits within about S more), short enough to tell a torn-down download.
    stall = int(run.outage + max(15.0, run.outage))
    shape(lab, run.rate)
    run.phase = "downloading"
    curl = lab.popen(topology.CLIENT, [
        "curl", "-sS", "-o", str(run.out),
        "--speed-limit", "1", "--speed-time", str(stall), "-w", "%{http_code}", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()

    def sample() -> None:
        while curl.poll() is None and not stop.is_set():
            size = run.out.stat().st_size if run.out.exists() else 0
            run.samples.append((round(time.monotonic() - t0, 2), size))
            time.sleep(0.1)
        run.samples.append((round(time.monotonic() - t0, 2),
                            run.out.stat().st_size if run.out.exists() else 0))

    def watch() -> None:
        """Pinned flows and held packets, as each gateway's flowpin reports them."""
        while curl.poll() is None and not stop.is_set():
            for gw in gws:
                with contextlib.suppress(Exception):
                    t = lab.ask(gw, "show-vpn-context")["tunnels"][0]
                    run.pinned[gw] = max(run.pinned.get(gw, 0), t["pinned"])
                    run.held[gw] = max(run.held.get(gw, 0), t["held_packets"] - held0[gw])
            time.sleep(0.5)

    gws = lab.flowpin_gateways()
    held0 = {gw: lab.ask(gw, "show-vpn-context")["tunnels"][0]["held_packets"] for gw in gws}
    threads = [threading.Thread(target=f, daemon=True) for f in (sample, watch)]
    for t in threads:
        t.start()
    stop.wait(LEAD_S)
    if not stop.is_set():
        run.phase = f"outage ({run.how})"
        res = flap(lab, run.how, run.outage)
        run.t_disrupt = round(res.down_at - t0, 2)
        run.t_sa_gone = round(res.sa_gone_at - t0, 2)
        run.t_back = round(res.up_at - t0, 2)
        run.phase = "tunnel back, waiting for the download"
    while curl.poll() is None and not stop.is_set():
        time.sleep(0.2)
    if stop.is_set():
        curl.kill()
    out, err = curl.communicate()
    run.curl_rc, run.curl_out = curl.returncode, (out + err).strip()
    for t in threads:
        t.join(2)
    run.teardowns = [ln for ln in lab.daemon_log(topology.BO_GW).read_text().splitlines()
                     if "-302014:" in ln and f"/{PORT} " in ln
                     and ln.endswith("Tunnel has been torn down")]
    run.phase = "done" if run.completed else "torn down"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def table(runs: list[Run]) -> str:
    rows = [
        ("", [r.label for r in runs]),
        (f"outage ({runs[0].how}, tunnel down)", [
            f"{r.outage_measured} s" if r.outage_measured is not None else "-" for r in runs]),
        ("result", [r.result() for r in runs]),
        ("bytes received", [f"{_mib(r.received)} of {_mib(r.size)}" for r in runs]),
        ("tunnel back -> first byte resumed", [
            f"{r.resume_delay} s" if r.resume_delay is not None else "never" for r in runs]),
        ("flows pinned (bo-gw / ho-gw)", [" / ".join(str(r.pinned.get(g, "-")) for g in
                                                     topology.GATEWAYS) for r in runs]),
        ("packets held (bo-gw / ho-gw)", [" / ".join(str(r.held.get(g, "-")) for g in
                                                     topology.GATEWAYS) for r in runs]),
        ("302014 teardown logged", ["yes" if r.teardowns else "no" for r in runs]),
    ]
    w0 = max(len(k) for k, _ in rows)
    widths = [max(len(v[i]) for _, v in rows) for i in range(len(runs))]
    lines = []
    for k, vals in rows:
        lines.append(f"{k:<{w0}}  " + "  ".join(f"{v:<{widths[i]}}" for i, v in
                                                enumerate(vals)))
    return "\n".join(lines)


def plot(runs: list[Run], out_dir: Path) -> list[Path]:
    """Throughput per 100 ms against time, the outage shaded: one PNG per run, one combined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(ax: Any, r: Run) -> None:
        ts = [t for t, _ in r.samples]
        rates = [0.0] + [(b2 - b1) / max(t2 - t1, 1e-3) / (1 << 20) for (t1, b1), (t2, b2) in
                         zip(r.samples, r.samples[1:], strict=False)]
        ax.plot(ts, rates, lw=1, color="tab:blue", label="received (MiB/s per 100 ms)")
        if r.t_disrupt is not None and r.t_back is not None:
            ax.axvspan(r.t_disrupt, r.t_back, color="tab:red", alpha=0.15,
                       label=f"outage ({r.how})")
            if r.t_sa_gone is not None:
                ax.axvline(r.t_sa_gone, color="tab:red", ls="--", lw=1,
                           label="tunnel down (SA deleted)")
            ax.axvline(r.t_back, color="tab:green", ls="-", lw=1, label="tunnel up again")
        ax.set_title(f"{r.label}: {r.result()}, {_mib(r.received)} of {_mib(r.size)}")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("MiB/s")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper right", fontsize=7)

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in runs:
        fig, ax = plt.subplots(figsize=(8, 3))
        draw(ax, r)
        fig.tight_layout()
        p = out_dir / f"demo-preserve-{'on' if r.preserve else 'off'}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 3 * len(runs)), sharex=True)
    for ax, r in zip(axes, runs, strict=True):
        draw(ax, r)
    fig.suptitle("A download from head office across a tunnel outage")
    fig.tight_layout()
    p = out_dir / "demo.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def run_story(*, size_mib: float = 20, outage: float = 20, how: str = "dpd",
              out_dir: Path = Path("out/demo"), name: str = "demo", progress: bool = True,
              duration: float = 40, host: str | None = None,
              modes: tuple[bool, ...] = (False, True), peer: str = "flowpin") -> list[Run]:
    """Both runs at once; returns them (the labs are removed whatever happens)."""
    if how not in KINDS:
        raise LabError(f"--how must be one of {', '.join(KINDS)}")
    size = int(size_mib * (1 << 20))
    rate = max(1024, int(size / duration))
    out_dir.mkdir(parents=True, exist_ok=True)
    labs = [Lab(f"{name}{'on' if p else 'off'}"[:12]) for p in modes]
    for lab in labs:
        if lab.exists():
            lab.down()
    stop = threading.Event()
    runs: list[Run] = []
    try:
        for lab, p in zip(labs, modes, strict=True):
            if progress:
                print(f"== lab {lab.name}: four namespaces, two charons, flowpin on both "
                      f"gateways with preserve-vpn-flows {'on' if p else 'off'}", flush=True)
            lab.up(preserve=p, peer=peer)
            runs.append(Run(p, lab, size, rate, how, outage,
                            out_dir / f"download-preserve-{'on' if p else 'off'}.bin"))
        for r in runs:
            r.out.unlink(missing_ok=True)
        if progress:
            print(f"== bo-client downloads {_mib(size)} from ho-server with curl at "
                  f"{rate // 1024} KiB/s; after {LEAD_S:.0f} s the WAN drops IKE and ESP "
                  f"({how}) for {outage:.0f} s", flush=True)

        def guarded(r: Run) -> None:
            try:
                download(r, stop, host)
            except Exception as exc:  # noqa: BLE001 -- reported in the table
                r.error = str(exc).splitlines()[0]
                r.phase = "error"

        threads = [threading.Thread(target=guarded, args=(r,), daemon=True) for r in runs]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while any(t.is_alive() for t in threads):
            if progress:
                state = " | ".join(f"{'on ' if r.preserve else 'off'}: {r.phase:<38} "
                                   f"{_mib(r.received):>9}" for r in runs)
                print(f"\r[{time.monotonic() - t0:5.1f} s] {state}", end="", flush=True)
            time.sleep(0.5)
        if progress:
            print(flush=True)
        return runs
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        stop.set()
        for lab in labs:
            lab.down()


def run(a: argparse.Namespace) -> int:
    out_dir = Path(a.out)
    t0 = time.monotonic()
    runs = run_story(size_mib=a.size, outage=a.outage, how=a.how, out_dir=out_dir,
                     name=a.name)
    print("\n== the result\n" + table(runs))
    for r in runs:
        for ln in r.teardowns[:3]:
            print(f"   {r.label}: {ln}")
    pngs = plot(runs, out_dir)
    print("\n== pictures: " + ", ".join(str(p) for p in pngs))
    off = next((r for r in runs if not r.preserve), None)
    on = next((r for r in runs if r.preserve), None)
    ok = bool(on and on.completed and off and not off.completed and off.teardowns)
    print(f"\n== {'as on the ASA' if ok else 'UNEXPECTED'}: the download survives the "
          f"outage with preserve-vpn-flows on and is torn down with it off "
          f"({time.monotonic() - t0:.0f} s; labs removed)")
    for r in runs:
        r.out.unlink(missing_ok=True)
    return 0 if ok else 1
