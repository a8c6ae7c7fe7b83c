"""Which IPsec backend charon must use on this kernel: probe, don't assume.

The probe asks the kernel to install an ESP security association through XFRM netlink,
inside a throwaway network namespace (so nothing is left behind). A kernel built without
``CONFIG_INET_ESP`` refuses it; charon must then do ESP in user space (kernel-libipsec).
pyroute2 has no XFRM state API, so the few messages the lab needs are packed here: the
probe's NEWSA, and the flushes that remove what a killed charon left in the kernel.
"""

from __future__ import annotations

import os
import socket
import struct

from lab import netns

NETLINK_XFRM = 6
XFRM_MSG_NEWSA = 0x10
XFRM_MSG_FLUSHSA = 0x1C
XFRM_MSG_FLUSHPOLICY = 0x1D
IPSEC_PROTO_ANY = 255
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL = 0x1, 0x4, 0x400, 0x200
NLMSG_ERROR = 2
XFRMA_ALG_CRYPT = 2
XFRMA_ALG_AUTH = 1
IPPROTO_ESP = 50
XFRM_MODE_TUNNEL = 1

KERNEL_NETLINK = "kernel-netlink"
KERNEL_LIBIPSEC = "kernel-libipsec"


def _newsa_message() -> bytes:
    lo = socket.inet_pton(socket.AF_INET, "127.0.0.1") + bytes(12)
    # struct xfrm_selector (56 bytes): daddr, saddr, ports, family, prefixlens, proto,
    # ifindex, user.
    selector = lo + lo + struct.pack("=HHHHHBBB3xiI", 0, 0, 0, 0, socket.AF_INET, 32, 32, 0,
                                     0, 0)
    xfrm_id = lo + struct.pack("=IBxxx", 0x1000, IPPROTO_ESP)
    inf = 0xFFFFFFFFFFFFFFFF
    lifetime_cfg = struct.pack("=8Q", inf, inf, inf, inf, 0, 0, 0, 0)
    lifetime_cur = bytes(32)
    stats = bytes(12)
    tail = struct.pack("=IIHBBB7x", 0, 1, socket.AF_INET, XFRM_MODE_TUNNEL, 0, 0)
    usersa = selector + xfrm_id + lo + lifetime_cfg + lifetime_cur + stats + tail
    assert len(usersa) == 224, len(usersa)

    def attr(kind: int, name: bytes, key: bytes) -> bytes:
        payload = name.ljust(64, b"\0") + struct.pack("=I", len(key) * 8) + key
        raw = struct.pack("=HH", 4 + len(payload), kind) + payload
        return raw + bytes((4 - len(raw) % 4) % 4)

    body = usersa + attr(XFRMA_ALG_CRYPT, b"cbc(aes)", bytes(16))
    body += attr(XFRMA_ALG_AUTH, b"hmac(sha256)", bytes(32))
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return struct.pack("=IHHII", 16 + len(body), XFRM_MSG_NEWSA, flags, 1, 0) + body


def _request(message: bytes) -> str:
    """Send one XFRM netlink request in this process's netns; '' or the kernel's error."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM) as s:
        s.bind((0, 0))
        s.send(message)
        reply = s.recv(65536)
    _length, kind = struct.unpack_from("=IH", reply)
    if kind != NLMSG_ERROR:
        return f"unexpected netlink reply type {kind}"
    (err,) = struct.unpack_from("=i", reply, 16)
    return "" if err == 0 else os.strerror(-err)


def _try_esp_state() -> str:
    """In a child that owns a fresh netns: ask for an ESP SA, return '' or the error."""
    return _request(_newsa_message())


def _flush() -> str:
    flags = NLM_F_REQUEST | NLM_F_ACK
    # struct xfrm_usersa_flush is one byte (the protocol), padded to 4.
    sas = struct.pack("=IHHII", 20, XFRM_MSG_FLUSHSA, flags, 1, 0) + struct.pack(
        "=B3x", IPSEC_PROTO_ANY)
    policies = struct.pack("=IHHII", 16, XFRM_MSG_FLUSHPOLICY, flags, 2, 0)
    return "; ".join(e for e in (_request(sas), _request(policies)) if e)


def flush(ns: str) -> str:
    """Remove every XFRM state and policy in namespace ``ns``; '' or the kernel's error.

    Under kernel-netlink a charon killed with SIGKILL leaves its ESP states and policies in
    the kernel: the kernel goes on encrypting with SAs nobody owns, and a new charon adds
    its own beside them. A restart that must look like the end of charon and all it owned
    (as kernel-libipsec's does: its ESP dies with the process) flushes first.
    """
    return netns.call(ns, _flush)


def probe() -> tuple[str, str]:
    """(backend, reason): kernel-netlink where the kernel has ESP, kernel-libipsec else."""
    name = f"fpprobe-{os.getpid()}"
    netns.create(name)
    try:
        error = netns.call(name, _try_esp_state)
    finally:
        netns.remove(name)
    if error:
        return KERNEL_LIBIPSEC, f"kernel refuses an XFRM ESP state ({error})"
    return KERNEL_NETLINK, "kernel installs XFRM ESP states"
