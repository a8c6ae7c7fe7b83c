"""The lab's connection definitions as charon receives them over VICI."""

from lab.lab import conn_for


def test_bo_gw_conn_message() -> None:
    msg = conn_for("bo-gw").conn_message()
    conn = msg["site"]
    assert conn["version"] == "2"
    assert conn["local_addrs"] == ["192.0.2.1"] and conn["remote_addrs"] == ["192.0.2.2"]
    assert conn["local-1"] == {"auth": "psk", "id": "bo-gw"}
    assert conn["remote-1"] == {"auth": "psk", "id": "ho-gw"}
    child = conn["children"]["lan"]
    # One CHILD_SA covers both LANs, IPv4 and IPv6.
    assert child["local_ts"] == ["10.1.0.0/24", "fd01::/64"]
    assert child["remote_ts"] == ["10.2.0.0/24", "fd02::/64"]
    assert child["dpd_action"] == "restart"


def test_ho_gw_mirrors_bo_gw() -> None:
    bo, ho = conn_for("bo-gw"), conn_for("ho-gw")
    assert (bo.local_ts, bo.remote_ts) == (ho.remote_ts, ho.local_ts)
    assert bo.shared_message()["data"] == ho.shared_message()["data"]
    assert ho.dpd_action == "clear"
