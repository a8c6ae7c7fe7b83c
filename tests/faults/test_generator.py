"""The fault suite's traffic and report, without a lab: the UDP stream split over several
sender processes (a real stream over loopback), and the docs' table read from both kinds of
result (``bench faults --json`` and a pytest log run with ``-s``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.faults import table

MIXGEN = [sys.executable, "-m", "lab.mixgen"]


def test_udp_stream_from_two_sender_processes() -> None:
    port = 30000 + os.getpid() % 20000
    server = subprocess.Popen(MIXGEN + ["server", "--udp-port", str(port), "--tcp-port",
                                        str(port + 10), "--seconds", "20"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and "listening" in server.stdout.readline()
        out = subprocess.run(MIXGEN + ["client", "--v4", "127.0.0.1", "--v6", "::1",
                                       "--udp-port", str(port), "--tcp-port", str(port + 10),
                                       "--pps", "4000", "--seconds", "2", "--udp-procs", "2"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    finally:
        server.terminate()
        server.wait()
    udp = json.loads(out.strip().splitlines()[-1])["udp"]
    assert udp["processes"] == 2 and udp["engine"] == "sendmmsg"
    # every flow sent, the helper's as well as this process's, and the sum is the rate
    assert len(udp["per_flow"]) == 4 and all(n > 0 for n in udp["per_flow"].values()), udp
    assert udp["sent"] == sum(udp["per_flow"].values())
    assert 0.8 * 8000 <= udp["sent"] <= 1.1 * 8000, udp


def _result(name: str, leaks: int, pps: int) -> dict:
    return {"kind": "fault", "fault": name, "result": "pass" if not leaks else "fail",
            "outage_s": 3.1, "cleartext": {"bo-gw": leaks, "ho-gw": 0},
            "generator": {"udp_pps": pps},
            "capture": {"bo-gw": {"dropped": 0}, "ho-gw": {"dropped": 0}},
            "transfers": [{"to": "10.2.0.10", "bytes": 10, "received": 10, "sha256_ok": True}],
            "new_connection_after": {"ok": True}}


def test_table_reads_bench_json_and_pytest_log(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"backend": "kernel-libipsec", "machine": {"vm_accel": None},
                                 "faults": [_result("dpd", 0, 19990)]}))
    log = tmp_path / "pytest.log"
    row = _result("child-flaps", 7, 4100) | {"backend": "kernel-netlink", "seconds": 20.0}
    row["capture"]["bo-gw"]["captured"] = 1000
    log.write_text("tests/faults/test_faults.py::test_fault[child-flaps] "
                   + json.dumps(row) + "\nFAILED\n")
    lines = table([bench, log]).splitlines()
    assert lines[2] == ("| kernel-libipsec | dpd | pass | 19990 | n/a | 0 / 0 | 0 | equal "
                        "| yes | 3.1 |")
    assert lines[3].startswith("| kernel-netlink | child-flaps | fail | 4100 | 50 | 7 / 0 |")


def test_rate_from_progress_lines_when_the_report_is_late() -> None:
    """Under TCG the generator's final report once came later than the suite waited: the
    rate is then read from its per-process progress lines (the last line of each)."""
    from lab.faults import _from_progress

    out = "\n".join(json.dumps(d) for d in (
        {"started": 1.0}, {"progress": 0, "sent": 100, "seconds": 1.0},
        {"progress": 1, "sent": 90, "seconds": 1.0}, {"progress": 0, "sent": 300, "seconds": 2.0},
        {"progress": 1, "sent": 200, "seconds": 2.1})) + "\n{trunc"
    late = _from_progress(out)
    assert late is not None and late["sent"] == 500 and late["pps"] == round(500 / 2.1)
    assert _from_progress('{"started": 1.0}\n') is None
