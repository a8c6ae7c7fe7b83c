"""Before the lab's tunnel comes up: can each charon do what the lab will ask of it?

charon skips a plugin of its ``load`` list that it cannot find without a word, and selects
a proposal it cannot carry out (see :mod:`vici_glue.proposals`). On a machine without
``libstrongswan-standard-plugins`` the tunnel then fails with NO_PROPOSAL_CHOSEN and
nothing says why. Asked over VICI first, the lab names what is missing and the Debian
package that provides it, in one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lab.backend import KERNEL_LIBIPSEC
from vici_glue import proposals
from vici_glue import session as vs
from vici_glue.conns import SiteToSite

# The Debian 12 package each plugin the lab may use comes from (a unit test checks this
# table against the files dpkg installed, and that setup installs each package).
PLUGIN_PACKAGES = {
    **dict.fromkeys(("random", "nonce", "aes", "sha1", "sha2", "hmac", "gmp", "x509", "pubkey",
                     "pkcs1", "pem", "kdf", "kernel-netlink"), "libstrongswan"),
    **dict.fromkeys(("openssl", "gcm", "aesni"), "libstrongswan-standard-plugins"),
    "kernel-libipsec": "libcharon-extra-plugins",
    "socket-default": "strongswan-libcharon",
    "vici": "strongswan-swanctl",
}

# The plugins that implement each algorithm the lab's proposals can name (a lab test checks
# each against a charon that loads that plugin alone, with what it builds on).
ALGORITHM_PLUGINS = {
    "AES_CBC": ("aes", "aesni", "openssl"),
    **dict.fromkeys(("AES_GCM_8", "AES_GCM_12", "AES_GCM_16"), ("gcm", "aesni", "openssl")),
    **dict.fromkeys(("HMAC_SHA1_96", "HMAC_SHA2_256_128", "HMAC_SHA2_384_192",
                     "HMAC_SHA2_512_256", "PRF_HMAC_SHA1", "PRF_HMAC_SHA2_256",
                     "PRF_HMAC_SHA2_384", "PRF_HMAC_SHA2_512"), ("hmac", "openssl")),
    **{f"MODP_{n}": ("gmp", "openssl") for n in (1024, 1536, 2048, 3072, 4096, 6144, 8192)},
    **{f"ECP_{n}": ("openssl",) for n in (256, 384, 521)},
    "CURVE_25519": ("openssl",),
}


class PreflightError(RuntimeError):
    """charon lacks a plugin or an algorithm the lab needs; the message names the package."""


def package_of(plugins: Iterable[str]) -> str:
    """'Debian package X' (or 'X or Y') for plugins, as the error messages say it."""
    pkgs = sorted({PLUGIN_PACKAGES.get(p, "") for p in plugins} - {""})
    if not pkgs:
        return "no Debian package flowpin knows provides it"
    return f"Debian package {' or '.join(pkgs)}"


def problems(*, loaded: Sequence[str], algorithms: dict[str, dict[str, str]],
             wanted_plugins: Sequence[str], conn: SiteToSite, backend: str) -> list[str]:
    """What keeps ``conn`` from coming up on a charon that has loaded ``loaded`` and offers
    ``algorithms`` (``get-algorithms``); empty if nothing does."""
    out = [f"plugin {p} is not loaded ({package_of([p])})"
           for p in wanted_plugins if p not in loaded]
    checks = [("IKE", conn.proposals, "ike")]
    # With kernel-netlink the kernel does ESP with its own algorithms; with kernel-libipsec
    # charon does it, with its plugins.
    if backend == KERNEL_LIBIPSEC:
        checks.append(("ESP", conn.esp_proposals, "esp"))
    for label, props, protocol in checks:
        for proposal, algs in proposals.missing(props, protocol, algorithms).items():
            for alg in algs:
                plugins = ALGORITHM_PLUGINS.get(alg.name, ())
                by = f"plugin {' or '.join(plugins)}, " if plugins else ""
                out.append(f"{label} proposal {proposal} needs {alg}, which no loaded plugin "
                           f"provides ({by}{package_of(plugins)})")
    return out


def check(gw: str, session: Any, *, wanted_plugins: Sequence[str], conn: SiteToSite,
          backend: str) -> None:
    """Ask ``gw``'s charon over VICI; raise :class:`PreflightError` naming what is missing."""
    try:
        found = problems(loaded=vs.loaded_plugins(session), algorithms=vs.algorithms(session),
                         wanted_plugins=wanted_plugins, conn=conn, backend=backend)
    except proposals.ProposalError as exc:
        raise PreflightError(f"charon on {gw}: {exc}") from exc
    if found:
        raise PreflightError(f"charon on {gw} cannot bring the tunnel up: {'; '.join(found)} "
                             f"(run `make setup`)")
