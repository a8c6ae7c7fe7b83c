"""A thin, typed layer over the ``vici`` package: connect, load, initiate, terminate, list,
and what charon can do (its plugins and algorithms).

charon answers in ``bytes`` (``b"yes"``); everything leaving this module is ``str``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import vici
from vici.exception import CommandException, SessionException

from vici_glue.conns import SiteToSite


class ViciError(RuntimeError):
    """charon refused a command or could not be reached; the message says which."""


def decode(value: Any) -> Any:
    """Turn VICI's bytes (and nested dicts/lists of them) into str."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {decode(k): decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def connect(path: str, timeout: float = 10.0) -> vici.Session:
    """Connect to charon's VICI socket at ``path``, waiting up to ``timeout`` for it."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return vici.Session(sock)
        except OSError as exc:
            sock.close()
            last = exc
        if time.monotonic() >= deadline:
            raise ViciError(f"cannot reach charon's VICI socket {path}: {last}")
        time.sleep(0.1)


# strongSwan's IPsec backends (plugins providing the kernel IPsec interface), by the order
# in which one wins when several are loaded: kernel-libipsec is loaded only when asked for,
# and is then put first (it does ESP in user space, kernel-netlink stays for routes).
IPSEC_BACKENDS = ("kernel-libipsec", "kernel-netlink", "kernel-pfkey", "kernel-wfp")


def ipsec_backend(stats: dict[str, Any]) -> str:
    """The IPsec backend charon runs, from its VICI ``stats`` answer (the loaded plugins);
    "unknown" when no known backend is loaded or charon does not list its plugins."""
    plugins = set(decode(stats.get("plugins", [])))
    return next((b for b in IPSEC_BACKENDS if b in plugins), "unknown")


def _drain(stream: Iterator[Any]) -> list[str]:
    """Consume a streamed command; return charon's control-log lines."""
    return [decode(m).get("msg", "") for m in stream]


def load(session: vici.Session, conn: SiteToSite) -> None:
    """Load a connection and its PSK."""
    try:
        session.load_shared(conn.shared_message())
        session.load_conn(conn.conn_message())
    except (CommandException, SessionException) as exc:
        raise ViciError(f"loading connection {conn.name}: {exc}") from exc


def initiate(session: vici.Session, child: str, ike: str, timeout: float = 15.0) -> list[str]:
    """Initiate ``child`` of ``ike``; returns charon's log; raises on failure."""
    msg = {"child": child, "ike": ike, "timeout": str(int(timeout * 1000)), "init-limits": "no"}
    try:
        return _drain(session.initiate(msg))
    except (CommandException, SessionException) as exc:
        raise ViciError(f"initiating {ike}/{child}: {exc}") from exc


def terminate(
    session: vici.Session,
    *,
    child: str | None = None,
    ike: str | None = None,
    timeout: float = 10.0,
    force: bool = False,
) -> list[str]:
    """Terminate a CHILD_SA (``child``) or a whole IKE_SA (``ike``)."""
    msg: dict[str, str] = {"timeout": str(int(timeout * 1000))}
    if child:
        msg["child"] = child
    if ike:
        msg["ike"] = ike
    if force:
        msg["force"] = "yes"
    try:
        return _drain(session.terminate(msg))
    except (CommandException, SessionException) as exc:
        raise ViciError(f"terminating {ike or ''}/{child or ''}: {exc}") from exc


def list_sas(session: vici.Session) -> list[tuple[str, dict[str, Any]]]:
    """Every IKE_SA as (connection name, IKE_SA), decoded to str. A list, not a dict: one
    connection can have several IKE_SAs at once (a reauthentication, a duplicate being
    replaced, an initiation still CONNECTING beside a dying one)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for entry in session.list_sas():
        out.extend(decode(entry).items())
    return out


def installed_children(sas: list[tuple[str, dict[str, Any]]], ike: str,
                       child: str) -> list[dict[str, Any]]:
    """The CHILD_SAs named ``child`` of ESTABLISHED IKE_SAs of ``ike`` that are INSTALLED."""
    return [c for name, sa in sas if name == ike and sa.get("state") == "ESTABLISHED"
            for c in sa.get("child-sas", {}).values()
            if c.get("name") == child and c.get("state") == "INSTALLED"]


def loaded_plugins(session: vici.Session) -> list[str]:
    """The plugins charon has loaded, in load order (``stats``: charon 5.9 has no
    ``get-plugins`` command; ``stats`` lists them). A plugin named in ``charon.load`` that
    charon could not find is silently missing here."""
    try:
        return [str(p) for p in decode(session.stats()).get("plugins", [])]
    except (CommandException, SessionException) as exc:
        raise ViciError(f"reading charon's plugins: {exc}") from exc


def algorithms(session: vici.Session) -> dict[str, dict[str, str]]:
    """``get-algorithms``: per kind (``encryption``, ``aead``, ``integrity``, ``prf``,
    ``dh``, ...), each algorithm charon's loaded plugins implement and the plugin that does,
    e.g. ``{"aead": {"AES_GCM_16": "openssl"}}``. charon's user-space crypto only: with the
    kernel-netlink backend the kernel does ESP, with algorithms of its own."""
    try:
        return {str(kind): dict(algs) for kind, algs in decode(session.get_algorithms()).items()}
    except (CommandException, SessionException) as exc:
        raise ViciError(f"reading charon's algorithms: {exc}") from exc
