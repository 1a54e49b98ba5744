"""Issue 20 item 3: nothing reaches a client after its Terminate, in particular no
``FATAL 08006 server closed the connection unexpectedly`` when the backend's close (it answers
Terminate by closing) arrives before the client's own close. node-postgres crashes on it.

Each client sends Terminate and keeps its socket open, reading until the proxy closes it: the
worst case of the race, every time.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tenantgate.proxy import codec
from tenantgate.proxy.sandbox.pgcluster import PgServer, free_port

from .harness import ORDERS_SCOPING, ORDERS_SETUP, Backend, ProxyProcess, RawClient, config_text, errors, start_proxy

CLIENTS = 200


@pytest.fixture(scope="module")
def backend(pg: PgServer) -> Backend:
    return Backend.create(pg, "terminate_race", ORDERS_SETUP, owner=False)


@pytest.fixture(scope="module", params=["session", "transaction"])
def proxy(request: pytest.FixtureRequest, backend: Backend, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ProxyProcess]:
    port = free_port()
    text = config_text(backend, port, scoping=ORDERS_SCOPING)
    if request.param == "transaction":
        text = text.replace('sslmode = "prefer"', 'sslmode = "prefer"\npool_mode = "transaction"\npool_size = 4', 1)
    p = start_proxy(Path(tmp_path_factory.mktemp(f"terminate-{request.param}")), text, port)
    yield p
    p.stop()


def _goodbye(proxy: ProxyProcess, user: str, with_query: bool) -> list[object]:
    """Log in, (query,) Terminate, then everything the proxy still sends until it closes."""
    client = RawClient(proxy.port)
    try:
        out = client.login(user, proxy.users[user][1])
        assert not errors(out), out
        data = (codec.Query("SELECT 1").encode() if with_query else b"") + codec.Terminate().encode()
        client.send(data)
        after: list[object] = []
        while True:
            try:
                after.append(client.recv_message())
            except (ConnectionError, TimeoutError, OSError):
                return after
    finally:
        client.close()


@pytest.mark.parametrize("user", ["alice", "svc"])
@pytest.mark.parametrize("with_query", [False, True], ids=["terminate", "query-then-terminate"])
def test_no_fatal_after_terminate(proxy: ProxyProcess, user: str, with_query: bool) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _goodbye(proxy, user, with_query), range(CLIENTS)))
    stray = [e for after in results for e in errors(after)]
    assert not stray, f"{len(stray)} of {CLIENTS} clients got an error after Terminate: {stray[0]}"
