"""Memory of a proxy holding idle, logged-in client connections (issue #7: 10,000 in under 500 MB).

Clients are asyncio connections that send the startup packet, do the SCRAM-SHA-256
exchange with the proxy's codec, wait for ReadyForQuery and then stay silent; up to
``CONCURRENT_LOGINS`` log in at once. The client's PBKDF2 result is cached per
(password, salt, iterations), so the bench spends almost no CPU on it and logging in
costs what it costs the proxy. After each of ``steps`` steps the RSS and PSS of the
proxy's whole process tree (supervisor and workers) are read once they stop moving.

The RSS per client is the least-squares slope over the readings; when fewer clients
than requested could be held (a session-mode proxy needs a PostgreSQL backend per
client), the figure at the requested count is an extrapolation, labelled as such.

>>> slope_and_intercept([(0, 100), (10, 300), (20, 500)])
(20.0, 100.0)
>>> slope_and_intercept([(0, 100), (0, 104)]) is None
True
>>> goal({"requested_clients": 10_000, "measured_clients": 10_000,
...       "readings": [{"clients": 10_000, "rss_bytes": 400_000_000}]})["passed"]
True
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from tenantgate.proxy import codec

from .procs import tree_memory

CONCURRENT_LOGINS = 64
GOAL_CLIENTS, GOAL_BYTES = 10_000, 500_000_000  # issue #7: 10,000 idle clients in under 500 MB
LOGIN_TIMEOUT = 60.0


class LoginFailed(Exception):
    """The proxy refused a login or answered off-script."""


def slope_and_intercept(points: Sequence[tuple[int, int]]) -> tuple[float, float] | None:
    """Least-squares line through (clients, bytes); None when fewer than two client counts were reached."""
    if len({p[0] for p in points}) < 2:
        return None
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    slope, intercept = np.polyfit(xs, ys, 1)
    return round(float(slope), 1), round(float(intercept), 1)


@functools.lru_cache(maxsize=256)
def _client_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, StoredKey) of RFC 5802 for an ASCII password: the PBKDF2 done once per salt."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    return client_key, hashlib.sha256(client_key).digest()


def client_final(password: str, client_first_bare: str, server_first: bytes) -> bytes:
    """client-final-message for ``server_first`` (``r=<nonce>,s=<salt>,i=<iterations>``)."""
    text = server_first.decode("ascii")
    attrs = dict(part.split("=", 1) for part in text.split(","))
    client_key, stored_key = _client_keys(password, base64.b64decode(attrs["s"]), int(attrs["i"]))
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{client_first_bare},{text},{without_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


async def _message(reader: asyncio.StreamReader) -> object:
    header = await reader.readexactly(5)
    body = await reader.readexactly(int.from_bytes(header[1:], "big") - 4)
    return codec.decode_backend(header[0], body)


def _refusal(msg: object, expected: str) -> LoginFailed:
    if isinstance(msg, codec.ErrorResponse):
        return LoginFailed(f"{msg.sqlstate} {msg.message}")
    return LoginFailed(f"expected {expected}, got {type(msg).__name__}")


async def open_idle_client(port: int, user: str, password: str, database: str) -> asyncio.StreamWriter:
    """A connection logged in as ``user`` (SCRAM-SHA-256) and left idle; raises LoginFailed or OSError."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(codec.StartupMessage({"user": user, "database": database}).encode())
        msg = await _message(reader)
        if not (isinstance(msg, codec.Authentication) and msg.code == codec.AUTH_SASL):
            raise _refusal(msg, "AuthenticationSASL")
        client_first_bare = f"n=,r={base64.b64encode(os.urandom(18)).decode()}"
        writer.write(codec.sasl_initial_response("SCRAM-SHA-256", f"n,,{client_first_bare}".encode()).encode())
        msg = await _message(reader)
        if not (isinstance(msg, codec.Authentication) and msg.code == codec.AUTH_SASL_CONTINUE):
            raise _refusal(msg, "AuthenticationSASLContinue")
        writer.write(codec.PasswordMessage(client_final(password, client_first_bare, msg.data)).encode())
        while not isinstance(msg := await _message(reader), codec.ReadyForQuery):
            if isinstance(msg, codec.ErrorResponse):
                raise _refusal(msg, "ReadyForQuery")
    except BaseException:
        writer.close()
        raise
    return writer


async def _settled_memory(pid: int) -> dict[str, Any]:
    """Tree memory once the proxy has finished reacting to the last logins (two equal RSS readings)."""
    last = tree_memory(pid)
    for _ in range(20):
        await asyncio.sleep(0.1)
        now = tree_memory(pid)
        if now["rss_bytes"] == last["rss_bytes"]:
            return now
        last = now
    return last


async def _measure(port: int, pid: int, logins: Sequence[tuple[str, str]], database: str, measure: int,
                   steps: int, concurrency: int) -> tuple[list[dict[str, Any]], str | None]:
    writers: list[asyncio.StreamWriter] = []
    readings = [{"clients": 0, "seconds": 0.0, **await _settled_memory(pid)}]
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def one(index: int) -> None:
        user, password = logins[index % len(logins)]
        async with gate:
            if failures:
                return
            try:
                writers.append(await asyncio.wait_for(open_idle_client(port, user, password, database),
                                                      LOGIN_TIMEOUT))
            except (OSError, LoginFailed, EOFError, TimeoutError) as exc:
                failures.append(f"login {index + 1} failed: {type(exc).__name__}: {exc}")

    try:
        for step in range(1, steps + 1):
            started = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(len(writers), measure * step // steps)))
            seconds = round(time.perf_counter() - started, 2)
            readings.append({"clients": len(writers), "seconds": seconds, **await _settled_memory(pid)})
            if failures:
                break
    finally:
        for writer in writers:
            with contextlib.suppress(OSError):
                writer.write(codec.Terminate().encode())
            writer.close()
        await asyncio.sleep(0.5)  # let the transports flush and close
    return readings, failures[0] if failures else None


def goal(figures: dict[str, Any]) -> dict[str, Any]:
    """The issue's goal line: RSS (summed over the process tree) at 10,000 idle clients below 500 MB.

    Measured when the run held 10,000 clients; otherwise read off the least-squares line and
    marked ``extrapolated``.
    """
    at_goal = [r for r in figures["readings"] if r["clients"] == GOAL_CLIENTS]
    if at_goal:
        rss, how = at_goal[-1]["rss_bytes"], "measured"
    elif "rss_bytes_per_client" in figures:
        rss, how = round(figures["rss_bytes_idle"] + figures["rss_bytes_per_client"] * GOAL_CLIENTS), "extrapolated"
    else:
        return {"clients": GOAL_CLIENTS, "limit_bytes": GOAL_BYTES, "how": "not measured", "passed": None}
    return {"clients": GOAL_CLIENTS, "limit_bytes": GOAL_BYTES, "rss_bytes": rss, "how": how,
            "passed": rss < GOAL_BYTES}


def idle_clients_memory(port: int, pid: int, logins: Sequence[tuple[str, str]], database: str, *, measure: int,
                        requested: int, steps: int = 4, concurrency: int = CONCURRENT_LOGINS) -> dict[str, Any]:
    """Open up to ``measure`` idle clients (round-robin over ``logins``) in ``steps`` steps, reading memory.

    The caller's open-files limit must cover ``measure`` sockets (see ``procs.raise_nofile``).
    """
    readings, stopped = asyncio.run(_measure(port, pid, logins, database, measure, steps, concurrency))
    figures: dict[str, Any] = {
        "requested_clients": requested,
        "measured_clients": readings[-1]["clients"],
        "login_seconds": round(sum(r["seconds"] for r in readings), 1),
        "readings": readings,
        "stopped": stopped,
    }
    line = slope_and_intercept([(r["clients"], r["rss_bytes"]) for r in readings])
    if line is not None:
        slope, intercept = line
        figures.update(rss_bytes_per_client=slope, rss_bytes_idle=intercept,
                       extrapolated_rss_bytes_at_requested=round(intercept + slope * requested))
    if all(r["pss_bytes"] is not None for r in readings):
        pss_line = slope_and_intercept([(r["clients"], r["pss_bytes"]) for r in readings])
        if pss_line is not None:
            figures["pss_bytes_per_client"] = pss_line[0]
    figures["goal"] = goal(figures)
    return figures
