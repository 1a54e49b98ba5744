"""The layout's import rules (issue 13, /work/notes layout plan) as a test over a static import graph.

Every ``import`` and ``from ... import`` in proxy/ rewriter/ keyring/ config/ audit/ bench/ is an
edge, relative imports resolved, function-local and ``TYPE_CHECKING`` imports included (a cycle
dodged with a local import is still a cycle). Checked: no import cycle inside any package, and
no module imports a room above its own (ROOMS_BELOW); each failure names the edge or cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {
    "audit": "tenantgate.audit",
    "keyring": "tenantgate.keyring",
    "config": "tenantgate.config",
    "rewriter": "tenantgate.rewriter",
    "proxy": "tenantgate.proxy",
    "bench": "bench",
}

# Which rooms each room may import (its own included), lowest layer first. Only cli imports ops;
# the data plane (proxy) never imports console, ops or cli; the sandbox and bench never import
# the serving process.
_LOWEST = frozenset({"audit", "keyring"})  # keyring, then audit (which quotes with keyring's module)
ROOMS_BELOW: dict[str, frozenset[str]] = {
    "audit": frozenset({"keyring", "audit"}),  # the one quoting module (keyring/quoting.py)
    "keyring": frozenset({"keyring"}),
    "config": _LOWEST | {"config"},
    "rewriter": _LOWEST | {"config", "rewriter"},
    "sandbox": _LOWEST | {"config", "rewriter", "sandbox"},
    "proxy": _LOWEST | {"config", "rewriter", "proxy"},
    "console": _LOWEST | {"config", "rewriter", "proxy", "console"},
    "ops": _LOWEST | {"config", "rewriter", "proxy", "console", "sandbox", "ops"},
    "cli": _LOWEST | {"config", "rewriter", "proxy", "console", "sandbox", "ops", "cli"},
    "bench": _LOWEST | {"config", "rewriter", "sandbox", "bench"},
}
# bench speaks the wire protocol as a client (bench/memory.py): the codec is sans-IO and holds no
# process state, so using it is not importing the serving process.
ALSO_ALLOWED = {("bench", "tenantgate.proxy.codec")}
# bench/monitor_eval.py replays a simulated week into security monitoring's pure analysis: those
# modules import nothing of the serving process (test_monitor_analysis_is_pure keeps it so).
PURE_MONITOR = ("baseline", "detectors", "engine", "tally")
ALSO_ALLOWED |= {("bench", f"tenantgate.proxy.monitor.{m}") for m in PURE_MONITOR}


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    where: str  # file:line of the import statement

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where})"


def _modules(root: Path, folders: Mapping[str, str]) -> dict[str, Path]:
    """Module name -> file, for every .py file under the given folders."""
    found: dict[str, Path] = {}
    for folder, package in folders.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The known modules an import statement names (``from pkg import mod`` names pkg.mod)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    for name in names:
        while name and name not in known:  # `import a.b.c` of a known a.b: the edge is to a.b
            name = name.rpartition(".")[0]
        if name:
            yield name


def import_graph(root: Path, folders: Mapping[str, str]) -> dict[str, set[Edge]]:
    """Every import edge between modules under ``folders`` (folder -> package name)."""
    modules = _modules(root, folders)
    known = set(modules)
    graph: dict[str, set[Edge]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):  # walks function bodies and `if TYPE_CHECKING:` blocks too
            if isinstance(node, ast.Import | ast.ImportFrom):
                where = f"{path.relative_to(root)}:{node.lineno}"
                for target in _targets(node, name, path.name == "__init__.py", known):
                    if target != name:
                        graph[name].add(Edge(name, target, where))
    return graph


def cycles(graph: Mapping[str, set[Edge]], package: str) -> list[list[Edge]]:
    """One concrete cycle per strongly connected set of ``package``'s modules (Tarjan)."""
    inside = {m for m in graph if m == package or m.startswith(package + ".")}
    succ = {m: sorted((e for e in graph[m] if e.target in inside), key=lambda e: e.target) for m in sorted(inside)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for e in succ[m]:
            if e.target not in index:
                visit(e.target)
                low[m] = min(low[m], low[e.target])
            elif e.target in on_stack:
                low[m] = min(low[m], index[e.target])
        if low[m] == index[m]:
            component = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.add(top)
                if top == m:
                    break
            if len(component) > 1:
                components.append(component)

    for m in succ:
        if m not in index:
            visit(m)
    return [_cycle_through(min(c), c, succ) for c in components]


def _cycle_through(start: str, component: set[str], succ: Mapping[str, list[Edge]]) -> list[Edge]:
    """The shortest cycle from ``start`` back to itself inside one strongly connected set (BFS)."""
    came: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for m in frontier:
            for e in succ[m]:
                if e.target == start:
                    path = [e]
                    while path[0].source != start:
                        path.insert(0, came[path[0].source])
                    return path
                if e.target in component and e.target not in came:
                    came[e.target] = e
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError(f"{start} is in no cycle")


def room(module: str) -> str:
    """The layout room of a module of this repository."""
    parts = module.split(".")
    if parts[0] == "bench":
        return "bench"
    if parts[1] == "proxy" and len(parts) > 2 and parts[2] in ("console", "ops", "sandbox", "cli"):
        return parts[2]
    return parts[1]


def upward(
    graph: Mapping[str, set[Edge]],
    room_of: Callable[[str], str] = room,
    below: Mapping[str, frozenset[str]] = ROOMS_BELOW,
    also: set[tuple[str, str]] = ALSO_ALLOWED,
) -> list[str]:
    """Every edge into a room its source's room may not import, as a sentence naming it."""
    found = []
    for edges in graph.values():
        for e in sorted(edges, key=str):
            src, dst = room_of(e.source), room_of(e.target)
            if dst not in below[src] and (src, e.target) not in also:
                found.append(f"{e}: room {src} may import only {', '.join(sorted(below[src]))}, not {dst}")
    return found


def _cycle_text(cycle: list[Edge]) -> str:
    return " ; ".join(str(e) for e in cycle)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[Edge]]:
    return import_graph(REPO, FOLDERS)


def test_the_graph_sees_the_repository(graph: dict[str, set[Edge]]) -> None:
    # not vacuous: the modules and a function-local import (the CLI's) are in it
    assert {"tenantgate.proxy.cli", "tenantgate.keyring.auth.jwt", "bench.runner"} <= set(graph)
    assert "tenantgate.proxy.ops.tenant_cli" in {e.target for e in graph["tenantgate.proxy.cli"]}


@pytest.mark.parametrize(
    "package",
    list(FOLDERS.values()),
)
def test_no_import_cycle(graph: dict[str, set[Edge]], package: str) -> None:
    found = cycles(graph, package)
    assert not found, f"import cycles in {package}:\n" + "\n".join(_cycle_text(c) for c in found)


def test_no_room_imports_a_higher_one(graph: dict[str, set[Edge]]) -> None:
    found = upward(graph)
    assert not found, "imports against the layer order:\n" + "\n".join(found)


# ---------------------------------------------------------------------------------- the checker itself


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "low/__init__.py": "",
            "low/a.py": "from . import b\n",
            # a cycle dodged with a function-local import, and one behind TYPE_CHECKING
            "low/b.py": "def f():\n    from .a import x\n",
            "low/sub/__init__.py": "",
            "low/sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..d import y\n",
            "low/d.py": "import tenantgate.low.sub.c\n",
            "low/e.py": "def g():\n    from tenantgate.high.h import z\n",
            "high/__init__.py": "",
            "high/h.py": "from tenantgate.low import a\nimport os\n",
        },
    )
    graph = import_graph(tmp_path, {"low": "tenantgate.low", "high": "tenantgate.high"})
    found = sorted(_cycle_text(c) for c in cycles(graph, "tenantgate.low"))
    assert found == [
        "tenantgate.low.a -> tenantgate.low.b (low/a.py:1) ; tenantgate.low.b -> tenantgate.low.a (low/b.py:2)",
        "tenantgate.low.d -> tenantgate.low.sub.c (low/d.py:1) ; "
        "tenantgate.low.sub.c -> tenantgate.low.d (low/sub/c.py:3)",
    ]
    assert cycles(graph, "tenantgate.high") == []

    def room_of(module: str) -> str:
        return module.split(".")[1]

    below = {"low": frozenset({"low"}), "high": frozenset({"low", "high"})}
    assert upward(graph, room_of, below, set()) == [
        "tenantgate.low.e -> tenantgate.high.h (low/e.py:2): room low may import only low, not high"
    ]


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("tenantgate.proxy.session", "proxy"),
        ("tenantgate.proxy.cli", "cli"),
        ("tenantgate.proxy.ops.move", "ops"),
        ("tenantgate.proxy.sandbox", "sandbox"),
        ("tenantgate.proxy.console.admin", "console"),
        ("tenantgate.keyring.auth.jwt", "keyring"),
        ("tenantgate.config", "config"),
        ("bench.runner", "bench"),
    ],
)
def test_rooms(module: str, expected: str) -> None:
    assert room(module) == expected


def test_monitor_analysis_is_pure(graph: dict[str, set[Edge]]) -> None:
    pure = {f"tenantgate.proxy.monitor.{m}" for m in PURE_MONITOR}
    bad = [str(e) for m in sorted(pure) for e in sorted(graph[m], key=str)
           if room(e.target) == "proxy" and e.target not in pure]
    assert not bad, "security monitoring's analysis must not import the serving process:\n" + "\n".join(bad)
