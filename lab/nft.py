"""nftables through libnftables (Debian's python3-nftables), never an `nft` process."""

from __future__ import annotations

from lab import netns


def apply(commands: list[str]) -> str:
    """Run ``commands`` in the calling process's namespace; '' or the first error."""
    import nftables

    nft = nftables.Nftables()
    for cmd in commands:
        rc, _out, err = nft.cmd(cmd)
        if rc != 0:
            return f"{cmd}: {err.strip()}"
    return ""


def apply_in(ns: str, commands: list[str]) -> str:
    """:func:`apply` inside network namespace ``ns`` (in a forked child)."""
    return netns.call(ns, apply, commands)
