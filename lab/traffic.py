"""TCP transfers with exact accounting, run on lab nodes.

``python -m lab.traffic serve|send`` is started inside a node's namespace
(``Lab.popen``); each side prints one JSON line with the bytes it moved and their sha256, so
a test compares what was sent with what arrived, byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import threading
import time
from typing import Any

CHUNK = 64 * 1024
GAP = 1.0


def _pattern(seed: int) -> bytes:
    """A 1 MiB block that is not compressible and differs per seed."""
    out = bytearray()
    counter = 0
    while len(out) < 1 << 20:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out)


def serve(bind: str, port: int, timeout: float) -> dict[str, Any]:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((bind, port))
        srv.listen(1)
        print(json.dumps({"listening": port}), flush=True)
        srv.settimeout(timeout)
        conn, peer = srv.accept()
        with conn:
            conn.settimeout(timeout)
            digest, total, start = hashlib.sha256(), 0, time.monotonic()
            # Pauses of more than GAP seconds, as (last byte before, first byte after) in
            # wall-clock time: when a held flow resumed after an outage.
            gaps: list[tuple[float, float]] = []
            last = time.time()
            while True:
                try:
                    data = conn.recv(CHUNK)
                except (TimeoutError, ConnectionResetError) as exc:
                    return {"bytes": total, "sha256": digest.hexdigest(), "error": str(exc),
                            "peer": peer[0], "gaps": gaps}
                now = time.time()
                if data and now - last > GAP:
                    gaps.append((round(last, 4), round(now, 4)))
                last = now
                if not data:
                    break
                digest.update(data)
                total += len(data)
            return {"bytes": total, "sha256": digest.hexdigest(), "peer": peer[0],
                    "seconds": round(time.monotonic() - start, 3), "gaps": gaps,
                    "ended": round(last, 4)}  # wall clock of the end of the stream (EOF)


class Pace:
    """A sender's schedule: ``rate`` bytes/s from ``start``, written a tenth of a second's
    worth at a time (``piece``: at least 1 KiB, at most CHUNK; a whole CHUNK at a time made
    20 kB/s a 64 KiB burst every 3.2 s, and 2 kB/s one burst of all of a short transfer).
    After a stall (an outage: the socket's buffer full) the sender is behind; it makes all
    of that up at full speed, unless ``catch_up`` bounds it to so many seconds of the rate
    (0: carry on at the rate)."""

    def __init__(self, rate: float, start: float, catch_up: float | None = None) -> None:
        self.rate, self.start, self.catch_up = rate, start, catch_up
        self.piece = min(CHUNK, max(1024, int(rate / 10)))

    def wait(self, sent: int, now: float) -> float:
        """Seconds to sleep before sending more, ``sent`` bytes having gone by ``now``."""
        ahead = sent / self.rate - (now - self.start)
        if self.catch_up is not None and -ahead > self.catch_up:
            self.start -= ahead + self.catch_up  # forgive all but catch_up s of the stall
            return 0.0
        return max(0.0, ahead)


def _stop_when_told(stop: threading.Event) -> None:
    """(gated) A line "stop" on stdin after "go" ends the transfer early: what was sent so
    far is then the transfer. End of file does not (Transfer.wait closes stdin)."""
    for line in sys.stdin:
        if line.strip() == "stop":
            stop.set()
            return


def send(to: str, port: int, nbytes: int, rate: float, seed: int,
         timeout: float, gated: bool = False, catch_up: float | None = None) -> dict[str, Any]:
    """Send ``nbytes`` to ``to``:``port``, at ``rate`` bytes/s if given (see :class:`Pace`
    for ``catch_up``)."""
    block = _pattern(seed)
    family = socket.AF_INET6 if ":" in to else socket.AF_INET
    digest, sent, start = hashlib.sha256(), 0, time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((to, port))
        stop = threading.Event()
        if gated:  # connected; send nothing until told (a line on stdin)
            print(json.dumps({"connected": port}), flush=True)
            sys.stdin.readline()
            start = time.monotonic()
            threading.Thread(target=_stop_when_told, args=(stop,), daemon=True).start()
        pace = Pace(rate, start, catch_up) if rate > 0 else None
        most = pace.piece if pace is not None else CHUNK
        while sent < nbytes and not stop.is_set():
            off = sent % len(block)
            piece = block[off: off + min(most, nbytes - sent, len(block) - off)]
            try:
                s.sendall(piece)
            except (TimeoutError, OSError) as exc:
                return {"bytes": sent, "sha256": digest.hexdigest(), "error": str(exc)}
            digest.update(piece)
            sent += len(piece)
            if pace is not None:
                time.sleep(pace.wait(sent, time.monotonic()))
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # wait for the peer to close: everything was delivered
    return {"bytes": sent, "sha256": digest.hexdigest(),
            "seconds": round(time.monotonic() - start, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.traffic")
    sub = p.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--bind", default="::")
    sv.add_argument("--port", type=int, default=5001)
    sv.add_argument("--timeout", type=float, default=120.0)
    sd = sub.add_parser("send")
    sd.add_argument("--to", required=True)
    sd.add_argument("--port", type=int, default=5001)
    sd.add_argument("--bytes", type=int, default=10 << 20)
    sd.add_argument("--rate", type=float, default=0.0, help="bytes per second (0: unlimited)")
    sd.add_argument("--seed", type=int, default=1)
    sd.add_argument("--timeout", type=float, default=120.0)
    sd.add_argument("--catch-up", type=float, default=None, metavar="SECONDS",
                    help="after a stall make up at most this many seconds of --rate "
                         "(default: all of it)")
    sd.add_argument("--gated", action="store_true",
                    help="connect, print {\"connected\": PORT}, send once a line is read")
    a = p.parse_args(argv)
    try:
        if a.cmd == "serve":
            res = serve(a.bind, a.port, a.timeout)
        else:
            res = send(a.to, a.port, a.bytes, a.rate, a.seed, a.timeout, a.gated,
                       a.catch_up)
    except OSError as exc:
        res = {"bytes": 0, "error": str(exc)}
    print(json.dumps(res), flush=True)
    return 0 if "error" not in res else 1


if __name__ == "__main__":
    sys.exit(main())


class Transfer:
    """A TCP transfer from bo-client to ho-server (or back: ``reverse``), started now,
    finished by :meth:`wait`.

    ``gated``: the client connects and then waits for :meth:`go` before it sends, so that
    many transfers can be made to run at the same time however long starting them took
    (Python starts in seconds in an emulated VM: 50 started one after the other did not
    overlap)."""

    def __init__(self, lab: Any, to: str, nbytes: int, *, port: int = 5001, rate: float = 0.0,
                 seed: int = 1, timeout: float = 120.0, gated: bool = False,
                 reverse: bool = False, catch_up: float | None = None) -> None:
        """``reverse``: ho-server sends to bo-client (``to`` is then bo-client's address):
        data flowing tunnel -> LAN as bo-gw sees it. ``catch_up``: see :class:`Pace`."""
        import subprocess

        from lab import topology

        receiver, sender = ((topology.CLIENT, topology.SERVER) if reverse
                            else (topology.SERVER, topology.CLIENT))
        self.port = port
        py = [sys.executable, "-m", "lab.traffic"]
        bind = "::" if ":" in to else "0.0.0.0"
        self.server = lab.popen(receiver, py + ["serve", "--bind", bind, "--port",
                                                       str(port), "--timeout", str(timeout)],
                                stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None
        ready = self.server.stdout.readline()
        if "listening" not in ready:
            self.server.kill()
            raise RuntimeError(f"traffic server did not start: {ready!r}")
        self.client = lab.popen(sender, py + [
            "send", "--to", to, "--port", str(port), "--bytes", str(nbytes), "--rate",
            str(rate), "--seed", str(seed), "--timeout", str(timeout)]
            + (["--gated"] if gated else [])
            + (["--catch-up", str(catch_up)] if catch_up is not None else []),
            stdout=subprocess.PIPE, text=True,
            stdin=subprocess.PIPE if gated else subprocess.DEVNULL)

    def connected(self) -> None:
        """(gated) Return once the client's connection is established."""
        assert self.client.stdout is not None
        line = self.client.stdout.readline()
        if "connected" not in line:
            raise RuntimeError(f"traffic client did not connect: {line!r}")

    def go(self) -> None:
        """(gated) Let the client send."""
        assert self.client.stdin is not None
        self.client.stdin.write("go\n")
        self.client.stdin.flush()

    def stop(self) -> None:
        """(gated) End the transfer early: the client sends no more pieces, and what it
        reports having sent (bytes, sha256) is what must arrive."""
        assert self.client.stdin is not None
        self.client.stdin.write("stop\n")
        self.client.stdin.flush()

    def wait(self, timeout: float = 180.0) -> tuple[dict[str, Any], dict[str, Any]]:
        """(sent, received) as printed by the two ends."""
        out_c, _ = self.client.communicate(timeout=timeout)
        out_s, _ = self.server.communicate(timeout=timeout)
        return json.loads(out_c.strip().splitlines()[-1]), json.loads(
            out_s.strip().splitlines()[-1])

    def kill(self) -> None:
        for proc in (self.client, self.server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
