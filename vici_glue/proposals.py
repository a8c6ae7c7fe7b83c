"""Which algorithms a proposal needs, named as charon's ``get-algorithms`` names them.

charon does not check a proposal against its plugins when it selects one: a peer proposing
``aes256gcm16`` gets it selected, and only installing the CHILD_SA fails ("unsupported AEAD
algorithm AES_GCM_16"), answered as NO_PROPOSAL_CHOSEN, with no fallback to the next
proposal. So whoever loads a connection asks first, with these names.

Only the keywords below are understood; any other is an error (a proposal that cannot be
checked is not taken as fine). ``default`` is charon's own list, made at start from the
algorithms it has, so it needs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ProposalError(ValueError):
    """A proposal keyword this module cannot map to algorithms."""


@dataclass(frozen=True, order=True)
class Algorithm:
    """One algorithm as ``get-algorithms`` lists it: its kind and name."""

    kind: str  # encryption, aead, integrity, prf, dh
    name: str  # AES_CBC, AES_GCM_16, HMAC_SHA2_256_128, PRF_HMAC_SHA2_256, MODP_2048

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


# Hash keyword -> (integrity algorithm, the PRF that charon derives from it for IKE when
# the proposal names none).
_HASHES = {
    "sha1": ("HMAC_SHA1_96", "PRF_HMAC_SHA1"),
    "sha256": ("HMAC_SHA2_256_128", "PRF_HMAC_SHA2_256"),
    "sha2_256": ("HMAC_SHA2_256_128", "PRF_HMAC_SHA2_256"),
    "sha384": ("HMAC_SHA2_384_192", "PRF_HMAC_SHA2_384"),
    "sha2_384": ("HMAC_SHA2_384_192", "PRF_HMAC_SHA2_384"),
    "sha512": ("HMAC_SHA2_512_256", "PRF_HMAC_SHA2_512"),
    "sha2_512": ("HMAC_SHA2_512_256", "PRF_HMAC_SHA2_512"),
}
_PRFS = {f"prf{k}": prf for k, (_integ, prf) in _HASHES.items()}
_NAMED_GROUPS = {"curve25519": "CURVE_25519", "x25519": "CURVE_25519",
                 "curve448": "CURVE_448", "x448": "CURVE_448"}
_AES = re.compile(r"aes(128|192|256)")
# The ICV length, in bytes or (the older spelling) in bits.
_AES_GCM = re.compile(r"aes(128|192|256)gcm(8|12|16|64|96|128)")
_GCM_ICV = {"8": 8, "12": 12, "16": 16, "64": 8, "96": 12, "128": 16}
_MODP = re.compile(r"modp(768|1024|1536|2048|3072|4096|6144|8192)")
_ECP = re.compile(r"ecp(192|224|256|384|521)")


def required(proposal: str, protocol: str) -> set[Algorithm]:
    """The algorithms ``proposal`` (e.g. ``aes256-sha256-modp2048``) needs, for ``protocol``
    ``ike`` or ``esp``; empty for ``default``."""
    if protocol not in ("ike", "esp"):
        raise ValueError(f"protocol must be ike or esp, not {protocol!r}")
    if proposal == "default":
        return set()
    out: set[Algorithm] = set()
    implied_prfs: set[Algorithm] = set()
    explicit_prf = False
    for word in proposal.split("-"):
        if m := _AES_GCM.fullmatch(word):
            out.add(Algorithm("aead", f"AES_GCM_{_GCM_ICV[m.group(2)]}"))
        elif _AES.fullmatch(word):
            out.add(Algorithm("encryption", "AES_CBC"))
        elif word in _HASHES:
            integ, prf = _HASHES[word]
            out.add(Algorithm("integrity", integ))
            implied_prfs.add(Algorithm("prf", prf))
        elif word in _PRFS:
            explicit_prf = True
            out.add(Algorithm("prf", _PRFS[word]))
        elif m := _MODP.fullmatch(word):
            out.add(Algorithm("dh", f"MODP_{m.group(1)}"))
        elif m := _ECP.fullmatch(word):
            out.add(Algorithm("dh", f"ECP_{m.group(1)}"))
        elif word in _NAMED_GROUPS:
            out.add(Algorithm("dh", _NAMED_GROUPS[word]))
        elif word in ("esn", "noesn"):
            continue
        else:
            raise ProposalError(f"proposal {proposal!r}: cannot tell which algorithm "
                                f"{word!r} needs")
    if protocol == "ike" and not explicit_prf:
        out |= implied_prfs
    return out


def missing(proposals: tuple[str, ...] | list[str], protocol: str,
            available: dict[str, dict[str, str]]) -> dict[str, list[Algorithm]]:
    """Per proposal, the algorithms it needs that ``available`` (``get-algorithms``) lacks;
    proposals that lack nothing are left out."""
    out: dict[str, list[Algorithm]] = {}
    for proposal in proposals:
        gone = sorted(a for a in required(proposal, protocol)
                      if a.name not in available.get(a.kind, {}))
        if gone:
            out[proposal] = gone
    return out
