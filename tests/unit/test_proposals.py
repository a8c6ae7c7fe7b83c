"""Proposal keywords to the algorithm names charon's get-algorithms uses, and the preflight's
one-line verdicts, as tables. The names themselves are checked against real charons in
tests/lab/test_preflight.py."""

from __future__ import annotations

import pytest

from lab.preflight import problems
from vici_glue.conns import SiteToSite
from vici_glue.proposals import Algorithm, ProposalError, missing, required

A = Algorithm

CASES = [
    # (proposal, protocol, algorithms it needs)
    ("aes256-sha256-modp2048", "ike", {A("encryption", "AES_CBC"),
                                       A("integrity", "HMAC_SHA2_256_128"),
                                       A("prf", "PRF_HMAC_SHA2_256"), A("dh", "MODP_2048")}),
    # An explicit PRF replaces the one charon derives from the integrity algorithm.
    ("aes128-sha1-prfsha256-ecp256", "ike", {A("encryption", "AES_CBC"),
                                             A("integrity", "HMAC_SHA1_96"),
                                             A("prf", "PRF_HMAC_SHA2_256"),
                                             A("dh", "ECP_256")}),
    ("aes256gcm16-prfsha384-curve25519", "ike", {A("aead", "AES_GCM_16"),
                                                 A("prf", "PRF_HMAC_SHA2_384"),
                                                 A("dh", "CURVE_25519")}),
    # ESP has no PRF.
    ("aes256gcm16", "esp", {A("aead", "AES_GCM_16")}),
    ("aes128gcm128-x25519-esn", "esp", {A("aead", "AES_GCM_16"), A("dh", "CURVE_25519")}),
    ("aes192gcm8-noesn", "esp", {A("aead", "AES_GCM_8")}),
    ("aes256-sha256", "esp", {A("encryption", "AES_CBC"), A("integrity", "HMAC_SHA2_256_128")}),
    ("aes256-sha512-modp4096", "esp", {A("encryption", "AES_CBC"),
                                       A("integrity", "HMAC_SHA2_512_256"),
                                       A("dh", "MODP_4096")}),
    # charon's own default list is made from what it has: it needs nothing.
    ("default", "ike", set()),
    ("default", "esp", set()),
]


@pytest.mark.parametrize(("proposal", "protocol", "needs"), CASES)
def test_required(proposal: str, protocol: str, needs: set[Algorithm]) -> None:
    assert required(proposal, protocol) == needs


@pytest.mark.parametrize("proposal", ["aes256-sha256-modp2048-blowfish", "chacha20poly1305",
                                      "aes256ctr-sha256", "aes256-md5"])
def test_a_keyword_it_cannot_map_is_an_error_not_a_pass(proposal: str) -> None:
    with pytest.raises(ProposalError, match="cannot tell which algorithm"):
        required(proposal, "esp")


# get-algorithms of real 5.9.8 charons (abridged to the kinds the lab's proposals use):
# the lab's plugin list, and the same without openssl, gcm and aesni (a machine without
# libstrongswan-standard-plugins).
FULL = {"encryption": {"AES_CBC": "openssl"}, "aead": {"AES_GCM_16": "openssl"},
        "integrity": {"HMAC_SHA2_256_128": "openssl"}, "prf": {"PRF_HMAC_SHA2_256": "openssl"},
        "dh": {"MODP_2048": "openssl"}}
NO_STANDARD = {"encryption": {"AES_CBC": "aes"}, "aead": {},
               "integrity": {"HMAC_SHA2_256_128": "hmac"}, "prf": {"PRF_HMAC_SHA2_256": "hmac"},
               "dh": {"MODP_2048": "gmp"}}
CONN = SiteToSite(name="site", child="lan", local_addrs=("192.0.2.1",),
                  remote_addrs=("192.0.2.2",), local_id="a", remote_id="b", psk="x",
                  local_ts=("10.1.0.0/16",), remote_ts=("10.2.0.0/16",))
LOADED = ["kernel-libipsec", "kernel-netlink", "openssl", "aes", "hmac", "gmp", "vici"]

NO_OPENSSL = [p for p in LOADED if p != "openssl"]
NO_LIBIPSEC = [p for p in LOADED if p != "kernel-libipsec"]
GCM_MISSING = ("ESP proposal aes256gcm16 needs AES_GCM_16 (aead), which no loaded plugin "
               "provides (plugin gcm or aesni or openssl, Debian package "
               "libstrongswan-standard-plugins)")
OPENSSL_MISSING = "plugin openssl is not loaded (Debian package libstrongswan-standard-plugins)"

VERDICTS = [
    # (backend, plugins asked for, plugins loaded, algorithms offered, expected problems)
    ("kernel-libipsec", LOADED, LOADED, FULL, []),
    # The fresh machine: the lab asks for openssl, which is not there.
    ("kernel-libipsec", LOADED, NO_OPENSSL, NO_STANDARD, [OPENSSL_MISSING, GCM_MISSING]),
    # A load list without it (as the lab test starts charon).
    ("kernel-libipsec", NO_OPENSSL, NO_OPENSSL, NO_STANDARD, [GCM_MISSING]),
    # The kernel does ESP: charon's plugins are not asked about it.
    ("kernel-netlink", [p for p in NO_OPENSSL if p != "kernel-libipsec"],
     [p for p in NO_OPENSSL if p != "kernel-libipsec"], NO_STANDARD, []),
    ("kernel-libipsec", LOADED, NO_LIBIPSEC, FULL,
     ["plugin kernel-libipsec is not loaded (Debian package libcharon-extra-plugins)"]),
    ("kernel-netlink", NO_LIBIPSEC, NO_LIBIPSEC, {**FULL, "dh": {}},
     ["IKE proposal aes256-sha256-modp2048 needs MODP_2048 (dh), which no loaded plugin "
      "provides (plugin gmp or openssl, Debian package libstrongswan or "
      "libstrongswan-standard-plugins)"]),
]


@pytest.mark.parametrize(("backend", "wanted", "loaded", "offered", "expected"), VERDICTS)
def test_problems(backend: str, wanted: list[str], loaded: list[str],
                  offered: dict[str, dict[str, str]], expected: list[str]) -> None:
    assert problems(loaded=loaded, algorithms=offered, wanted_plugins=wanted, conn=CONN,
                    backend=backend) == expected


def test_missing_lists_only_what_lacks_something() -> None:
    assert missing(["aes256gcm16", "aes256-sha256", "default"], "esp", NO_STANDARD) == {
        "aes256gcm16": [A("aead", "AES_GCM_16")]}
