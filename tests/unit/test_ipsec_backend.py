"""charon's IPsec backend, read from the plugins its VICI ``stats`` lists."""

import pytest

from vici_glue.session import ipsec_backend

CASES = [
    ("kernel ESP (XFRM)", [b"charon", b"kernel-netlink", b"vici"], "kernel-netlink"),
    ("user-space ESP, kernel-netlink kept for routes",
     [b"charon", b"kernel-libipsec", b"kernel-netlink", b"vici"], "kernel-libipsec"),
    ("no backend loaded", [b"charon", b"vici"], "unknown"),
    ("no plugin list", None, "unknown"),
]


@pytest.mark.parametrize(("plugins", "backend"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_backend_from_plugins(plugins: list[bytes] | None, backend: str) -> None:
    # As the vici package hands it over: keys str, values bytes.
    assert ipsec_backend({} if plugins is None else {"plugins": plugins}) == backend
