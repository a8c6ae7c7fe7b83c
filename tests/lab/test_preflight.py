"""Before its tunnel comes up, the lab asks each real charon over VICI whether it has the
plugins and algorithms the lab's connection needs, and names the Debian package if not.

The charons here are started with a reduced ``load =`` list, the way a machine without a
package looks to charon: the plugin is simply not there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import backend as backend_probe
from lab import netns, preflight
from lab.backend import KERNEL_LIBIPSEC
from lab.charon import Charon, plugins
from lab.lab import Lab, LabError, conn_for
from lab.topology import BO_GW
from tests.conftest import require_lab_prerequisites, unique_lab_name
from tests.lab.test_lifecycle import leftovers
from vici_glue import session as vs

pytestmark = pytest.mark.lab

# What each plugin needs loaded beside it to offer its algorithms (hmac builds on the
# hashers, gcm on AES); charon itself wants a kernel interface, a socket, a RNG, a nonce
# generator and SHA-1 (which offers none of the table's algorithms), and vici to be asked.
BUILDS_ON = {"hmac": "sha1 sha2", "gcm": "aes"}


@pytest.fixture(scope="module")
def backend() -> str:
    require_lab_prerequisites()
    return backend_probe.probe()[0]


@pytest.fixture
def ns() -> Iterator[str]:
    """A bare namespace for a charon of the test's own."""
    name = f"fp{unique_lab_name('pre')}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.kill_all(name)
        netns.remove(name)


def without(backend: str, *dropped: str) -> str:
    return " ".join(p for p in plugins(backend) if p not in dropped)


def lab_up_error(load: str) -> str:
    lab = Lab(unique_lab_name("pre"))
    try:
        with pytest.raises(LabError) as err:
            lab.up(charon_options={"load": load})
    finally:
        lab.down()
    assert not leftovers(lab)
    return str(err.value)


def test_without_openssl_and_gcm_the_lab_names_the_package(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fresh machine's case: no libstrongswan-standard-plugins. With kernel-libipsec
    charon does ESP itself and the lab's aes256gcm16 has no implementation. (kernel-libipsec
    works on any kernel, so the lab is told to use it here even where the kernel has ESP.)"""
    require_lab_prerequisites()
    monkeypatch.setattr(backend_probe, "probe", lambda: (KERNEL_LIBIPSEC, "the test's choice"))
    msg = lab_up_error(without(KERNEL_LIBIPSEC, "openssl", "gcm", "aesni"))
    assert "\n" not in msg, msg
    assert msg.startswith("lab up failed: charon on bo-gw cannot bring the tunnel up: "), msg
    assert "ESP proposal aes256gcm16 needs AES_GCM_16 (aead)" in msg, msg
    assert "Debian package libstrongswan-standard-plugins" in msg, msg
    # IKE's aes256-sha256-modp2048 is still covered by libstrongswan's own plugins.
    assert "IKE proposal" not in msg, msg


def test_without_a_dh_group_the_ike_proposal_is_named(backend: str) -> None:
    """On either backend: IKE is always charon's own crypto."""
    msg = lab_up_error(without(backend, "openssl", "gmp"))
    assert "\n" not in msg, msg
    assert "IKE proposal aes256-sha256-modp2048 needs MODP_2048 (dh)" in msg, msg
    assert "plugin gmp or openssl, Debian package libstrongswan or " \
           "libstrongswan-standard-plugins" in msg, msg


def test_a_plugin_charon_cannot_find_is_named(backend: str) -> None:
    """charon skips a listed plugin it cannot find without a word; the lab does not."""
    msg = lab_up_error(without(backend) + " nosuchplugin")
    assert "\n" not in msg, msg
    assert "plugin nosuchplugin is not loaded (no Debian package flowpin knows provides it)" \
        in msg, msg


def test_the_lab_s_own_charon_passes(backend: str, ns: str, tmp_path: Path) -> None:
    """The check that `lab up` runs finds nothing to say about a charon with the lab's
    plugin list (the whole lab suite brings tunnels up behind it)."""
    ch = Charon(ns, tmp_path / "run", backend)
    ch.start()
    session = vs.connect(ch.vici_path)
    try:
        preflight.check(BO_GW, session, wanted_plugins=ch.plugins(), conn=conn_for(BO_GW),
                        backend=backend)
    finally:
        session.transport.close()
        ch.kill()


def test_kernel_esp_needs_no_esp_plugins(backend: str, ns: str, tmp_path: Path) -> None:
    """With kernel-netlink the kernel does ESP: the ESP proposals are not asked of charon's
    plugins (with kernel-libipsec they are, see above)."""
    ch = Charon(ns, tmp_path / "run", backend,
                {"load": without(backend, "openssl", "gcm", "aesni")})
    ch.start()
    session = vs.connect(ch.vici_path)
    try:
        found = preflight.problems(loaded=vs.loaded_plugins(session),
                                   algorithms=vs.algorithms(session),
                                   wanted_plugins=ch.plugins(), conn=conn_for(BO_GW),
                                   backend="kernel-netlink")
        assert found == []
    finally:
        session.transport.close()
        ch.kill()


@pytest.mark.parametrize("plugin", sorted({p for ps in preflight.ALGORITHM_PLUGINS.values()
                                           for p in ps}))
def test_algorithm_table_is_what_charon_says(backend: str, ns: str, tmp_path: Path,
                                             plugin: str) -> None:
    """Each plugin the preflight's errors name for an algorithm really provides it: a charon
    that loads that plugin (and what it builds on) alone lists the algorithm as its."""
    if plugin == "aesni" and " aes " not in Path("/proc/cpuinfo").read_text().replace(
            "\n", " "):
        pytest.fail("this CPU has no AES-NI: the aesni plugin offers nothing here",
                    pytrace=False)
    ch = Charon(ns, tmp_path / "run", backend,
                {"load": f"kernel-netlink socket-default random nonce sha1 "
                         f"{BUILDS_ON.get(plugin, '')} {plugin} vici"})
    ch.start()
    session = vs.connect(ch.vici_path)
    try:
        offered = {name: by for algs in vs.algorithms(session).values()
                   for name, by in algs.items()}
        claimed = sorted(a for a, ps in preflight.ALGORITHM_PLUGINS.items() if plugin in ps)
        wrong = {a: offered.get(a, "(not offered)") for a in claimed if offered.get(a) != plugin}
        assert not wrong, f"{plugin}: {wrong}"
    finally:
        session.transport.close()
        ch.kill()
