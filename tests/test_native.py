"""The compiled hot modules (proxy/native.py) and their pure-Python fallback.

``make test`` runs this file twice: on the compiled build, where every module in ``MODULES`` must
load as the mypyc extension, and with ``TENANTGATE_PURE=1``, where every one must load from its
``.py``. Each case holds in both; ``expect_compiled`` says which this run is.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from tenantgate.proxy import native

ROOT = native._root()
BUILT = (ROOT / native.MANIFEST).exists()  # `make install` compiled (a C compiler was there)


def expect_compiled() -> bool:
    return BUILT and not native.pure()


@pytest.mark.parametrize("module", native.MODULES)
def test_each_module_loads_as_the_mode_says(module: str) -> None:
    loaded = importlib.import_module(module)
    assert loaded.__file__ is not None
    compiled = loaded.__file__.endswith(tuple(EXTENSION_SUFFIXES))
    assert compiled == expect_compiled(), loaded.__file__
    if not compiled:
        assert loaded.__file__.endswith(".py")


def test_status_says_what_is_loaded() -> None:
    s = native.status()
    assert s["compiled"] is expect_compiled()
    assert s["modules"] == (list(native.MODULES) if expect_compiled() else [])
    assert s["stale"] == []  # conftest switches a stale build to the sources
    assert native.describe().startswith("compiled: yes" if expect_compiled() else "compiled: no")


def _env(pure: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TENANTGATE_PURE"}
    return env | {"TENANTGATE_PURE": pure} if pure else env


def _child(code: str, pure: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=_env(pure), capture_output=True, text=True, check=True)
    return out.stdout.strip()


# The proxy's own entry point: the switch holds for a whole process and what it imports later.
ORIGINS = "import importlib, tenantgate.proxy.cli; from tenantgate.proxy.native import MODULES; " \
          "print(' '.join(importlib.import_module(m).__file__ for m in MODULES))"


@pytest.mark.parametrize("pure", ["1", "yes"])
def test_the_switch_makes_a_process_take_every_source(pure: str) -> None:
    files = _child(ORIGINS, pure).split()
    assert len(files) == len(native.MODULES)
    assert all(f.endswith(".py") for f in files), files


@pytest.mark.parametrize("pure", ["", "0"])
def test_without_the_switch_a_process_takes_what_is_built(pure: str) -> None:
    files = _child(ORIGINS, pure).split()
    assert all(f.endswith(tuple(EXTENSION_SUFFIXES)) == BUILT for f in files), files


VERSION = "import asyncio; from tenantgate.proxy.console.commands import show_version; " \
          "print(asyncio.run(show_version(None, [])).rows[0][0])"  # the admin console's SHOW VERSION


@pytest.mark.parametrize("pure", ["1", ""])
def test_show_version_says_whether_compiled(pure: str) -> None:
    expected = "(compiled: yes (" if BUILT and not pure else "(compiled: no (pure Python))"
    assert expected in _child(VERSION, pure)


def _fake_tree(tmp_path: Path) -> Path:
    """A link tree with the sources and leftover extensions of an earlier build."""
    for module in native.MODULES:
        source = native._source(tmp_path, module)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("X = 1\n")
        source.with_name(source.stem + EXTENSION_SUFFIXES[0]).write_bytes(b"old")
    (tmp_path / f"{native.GROUP}__mypyc{EXTENSION_SUFFIXES[0]}").write_bytes(b"old")
    (tmp_path / "tenantgate" / "proxy" / f"dropped{EXTENSION_SUFFIXES[0]}").write_bytes(b"old")  # left MODULES
    (tmp_path / native.MANIFEST).write_text("{}")
    return tmp_path


@pytest.mark.parametrize(("env", "message"), [
    ({"TENANTGATE_PURE": "1"}, "TENANTGATE_PURE is set"),
    ({"CC": "/nonexistent/cc"}, "no C compiler (/nonexistent/cc)"),
])
def test_a_pure_build_removes_every_extension_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    env: dict[str, str], message: str,
) -> None:
    root = _fake_tree(tmp_path)
    monkeypatch.delenv("TENANTGATE_PURE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert native.build(root) == 0
    assert message in capsys.readouterr().out
    left = sorted(p.name for p in root.rglob("*") if p.is_file())
    assert left == sorted(f"{m.rsplit('.', 1)[1]}.py" for m in native.MODULES)


def test_an_edited_source_makes_its_extension_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_tree(tmp_path)
    monkeypatch.delenv("TENANTGATE_PURE", raising=False)
    monkeypatch.setattr(native, "_root", lambda: root)
    manifest = {m: native._digest(native._source(root, m)) for m in native.MODULES}
    (root / native.MANIFEST).write_text(json.dumps({"modules": manifest}))
    module = native.MODULES[0]
    if module in sys.modules:  # judged from the files only for modules this process has not loaded
        monkeypatch.delitem(sys.modules, module)
    assert native.status()["stale"] == []
    native._source(root, module).write_text("X = 2\n")
    assert native.status()["stale"] == [module]
    assert "STALE" in native.describe()


IMPORT_ALL = """
import importlib, pkgutil, tenantgate.proxy
for package in ("tenantgate.proxy", "tenantgate.rewriter", "tenantgate.audit", "tenantgate.config"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(info.name)
"""


def test_every_module_imports_beside_the_compiled_ones() -> None:
    """mypyc refuses an interpreted class that subclasses a compiled one (TypeError at import): what
    keeps proxy/conn.py, whose PgConnection frontend.py subclasses, out of ``MODULES``."""
    _child(IMPORT_ALL, "")
