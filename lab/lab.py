"""The lab: four namespaces, two real charons, one site-to-site IKEv2 tunnel.

``Lab(name).up()`` builds it, ``down()`` removes everything it made (also what a crashed
run left behind), ``status()`` reads the gateways over VICI, ``exec()`` runs a command on a
node. Disruptions live in :mod:`lab.flap`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from lab import attach, netns, preflight, topology
from lab import backend as backend_probe
from lab.charon import Charon, CharonError
from lab.charon import binary as charon_binary
from lab.preflight import PreflightError
from lab.topology import CHILD, CONN, GATEWAYS, NODES, PEER
from vici_glue import session as vs
from vici_glue.conns import SiteToSite

STATE_ROOT = Path(os.environ.get("FLOWPIN_LAB_STATE", "/run/flowpin/lab"))
PSK = "flowpin-lab-psk-not-a-secret"
# "1": the lab's daemons compile their programs without BTF (datapath.btf = false): the
# test suite sets it (tests/conftest.py); the demo and the benchmarks build as shipped.
NO_BTF_ENV = "FLOWPIN_LAB_NO_BTF"
PEER_MODES = ("flowpin", "plain")


class LabError(RuntimeError):
    """An expected failure of a lab operation, with a message for the admin."""


@dataclass
class GatewayStatus:
    gw: str
    charon: str  # "running (pid N)" or "not running"
    ike_state: str
    child_state: str
    spi_in: str = ""
    spi_out: str = ""
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["local_ts"] = list(self.local_ts)
        d["remote_ts"] = list(self.remote_ts)
        return d


def conn_for(gw: str) -> SiteToSite:
    """The connection a lab gateway loads (both sides may initiate)."""
    peer = PEER[gw]
    return SiteToSite(
        name=CONN,
        child=CHILD,
        local_addrs=(topology.WAN_ADDR[gw],),
        remote_addrs=(topology.WAN_ADDR[peer],),
        local_id=gw,
        remote_id=peer,
        psk=PSK,
        local_ts=topology.LOCAL_TS[gw],
        remote_ts=topology.LOCAL_TS[peer],
        # The branch office restarts a dead tunnel; head office just clears it.
        dpd_action="restart" if gw == topology.BO_GW else "clear",
    )


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab creates network namespaces and starts charon: run it as root")


class Lab:
    def __init__(self, name: str = "flowpin") -> None:
        self.name = topology.check_name(name)
        self.state_dir = STATE_ROOT / self.name

    # --- naming -------------------------------------------------------------------------
    def ns(self, node: str) -> str:
        if node not in NODES:
            raise LabError(f"unknown node {node!r}: one of {', '.join(NODES)}")
        return topology.ns_name(self.name, node)

    def charon(self, gw: str) -> Charon:
        if gw not in GATEWAYS:
            raise LabError(f"{gw!r} is not a gateway: one of {', '.join(GATEWAYS)}")
        meta = self.meta()
        return Charon(self.ns(gw), self.state_dir / gw, meta.get("backend", ""),
                      meta.get("charon_options", {}))

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "lab.json").read_text())
        except FileNotFoundError:
            return {}

    def exists(self) -> bool:
        prefix = topology.ns_name(self.name, "")
        return self.state_dir.exists() or bool(netns.listing(prefix))

    def require_up(self) -> None:
        missing = [n for n in NODES if not netns.exists(self.ns(n))]
        if missing or not self.meta():
            raise LabError(f"lab {self.name!r} is not up (flowpin lab up --name {self.name})")

    # --- up -----------------------------------------------------------------------------
    def up(self, peer: str = "flowpin", timeout: float = 30.0,
           charon_options: dict[str, str] | None = None, preserve: bool = False,
           daemon_options: dict[str, Any] | None = None,
           load_conns: bool = True, daemons: bool = True) -> dict[str, Any]:
        """Build the lab and bring the tunnel up. ``charon_options`` are extra ``charon.*``
        settings for both gateways (e.g. ``{"make_before_break": "yes"}``). Without
        ``daemons`` no gateway runs flowpin: two plain strongSwan gateways."""
        require_root()
        if peer not in PEER_MODES:
            raise LabError(f"--peer must be one of {', '.join(PEER_MODES)}")
        if self.exists():
            raise LabError(f"lab {self.name!r} already exists: `flowpin lab down --name "
                           f"{self.name}` first")
        try:
            charon_binary()  # fail early, naming the missing package
        except CharonError as exc:
            raise LabError(str(exc)) from exc
        backend, why = backend_probe.probe()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        meta = {"name": self.name, "backend": backend, "backend_reason": why, "peer": peer,
                "charon_options": charon_options or {}, "preserve": preserve,
                "daemon_options": daemon_options or {}, "daemons": daemons,
                "created": time.time()}
        (self.state_dir / "lab.json").write_text(json.dumps(meta, indent=2))
        try:
            self._build_network()
            for gw in GATEWAYS:
                self.charon(gw).start()
                self.preflight(gw)
                if load_conns:
                    self.load_conn(gw)
            # flowpin before the tunnel: from its first packet, every flow is tracked.
            self.start_daemons(self.flowpin_gateways())
            if load_conns:
                self.bring_up(topology.BO_GW, timeout=timeout)
                for gw in self.flowpin_gateways():
                    self.wait_daemon_sees_up(gw)
        except (CharonError, vs.ViciError, PreflightError, OSError) as exc:
            detail = str(exc)
            self.down()
            raise LabError(f"lab up failed: {detail}") from exc
        except BaseException:
            self.down()
            raise
        return meta

    def _build_network(self) -> None:
        for node in NODES:
            netns.create(self.ns(node))
            settings = {
                "net.ipv6.conf.all.accept_dad": "0",
                "net.ipv6.conf.default.accept_dad": "0",
                "net.ipv6.conf.all.disable_ipv6": "0",
            }
            if node in GATEWAYS:
                settings |= {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
            netns.sysctl(self.ns(node), settings)
            with IPRoute(netns=self.ns(node)) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for i in range(len(topology.LINKS)):
            self._make_link(i)
        for node, (gw4, gw6) in topology.DEFAULT_ROUTES.items():
            with IPRoute(netns=self.ns(node)) as ipr:
                ipr.route("add", dst="0.0.0.0/0", gateway=gw4)
                ipr.route("add", dst="::/0", gateway=gw6, family=10)

    def _make_link(self, i: int) -> None:
        """Create the veth pair of ``topology.LINKS[i]``: names, addresses, up."""
        link = topology.LINKS[i]
        tmp_a, tmp_b = f"fp{os.getpid() % 100000}{i}a", f"fp{os.getpid() % 100000}{i}b"
        with IPRoute() as ipr:
            ipr.link("add", ifname=tmp_a, kind="veth", peer=tmp_b)
            ipr.link("set", index=ipr.link_lookup(ifname=tmp_a)[0], net_ns_fd=self.ns(link.a))
            ipr.link("set", index=ipr.link_lookup(ifname=tmp_b)[0], net_ns_fd=self.ns(link.b))
        for node, tmp, ifname, addrs in ((link.a, tmp_a, link.a_if, link.a_addrs),
                                         (link.b, tmp_b, link.b_if, link.b_addrs)):
            with IPRoute(netns=self.ns(node)) as ipr:
                idx = ipr.link_lookup(ifname=tmp)[0]
                ipr.link("set", index=idx, ifname=ifname)
                for cidr in addrs:
                    addr, plen = cidr.split("/")
                    ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
                ipr.link("set", index=idx, state="up")

    def recreate_lan(self, gw: str = topology.BO_GW) -> None:
        """Delete ``gw``'s LAN interface (and with it its veth peer on the LAN host) and
        create the pair again with the same names, addresses and routes, as a network
        configuration tool rebuilding the interface would."""
        i = next(i for i, ln in enumerate(topology.LINKS)
                 if (ln.b, ln.b_if) == (gw, topology.LAN_IF))
        link = topology.LINKS[i]
        with IPRoute(netns=self.ns(gw)) as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname=link.b_if)[0])
        self._make_link(i)
        gw4, gw6 = topology.DEFAULT_ROUTES[link.a]
        with IPRoute(netns=self.ns(link.a)) as ipr:
            ipr.route("replace", dst="0.0.0.0/0", gateway=gw4)
            ipr.route("replace", dst="::/0", gateway=gw6, family=10)

    def preflight(self, gw: str) -> None:
        """Ask ``gw``'s charon whether it has the plugins and algorithms the lab's connection
        needs; raise :class:`PreflightError` naming the missing ones and their package."""
        ch = self.charon(gw)
        with self.vici(gw) as s:
            preflight.check(gw, s, wanted_plugins=ch.plugins(), conn=conn_for(gw),
                            backend=ch.backend)

    def load_conn(self, gw: str) -> None:
        """Load ``gw``'s connection and secret into its charon over VICI."""
        with self.vici(gw) as s:
            vs.load(s, conn_for(gw))

    # --- flowpin daemons -----------------------------------------------------------------
    def flowpin_gateways(self) -> list[str]:
        """Gateways that run flowpin: both, or bo-gw alone with ``--peer plain``, or none
        (``up(daemons=False)``)."""
        meta = self.meta()
        if not meta.get("daemons", True):
            return []
        return [topology.BO_GW] if meta.get("peer") == "plain" else list(GATEWAYS)

    def instance(self, gw: str) -> str:
        return f"lab-{self.name}-{gw}"

    def daemon_socket(self, gw: str) -> str:
        return str(self.state_dir / gw / "flowpin.sock")

    def daemon_log(self, gw: str) -> Path:
        return self.state_dir / gw / "flowpin.log"

    def daemon_config(self, gw: str) -> Path:
        return self.state_dir / gw / "flowpin.toml"

    def write_daemon_config(self, gw: str) -> Path:
        meta = self.meta()
        opts = meta.get("daemon_options", {})
        preserve = "true" if meta.get("preserve") else "false"
        text = "\n".join([
            "# written by `flowpin lab up`",
            "[sysopt]",
            f"preserve-vpn-flows = {preserve}",
            f"reclassify-vpn = {str(opts.get('reclassify', True)).lower()}",
            "[timeouts]",
            f"conn = {json.dumps(opts.get('conn_timeout', '1:00:00'))}",
            "[vici]",
            f"socket = {json.dumps(self.charon(gw).vici_path)}",
            "[datapath]",
            f"instance = {json.dumps(self.instance(gw))}",
            f"lan-interfaces = [{json.dumps(topology.LAN_IF)}]",
            f"flow-table-size = {int(opts.get('flow_table_size', 65536))}",
            f"pickup-window = {int(opts.get('pickup_window', 30))}",
            f"hooks-watch-interval = {float(opts.get('hooks_watch_interval', 0.5))}",
            f"attach = {json.dumps(opts.get('attach') or attach.mode())}",
            f"btf = {'false' if os.environ.get(NO_BTF_ENV) == '1' else 'true'}",
            "sweep-interval = 0.5",
            "[demand]",
            f"initiate = {str(opts.get('initiate', True)).lower()}",
            "backoff-min = 1",
            "backoff-max = 4",
            "[resume]",
            f"kick = {str(opts.get('resume_kick', True)).lower()}",
            "[control]",
            f"socket = {json.dumps(self.daemon_socket(gw))}",
            "[metrics]",  # the gateway's own loopback (its namespace)
            f"listen = {json.dumps(opts.get('metrics', '127.0.0.1:9477'))}",
            "",
        ])
        path = self.daemon_config(gw)
        path.write_text(text)
        return path

    def daemon_pid(self, gw: str) -> int | None:
        try:
            pid = int((self.state_dir / gw / "flowpin.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def start_daemon(self, gw: str, stall: float = 60.0, limit: float = 900.0,
                     env: dict[str, str] | None = None) -> int:
        """Start ``flowpin daemon`` in ``gw``'s namespace; return once it answers.
        ``env``: extra environment (the fault suite breaks bcc's compile with it)."""
        return self.start_daemons([gw], stall, limit, env)[gw]

    def start_daemons(self, gws: Sequence[str], stall: float = 60.0,
                      limit: float = 900.0, env: dict[str, str] | None = None
                      ) -> dict[str, int]:
        """Start ``flowpin daemon`` on each of ``gws`` at once (their bcc compiles run in
        parallel); return their pids once every one answers.

        How long a start takes depends on the machine: bcc compiles the data path at load
        time, 3 s here, ~45 s in a VM without hardware virtualisation. So there is no fixed
        deadline: the wait goes on while a daemon works (its CPU time grows) and gives up
        when one has used no CPU for ``stall`` seconds, or after ``limit`` in all."""
        from controlplane.control import ControlError, request

        procs = {gw: self._spawn_daemon(gw, env) for gw in gws}
        start = time.monotonic()
        progress = {gw: (start, _cpu_ticks(proc.pid)) for gw, proc in procs.items()}
        waiting = list(gws)
        while waiting:
            for gw in list(waiting):
                proc = procs[gw]
                if proc.poll() is not None:
                    raise LabError(f"flowpin daemon on {gw} exited ({proc.returncode}):\n"
                                   f"{self.daemon_log_tail(gw)}")
                try:
                    request(self.daemon_socket(gw), "status", timeout=2)
                    waiting.remove(gw)
                    continue
                except ControlError:
                    pass
                now, used = time.monotonic(), _cpu_ticks(proc.pid)
                last, cpu = progress[gw]
                if used > cpu:
                    progress[gw] = (now, used)
                elif now - last > stall or now - start > limit:
                    why = (f"used no CPU for {stall:.0f} s" if now - last > stall
                           else f"did not answer within {limit:.0f} s")
                    raise LabError(f"flowpin daemon on {gw} {why}:\n"
                                   f"{self.daemon_log_tail(gw)}")
            if waiting:
                time.sleep(0.1)
        return {gw: proc.pid for gw, proc in procs.items()}

    def _spawn_daemon(self, gw: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        cfg = self.write_daemon_config(gw) if not self.daemon_config(gw).exists() \
            else self.daemon_config(gw)
        with open(self.daemon_log(gw), "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "controlplane.cli", "daemon", "--config", str(cfg)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, close_fds=True,
                preexec_fn=netns.preexec(self.ns(gw)),
                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        (self.state_dir / gw / "flowpin.pid").write_text(str(proc.pid))
        return proc

    def kill_daemon(self, gw: str, sig: int = signal.SIGKILL) -> None:
        pid = self.daemon_pid(gw)
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while not self._reaped(pid):
            if time.monotonic() > deadline:  # a graceful stop that hangs: no second daemon
                os.kill(pid, signal.SIGKILL)  # may ever run beside it
                deadline = time.monotonic() + 10
            time.sleep(0.05)

    @staticmethod
    def _reaped(pid: int) -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:  # not our child: gone when dead (a zombie is dead)
            return not _alive(pid)

    def daemon_log_tail(self, gw: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.daemon_log(gw).read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no daemon log)"

    def ask(self, gw: str, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """A control-socket request to ``gw``'s daemon."""
        from controlplane.control import request

        return request(self.daemon_socket(gw), cmd, args)

    def wait_daemon_sees_up(self, gw: str, timeout: float = 10.0,
                            tunnel: str = f"{CONN}/{CHILD}") -> None:
        """Return once flowpin on ``gw`` reports ``tunnel`` (the lab's own) UP. Other
        tunnels may be DOWN on purpose: one removed from charon is kept DOWN with its
        selectors for a while after a daemon restart (log 752113), which is not the lab
        failing to come back."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ctx = self.ask(gw, "show-vpn-context")
            if any(t["tunnel"] == tunnel and t["state"] == "UP" for t in ctx["tunnels"]):
                return
            time.sleep(0.05)
        raise LabError(f"flowpin on {gw} did not see {tunnel} up:\n"
                       f"{self.daemon_log_tail(gw)}")

    # --- VICI ---------------------------------------------------------------------------
    def vici(self, gw: str, timeout: float = 5.0) -> _ViciContext:
        return _ViciContext(self.charon(gw).vici_path, timeout)

    def child_installed(self, gw: str) -> list[dict[str, Any]]:
        return vs.installed_children(self._sas(gw), CONN, CHILD)

    def child_pending(self, gw: str) -> bool:
        """Whether ``gw`` has our CHILD_SA in a transitional state (being negotiated)."""
        return any(c.get("name") == CHILD and c.get("state") in ("CREATED", "INSTALLING",
                                                                  "REKEYING")
                   for _n, ike in self._sas(gw) for c in ike.get("child-sas", {}).values())

    def ike_states(self, gw: str) -> list[str]:
        """States of every IKE_SA of our connection on ``gw`` (empty: none)."""
        return [ike.get("state", "") for _n, ike in self._sas(gw)]

    def _sas(self, gw: str) -> list[tuple[str, dict[str, Any]]]:
        if not self.charon(gw).running():
            return []
        try:
            with self.vici(gw, timeout=1.0) as s:
                return [(n, sa) for n, sa in vs.list_sas(s) if n == CONN]
        except vs.ViciError:
            return []

    def bring_up(self, gw: str, timeout: float = 30.0) -> None:
        """Initiate the tunnel from ``gw`` unless it is up (or coming up) already, and
        return once both gateways have the CHILD_SA installed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.child_installed(g) for g in GATEWAYS):
                break
            if set(self.ike_states(gw)) & {"CONNECTING", "REKEYING", "DELETING"}:
                time.sleep(0.2)
                continue
            if self.child_pending(gw):
                # A CHILD_SA is being negotiated: let it finish before asking for another.
                time.sleep(0.2)
                continue
            try:
                with self.vici(gw) as s:
                    vs.initiate(s, CHILD, CONN, timeout=max(1.0, deadline - time.monotonic()))
            except vs.ViciError as exc:
                last = str(exc)
                time.sleep(0.5)
                if time.monotonic() >= deadline:
                    raise LabError(f"tunnel did not come up from {gw}: {last}\n"
                                   f"{self.charon(gw).log_tail()}") from exc
        if not all(self.child_installed(g) for g in GATEWAYS):
            raise LabError(f"tunnel did not come up within {timeout:.0f} s; {gw}'s charon "
                           f"log:\n{self.charon(gw).log_tail()}")
        for g in self.flowpin_gateways():  # and flowpin has seen it
            if self.daemon_pid(g):
                self.wait_daemon_sees_up(g, timeout=max(5.0, deadline - time.monotonic()))

    # --- down ---------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Remove every namespace, process, socket and file of this lab. Idempotent."""
        require_root()
        removed = []
        prefix = topology.ns_name(self.name, "")
        for ns in netns.listing(prefix):
            netns.kill_all(ns)
            netns.remove(ns)
            removed.append(ns)
        if self.state_dir.exists():
            # A charon could have been left outside the namespace list (namespace removed
            # by hand): kill by pid file too.
            for gw in GATEWAYS:
                Charon("", self.state_dir / gw, "").kill()
                self.kill_daemon(gw)
            shutil.rmtree(self.state_dir, ignore_errors=True)
        from controlplane.datapath import purge_pins

        for gw in GATEWAYS:  # the data path's pinned maps and the daemon's state
            purge_pins(self.instance(gw))
            shutil.rmtree(Path("/run/flowpin") / self.instance(gw), ignore_errors=True)
        return removed

    @staticmethod
    def down_all() -> list[str]:
        require_root()
        removed = []
        names = {ns[len(topology.PREFIX):].rsplit("-", 2)[0]
                 for ns in netns.listing(topology.PREFIX)}
        if STATE_ROOT.exists():
            names |= {p.name for p in STATE_ROOT.iterdir() if p.is_dir()}
        from controlplane.datapath import PIN_ROOT

        for root in (PIN_ROOT, Path("/run/flowpin")):
            if root.exists():  # daemon leftovers: lab-<name>-<gw>
                names |= {p.name[4:].rsplit("-", 2)[0] for p in root.iterdir()
                          if p.name.startswith("lab-") and p.name.endswith(GATEWAYS)}
        for name in sorted(names):
            try:
                removed += Lab(name).down()
            except ValueError:
                continue
        return removed

    # --- status / exec ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        self.require_up()
        meta = self.meta()
        gws = []
        for gw in GATEWAYS:
            ch = self.charon(gw)
            pid = ch.pid()
            st = GatewayStatus(gw, f"running (pid {pid})" if pid else "not running", "", "")
            if pid:
                sas = self._sas(gw)
                # The ESTABLISHED IKE_SA if there is one (others may be coming or going).
                ike = next((sa for _n, sa in sas if sa.get("state") == "ESTABLISHED"),
                           sas[0][1] if sas else None)
                if ike:
                    st.ike_state = ike.get("state", "")
                    for child in ike.get("child-sas", {}).values():
                        if child.get("name") != CHILD:
                            continue
                        st.child_state = child.get("state", "")
                        st.spi_in = child.get("spi-in", "")
                        st.spi_out = child.get("spi-out", "")
                        st.local_ts = tuple(child.get("local-ts", []))
                        st.remote_ts = tuple(child.get("remote-ts", []))
                        if st.child_state == "INSTALLED":
                            break
            row = st.as_dict()
            row["flowpin"] = ("not deployed" if gw not in self.flowpin_gateways() else
                              f"running (pid {self.daemon_pid(gw)})" if self.daemon_pid(gw)
                              else "not running")
            gws.append(row)
        return {"name": self.name, "backend": meta.get("backend"),
                "backend_reason": meta.get("backend_reason"), "peer": meta.get("peer"),
                "gateways": gws}

    def exec(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``node``'s namespace (output inherited unless redirected)."""
        self.require_up()
        ns = self.ns(node)
        if not argv:
            raise LabError("lab exec: no command given (flowpin lab exec NODE -- CMD ...)")
        argv = list(argv)
        env = dict(kw.pop("env", None) or os.environ)
        if node in GATEWAYS:
            # `flowpin …` on a gateway talks to that gateway's daemon.
            env["FLOWPIN_SOCKET"] = self.daemon_socket(node)
            if argv[0] == "flowpin":
                argv[0] = str(Path(sys.executable).with_name("flowpin"))
        try:
            return subprocess.run(argv, preexec_fn=lambda: netns.enter(ns), env=env, **kw)
        except FileNotFoundError as exc:
            raise LabError(f"{argv[0]}: command not found") from exc

    def popen(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        self.require_up()
        ns = self.ns(node)
        return subprocess.Popen(list(argv), preexec_fn=lambda: netns.enter(ns), **kw)


def _cpu_ticks(pid: int) -> int:
    """User + system CPU time of ``pid`` in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: exists and is not a zombie (a zombie whose parent has not
    reaped it yet still answers kill(pid, 0))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class _ViciContext:
    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self.session: Any = None

    def __enter__(self) -> Any:
        self.session = vs.connect(self.path, self.timeout)
        return self.session

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):  # closing a dead socket is fine
            self.session.transport.close()
