"""Several worker processes on one client port (``[listen] workers`` > 1).

``tenantgate serve`` becomes a supervisor: it binds the client port once with
SO_REUSEPORT and keeps that socket un-listened (so port 0 resolves to one real port
that every worker binds too; the kernel spreads new connections over the listening
workers), runs the AuditServer that keeps ONE hash chain for all workers, and starts N
workers (``tenantgate serve --worker SPEC``), each a full :class:`Proxy` with its own
event loop, pools, sessions and keyring. Workers reach each other and the supervisor
over the control channel (control.py) in a private 0700 runtime directory, removed at
exit. A worker that dies is logged and restarted with back-off; workers get SIGTERM
(and drain) when the supervisor dies (PR_SET_PDEATHSIG), so none is left orphaned.

The admin console and the metrics endpoint are served by the supervisor, not by a
worker: it is the one process that outlives any worker, sees every worker alike
(a dead or restarting worker is reported, not silently missing), and answers
/readyz with the state of all of them. Each admin command and each scrape fans out
over the control channel:

- list commands (SHOW SESSIONS, SERVERS, POOLS ...) concatenate the rows of every
  worker, with a ``worker`` column; SHOW STATS and SHOW TENANTS add up their numeric
  cells per row key (the non-numeric cells) — see merge.py;
- SHOW HELP/VERSION/CONFIG/USERS run in the supervisor (same config file), SHOW
  KEYS/AUDIT in one worker; SHUTDOWN stops the supervisor, which stops every worker;
  RELOAD reloads the supervisor's copy and every worker's; KILL SESSION goes to the
  session's owner (session ids are issued so that ``(id - 1) % workers`` is the owner);
  ROTATE KEY rotates in one worker, then every worker reloads that tenant's keys; every
  other action goes to all workers and their tags add up ("KILL 3").

In a [cluster] (``[listen] workers`` set there) the supervisor also serves the instance's peer
channel (cluster.py): a peer's cluster-wide command runs through the same routing as its admin
port (``Supervisor.run_here``), a peer's cancel goes to the worker its key names. A worker sends a
key of another instance straight to that instance (a PeerChannel that only calls).

Security monitoring runs its one analysis in the supervisor over the windows of every worker
(watch.py): SHOW ALERTS and UNDO ALERT run there, the responses are applied in every worker.

/metrics merges the workers' expositions (and the supervisor's own admin counters)
sample by sample: parsed with prometheus_client's text parser, every sample with the
same name and labels is summed — counters, gauges, histogram buckets, sums and counts
alike (merge.py). Prometheus' multiprocess mode was the alternative,
but it only covers the library's own metric types through mmap files, while our
Metrics reads live figures (sessions, backends, bytes, audit state) with custom
collectors at scrape time; merging expositions keeps one code path for both modes.

(Slightly over ~600 lines: the supervisor, its workers' side and the routing between them are one
protocol; the pieces without it live in control.py, merge.py, cluster.py and watch.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from prometheus_client import Counter

from tenantgate.audit.errors import AuditUnavailable
from tenantgate.audit.remote import AuditServer
from tenantgate.config import Config, load_config
from tenantgate.proxy import client
from tenantgate.proxy.monitor.signals import Response
from tenantgate.proxy.monitor.tally import Window
from tenantgate.proxy.peers import PeerChannel
from tenantgate.proxy.process import BackendRoleRefused, Proxy, instance_audit

from .admin import AdminConnection, AdminServer
from .cluster import ClusterOps
from .commands import AdminError, Caller, Command, ProxyCaller, Result, parse
from .control import ControlError, ControlServer, Message, call, socket_path
from .merge import merge_expositions, merge_results, unique
from .metrics import MetricsServer, readiness
from .serve import Ports, open_ports
from .watch import Hub, WorkerWatch

log = logging.getLogger("tenantgate.workers")

AUDIT_SOCKET = "audit.sock"
START_TIMEOUT = 60.0  # every worker must answer on its control socket by then
STABLE_AFTER = 30.0  # a worker that ran this long restarts without back-off
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
KILL_GRACE = 10.0  # after shutdown_timeout, a worker still running is killed

# Commands the supervisor answers itself, from the same config file the workers read.
# SHOW ALERTS / UNDO ALERT: the one monitoring analysis runs in the supervisor (watch.py).
LOCAL = frozenset({"SHOW HELP", "SHOW VERSION", "SHOW CONFIG", "SHOW USERS", "SHUTDOWN", "NOTE", "SHOW ALERTS",
                   "UNDO ALERT"})
ONE_WORKER = frozenset({"SHOW KEYS", "SHOW AUDIT"})  # the same answer in every worker
SUMMED = frozenset({"SHOW STATS", "SHOW TENANTS"})  # per-row-key figures that add up


# ---------------------------------------------------------------------- the worker side


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor tells a worker (``serve --worker JSON``)."""

    index: int
    count: int
    port: int
    runtime_dir: str
    parent: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


class Worker:
    """A worker's extras around its Proxy: the control socket and cancel forwarding."""

    def __init__(self, proxy: Proxy, spec: WorkerSpec) -> None:
        self.proxy = proxy
        self.spec = spec
        self.control = ControlServer(self.handle)
        self.watch = WorkerWatch(spec.runtime_dir, spec.index)
        self.cancels_forwarded = Counter(
            "tenantgate_cancel_forwarded",
            "Cancel requests received by this worker for another worker's session, handed over",
            registry=proxy.metrics.registry,
        )
        proxy.cancels.forward = self.forward
        cluster = proxy.config.cluster
        if cluster is not None:  # a key of another instance goes straight to it (the supervisor serves ours)
            self.peers = PeerChannel(cluster)
            proxy.cancels.forward_peer = self.peers.forward_cancel

    async def forward(self, owner: int, pid: int, secret: int) -> None:
        """Hand a CancelRequest for another worker's session to that worker (it checks the key)."""
        self.cancels_forwarded.inc()
        log.debug("cancel request for a session of worker %d forwarded", owner)
        try:
            await call(socket_path(self.spec.runtime_dir, owner), {"op": "cancel", "pid": pid, "secret": secret})
        except ControlError as exc:
            log.warning("forwarding a cancel request to worker %d failed: %s", owner, exc)

    async def handle(self, request: Message) -> Message:
        op = request.get("op")
        proxy = self.proxy
        if op == "ping":
            return {"pid": os.getpid()}
        if op == "cancel":
            pid, secret = int(request["pid"]), int(request["secret"])
            target = proxy.cancels.local(pid, secret)
            if target is None:
                log.info("forwarded cancel request with an unknown key ignored")
            else:
                await target.cancel_backend()
            return {}
        if op == "admin":
            return await self.admin(str(request["command"]))
        if op == "metrics":
            return {"text": proxy.metrics.exposition().decode()}
        if op == "ready":
            return {"problems": await readiness(proxy)}
        if op == "keys":  # another worker rotated this tenant's keys
            if proxy.keyring is not None:
                await proxy.keyring.ensure_loaded(str(request["tenant"]), create=False, force=True)
            return {}
        if op == "stop":
            proxy.request_stop(bool(request["wait"]))
            return {}
        if op == "monitor_fold":  # the supervisor's analysis takes this worker's window (watch.py)
            return self.watch.fold(proxy.signals, request)
        if op == "monitor_respond":
            self.watch.respond(proxy.signals, request)
            return {}
        return {"failed": f"unknown control operation {op!r}"}

    async def admin(self, text: str) -> Message:
        try:
            cmd, args = parse(text)
            result = await cmd.run(ProxyCaller(self.proxy), args)
        except AdminError as exc:
            return {"error": [exc.sqlstate, exc.message]}
        answer: Message = {
            "tag": result.tag,
            "columns": list(result.columns),
            "rows": [list(row) for row in result.rows],
            "notices": result.notices,
        }
        if result.after is not None:
            answer["after"] = result.after  # run by the control server once the answer is sent
        return answer


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor dies (Linux), so no worker outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the supervisor was gone before prctl took effect
        raise SystemExit(1)


class _WorkerName(logging.Filter):
    """Marks every log line with the worker that wrote it."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.suffix = f"[worker {index}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self.suffix):
            record.name += self.suffix
        return True


async def run_worker(config_path: str, spec: WorkerSpec) -> int:
    """One worker process: serve until the supervisor (or a signal) says stop, then drain."""
    _die_with_parent(spec.parent)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerName(spec.index))
    config = load_config(config_path)
    audit_socket = os.path.join(spec.runtime_dir, AUDIT_SOCKET) if config.audit is not None else None
    proxy = Proxy(config, worker_index=spec.index, worker_count=spec.count, port=spec.port, audit_socket=audit_socket)
    proxy.config_path = config_path
    # session ids unique across workers, owner = (id - 1) % count: KILL SESSION finds its worker
    client.number_sessions(spec.index + 1, spec.count)
    worker = Worker(proxy, spec)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, proxy.request_stop, True)
    loop.add_signal_handler(signal.SIGINT, proxy.request_stop, True)
    loop.add_signal_handler(signal.SIGHUP, proxy.reload)
    try:
        await proxy.start()
    except AuditUnavailable as exc:
        log.error("%s", exc)
        return 1
    await worker.control.start(socket_path(spec.runtime_dir, spec.index))
    await proxy.stop_requested.wait()
    log.info("shutting down: waiting up to %.0fs for sessions", proxy.stop_timeout)
    await proxy.shutdown(proxy.stop_timeout)
    worker.watch.leave(proxy.signals)
    worker.control.close()
    return 0


# ---------------------------------------------------------------------- the supervisor side


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen) a SO_REUSEPORT socket: it fixes the port, port 0 included, that the
    workers bind; unlistened, it takes no connections from them."""
    addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = addresses[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class ConsoleProxy(Proxy):
    """The supervisor's Proxy: never started, it backs the admin and metrics ports (config,
    admin logins, the admin command counters, admin audit records)."""

    def __init__(self, config: Config, supervisor: Supervisor, audit_socket: str | None) -> None:
        self.supervisor = supervisor  # before Proxy.__init__: it configures monitoring
        super().__init__(config, worker_count=supervisor.count, audit_socket=audit_socket)

    @property
    def serves(self) -> bool:
        return False  # its workers serve the sessions

    @property
    def analyses(self) -> bool:
        return True  # the one analysis of all workers' sessions

    async def collect_window(self) -> Window:
        return await self.supervisor.hub.collect()

    def publish_responses(self, responses: list[Response]) -> None:
        self.supervisor.hub.publish(responses)


@dataclass
class WorkerProcess:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: int = 0  # consecutive short-lived runs: the back-off grows with them

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    def __init__(self, config_path: str, config: Config, log_level: str, log_json: bool) -> None:
        self.config_path = config_path
        self.config = config
        self.count = config.listen.workers
        self.log_args = ["--log-level", log_level] + (["--log-json"] if log_json else [])
        self.runtime_dir = ""
        self.port = 0
        self.workers = [WorkerProcess(i) for i in range(self.count)]
        self.stopping = False
        self.started = False
        self.start_failed = asyncio.Event()
        self.wake = asyncio.Event()  # ends back-off sleeps at shutdown
        self.audit_server: AuditServer | None = None
        self.ports = Ports()
        self.cluster: ClusterOps | None = None  # [cluster]: this supervisor serves the instance's peer channel
        self._watchers: set[asyncio.Task[None]] = set()
        self.hub = Hub("", self.count, lambda index: self.workers[index].running)

    async def run(self) -> int:
        self.runtime_dir = tempfile.mkdtemp(prefix="tenantgate-")  # 0700: the control sockets' home
        self.hub.runtime_dir = self.runtime_dir
        try:
            return await self._run()
        finally:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

    async def _run(self) -> int:
        host, port = self.config.listen.address
        try:
            reserved = reserve_port(host, port)
        except OSError as exc:
            log.error("cannot bind %s:%d: %s", host, port, exc.strerror or exc)
            return 1
        with reserved:
            self.port = reserved.getsockname()[1]
            return await self._serve()

    async def _serve(self) -> int:
        audit_path = os.path.join(self.runtime_dir, AUDIT_SOCKET)
        console = ConsoleProxy(self.config, self, audit_path if self.config.audit is not None else None)
        console.config_path = self.config_path
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, console.request_stop, True)
        loop.add_signal_handler(signal.SIGINT, console.request_stop, True)
        loop.add_signal_handler(signal.SIGHUP, self.reload, console)
        try:
            await console.preflight()
            if self.config.audit is not None:
                cluster = self.config.cluster  # one chain per instance, named by its id
                self.audit_server = AuditServer(
                    instance_audit(self.config), audit_path, instance_id=cluster.instance if cluster else None
                )
                await self.audit_server.start()
                assert console.audit is not None
                await console.audit.start()
        except (BackendRoleRefused, AuditUnavailable) as exc:
            log.error("%s", exc)
            await self._close_audit(console)
            return 1
        for w in self.workers:
            self._spawn(w)
        self.started = await self._wait_started(console.stop_requested)
        if self.started:
            listen = self.config.listen
            self.ports = await open_ports(console, AggregatingAdminServer, AggregatingMetricsServer)
            await self._join_cluster(console)
            console.start_monitoring()
            log.info("%d workers serving %s:%d", self.count, listen.address[0], self.port)
        elif not console.stop_requested.is_set():
            await self._stop(console, wait=False)
            return 1
        await console.stop_requested.wait()
        return await self._stop(console, wait=console.stop_timeout > 0)

    async def _join_cluster(self, console: ConsoleProxy) -> None:
        """[cluster]: peers' commands run on every worker here, their cancels go to the key's worker."""
        if self.config.cluster is None:
            return
        caller = ProxyCaller(console)

        async def run(cmd: Command, args: list[str]) -> Result:
            return await self.run_here(caller, cmd, args)

        self.cluster = ClusterOps(console, run=run, cancel=self.cancel_in_worker)
        await self.cluster.channel.start()
        if self.ports.admin is not None:
            self.ports.admin.cluster = self.cluster

    # ------------------------------------------------------------------ processes

    def _spawn(self, w: WorkerProcess) -> None:
        task = asyncio.get_running_loop().create_task(self._keep(w))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _keep(self, w: WorkerProcess) -> None:
        """Run worker ``w`` and start it again whenever it dies, until the supervisor stops."""
        spec = WorkerSpec(w.index, self.count, self.port, self.runtime_dir, os.getpid())
        while not self.stopping:
            w.started = time.monotonic()
            w.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tenantgate.proxy.cli", "serve", "--config", self.config_path,
                "--worker", spec.to_json(), *self.log_args,
            )  # fmt: skip
            if self.stopping:  # started while _stop was telling the others
                w.proc.send_signal(signal.SIGTERM)
            code = await w.proc.wait()
            if self.stopping:
                return
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
            if not self.started:
                log.error("worker %d (pid %d) %s while starting", w.index, w.proc.pid, how)
                self.start_failed.set()
                return
            w.failures = 0 if time.monotonic() - w.started >= STABLE_AFTER else w.failures + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** max(w.failures - 1, 0)) if w.failures else 0.0
            log.error("worker %d (pid %d) %s; restarting it in %.1fs", w.index, w.proc.pid, how, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)

    async def _wait_started(self, stop: asyncio.Event) -> bool:
        """True once every worker answers on its control socket; False if one died first (or a
        stop was asked for)."""
        deadline = time.monotonic() + START_TIMEOUT
        pending = set(range(self.count))
        while pending and not self.start_failed.is_set() and not stop.is_set():
            if time.monotonic() > deadline:
                log.error("workers %s did not start within %.0fs", sorted(pending), START_TIMEOUT)
                return False
            for index in list(pending):
                if os.path.exists(socket_path(self.runtime_dir, index)):
                    try:
                        await call(socket_path(self.runtime_dir, index), {"op": "ping"}, timeout=1.0)
                    except ControlError:
                        continue
                    pending.discard(index)
            if pending:
                await asyncio.sleep(0.05)
        return not pending

    async def _stop(self, console: ConsoleProxy, wait: bool) -> int:
        """Every worker drains (or stops at once), then the supervisor's ports and audit close."""
        self.stopping = True
        self.wake.set()
        console.stopping.set()
        self.ports.stop_accepting()
        timeout = self.config.server.shutdown_timeout if wait else 0.0
        log.info("shutting down %d workers: waiting up to %.0fs for sessions", self.count, timeout)
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for w in self.workers:
            if w.running:
                try:
                    await call(socket_path(self.runtime_dir, w.index), {"op": "stop", "wait": wait}, timeout=2.0)
                except ControlError:  # not answering yet (starting): the signal drains it too
                    assert w.proc is not None
                    w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout + KILL_GRACE
        for proc in live:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await proc.wait()
            except TimeoutError:
                log.error("worker pid %d did not stop: killed", proc.pid)
                proc.kill()
                await proc.wait()
        if self._watchers:
            await asyncio.wait(self._watchers, timeout=2)
        await self.ports.close()
        if self.cluster is not None:
            self.cluster.channel.close()
        await console.close_monitoring()  # the workers' last counts are in: before the audit closes
        await self._close_audit(console)
        return 0 if all(proc.returncode == 0 for proc in live) else 1

    async def _close_audit(self, console: ConsoleProxy) -> None:
        if console.audit is not None:
            await console.audit.close()
        if self.audit_server is not None:  # last: the workers' final records are in
            await self.audit_server.close()

    # ------------------------------------------------------------------ talking to workers

    def reload(self, console: ConsoleProxy) -> None:
        """SIGHUP: the supervisor's copy of the config (admin logins, SHOW CONFIG) and every worker's."""
        console.reload()
        for w in self.workers:
            if w.running:
                assert w.proc is not None
                w.proc.send_signal(signal.SIGHUP)

    def first_live(self) -> int:
        return next((w.index for w in self.workers if w.running), 0)

    async def ask(self, index: int, request: Message) -> Message:
        if not self.workers[index].running:
            raise ControlError("not running")
        return await call(socket_path(self.runtime_dir, index), request)

    async def broadcast(self, request: Message) -> tuple[list[tuple[int, Message]], list[str]]:
        """(answers of the workers that answered, a note for each one that did not)."""
        replies = await asyncio.gather(*(self.ask(w.index, request) for w in self.workers), return_exceptions=True)
        answers: list[tuple[int, Message]] = []
        notes: list[str] = []
        for index, reply in enumerate(replies):
            if isinstance(reply, ControlError):
                notes.append(f"worker {index} did not answer: {reply}")
            elif isinstance(reply, BaseException):
                raise reply
            else:
                answers.append((index, reply))
        return answers, notes

    async def cancel_in_worker(self, pid: int, secret: int) -> None:
        """A peer's forwarded cancel, to the worker its key names (which checks the key)."""
        assert self.cluster is not None
        owner = self.cluster.proxy.cancels.owner(secret)
        try:
            await self.ask(owner, {"op": "cancel", "pid": pid, "secret": secret})
        except ControlError as exc:
            log.warning("forwarding a peer's cancel request to worker %d failed: %s", owner, exc)

    async def run_here(self, caller: Caller, cmd: Command, args: list[str]) -> Result:
        """A command on this instance: each runs where its answer lives (see the module docstring)."""
        name = cmd.name
        text = " ".join((*cmd.words, *args))
        if name == "UNDO ALERT":  # answered once every worker has lifted the response
            result = await cmd.run(caller, args)
            result.notices += await self.hub.settled()
            return result
        if name in LOCAL:
            return await cmd.run(caller, args)
        if name in ("RELOAD", "CREATE TENANT"):  # CREATE TENANT writes the config, then reloads it
            local = await cmd.run(caller, args)  # the supervisor's copy; a bad file is refused here
            result = await self.admin_all("RELOAD", summed=False)
            result.notices = unique([*local.notices, *result.notices])
            result.tag = local.tag
            return result
        if name in ONE_WORKER:
            return await self.admin_one(self.first_live(), text)
        if name == "KILL SESSION":
            owner = (int(args[0]) - 1) % self.count if args[0].isdigit() else self.first_live()
            return await self.admin_one(owner, text)
        if name == "ROTATE KEY":
            result = await self.admin_one(self.first_live(), text)
            answers, notes = await self.broadcast({"op": "keys", "tenant": args[0]})
            result.notices += notes + [f"worker {i}: {_failure_text(a)}" for i, a in answers if "failed" in a]
            return result
        return await self.admin_all(text, summed=name in SUMMED)

    async def admin_one(self, index: int, text: str) -> Result:
        try:
            answer = await self.ask(index, {"op": "admin", "command": text})
        except ControlError as exc:
            raise AdminError("57P03", f"worker {index} did not answer: {exc}") from None
        _raise_failure(index, answer)
        return _result(answer)

    async def admin_all(self, text: str, summed: bool) -> Result:
        answers, notes = await self.broadcast({"op": "admin", "command": text})
        ok = [(i, a) for i, a in answers if "error" not in a and "failed" not in a]
        failed = [(i, a) for i, a in answers if "error" in a or "failed" in a]
        if not ok:
            for index, answer in failed:
                _raise_failure(index, answer)
            raise AdminError("57P03", "no worker answered: " + "; ".join(notes))
        result = merge_results(ok, summed)
        result.notices += [f"worker {i}: {_failure_text(a)}" for i, a in failed] + notes
        return result


def _failure_text(answer: Message) -> str:
    return str(answer["error"][1]) if "error" in answer else f"internal error: {answer['failed']}"


def _raise_failure(index: int, answer: Message) -> None:
    if "error" in answer:
        sqlstate, message = answer["error"]
        raise AdminError(str(sqlstate), str(message))
    if "failed" in answer:
        log.error("worker %d failed an admin command: %s", index, answer["failed"])
        raise AdminError("XX000", f"internal error in worker {index}")


def _result(answer: Message) -> Result:
    rows = [tuple(row) for row in answer.get("rows", ())]
    return Result(answer["tag"], tuple(answer.get("columns", ())), rows, list(answer.get("notices", ())))


def _supervisor(proxy: Proxy) -> Supervisor:
    assert isinstance(proxy, ConsoleProxy)
    return proxy.supervisor


class AggregatingAdminServer(AdminServer):
    """The admin port of a supervisor: each command runs where its answer lives."""

    async def run_here(self, conn: AdminConnection, cmd: Command, args: list[str]) -> Result:
        return await _supervisor(self.proxy).run_here(conn, cmd, args)


class AggregatingMetricsServer(MetricsServer):
    """The metrics port of a supervisor: sums over workers, ready only when all of them are."""

    async def exposition(self) -> bytes:
        answers, notes = await _supervisor(self.proxy).broadcast({"op": "metrics"})
        for note in notes:
            log.warning("scrape: %s", note)
        return merge_expositions([self.metrics.exposition().decode(), *(str(a["text"]) for _, a in answers)])

    async def readiness(self) -> list[str]:
        sup = _supervisor(self.proxy)
        problems = ["shutting down"] if self.proxy.stopping.is_set() else []
        answers, notes = await sup.broadcast({"op": "ready"})
        problems += notes
        for index, answer in answers:
            problems += [f"worker {index}: {p}" for p in answer.get("problems", ())]
        return problems


async def supervise(config_path: str, log_level: str, log_json: bool) -> int:
    return await Supervisor(config_path, load_config(config_path), log_level, log_json).run()
