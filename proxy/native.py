"""The data plane's hot modules, compiled with mypyc (as asyncpg and uvloop ship compiled code).

``make install`` runs ``python -m tenantgate.proxy.native build`` after the strict editable
install: mypyc turns the modules in ``MODULES`` into C extensions placed next to their ``.py`` in
the install's link tree, where the import system prefers them. The ``.py`` stays the reference
(mypy checks it, doctests run it) and the fallback: ``TENANTGATE_PURE=1 make install`` removes
the extensions, and a machine without a C compiler or Python headers installs pure by itself.

``TENANTGATE_PURE=1`` at run time does the same for one process tree without reinstalling:
``tenantgate.proxy`` (imported first by ``tenantgate`` and ``python -m tenantgate.proxy.cli``) then
puts a finder ahead of the import system's that loads these modules from their sources; children
inherit the variable. tests/conftest.py uses it for the pure-Python pass of ``make test``.

A build records each source's SHA-256, so ``status()`` (the admin ``SHOW VERSION``, bench's
environment) says which modules are compiled and whether any extension
is older than its source (edited after ``make install``: rerun it).

>>> set(status()) == {"compiled", "modules", "stale"}
True
>>> _source_of("/x/pool" + EXTENSION_SUFFIXES[0])
'/x/pool.py'
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec, PathFinder
from pathlib import Path
from types import ModuleType
from typing import Any

# What pays (bench/README.md has the figures): sans-IO modules on every statement's path.
# Not here: proxy/codec.py (mypyc turns a dataclass ClassVar, codec's ``TYPE`` bytes, into a field).
# proxy/conn.py is (its PgConnection allows interpreted subclasses: FrontendConnection's).
MODULES: tuple[str, ...] = (
    "tenantgate.proxy.conn",
    "tenantgate.proxy.pipeline",
    "tenantgate.proxy.tracked",
    "tenantgate.proxy.pool",
    "tenantgate.proxy.counters",
    "tenantgate.proxy.crypto",
    "tenantgate.proxy.auditing",
    "tenantgate.proxy.session",
    "tenantgate.proxy.filters",
    "tenantgate.proxy.rowlimit",
    "tenantgate.proxy.channels",
    "tenantgate.proxy.withheld",
    "tenantgate.proxy.timeouts",
    "tenantgate.audit.writer",
    "tenantgate.audit.lean",
    "tenantgate.audit.record",
    "tenantgate.rewriter.literals",
    "tenantgate.rewriter.cache",
    "tenantgate.rewriter.rewriter",
)
GROUP = "tenantgate"  # mypyc's shared library: tenantgate__mypyc.<abi>.so at the link tree's root
MANIFEST = "tenantgate/proxy/native-build.json"
OPT_LEVEL = "3"  # -O3 costs ~10 s more than -O1 over these modules and pays on the hot path


def pure() -> bool:
    """Whether ``TENANTGATE_PURE`` asks for the sources ("" and "0" do not)."""
    return os.environ.get("TENANTGATE_PURE", "") not in ("", "0")


def _source_of(extension: str) -> str:
    suffix = next(s for s in EXTENSION_SUFFIXES if extension.endswith(s))
    return extension[: -len(suffix)] + ".py"


class _SourcesFirst:
    """A meta path finder: ``MODULES`` from their ``.py`` even where an extension sits beside it."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> ModuleSpec | None:
        if name not in MODULES:
            return None
        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.origin is None or not spec.origin.endswith(tuple(EXTENSION_SUFFIXES)):
            return spec
        return importlib.util.spec_from_file_location(name, _source_of(spec.origin))


def honour_pure_switch() -> None:
    """With ``TENANTGATE_PURE`` set, this process imports ``MODULES`` from their sources (call it
    before any of them is imported: tenantgate/proxy/__init__.py does)."""
    if pure() and not any(isinstance(f, _SourcesFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourcesFirst())


def _root() -> Path:
    """The install's link tree (build/__editable__.tenantgate-*/), where the extensions go."""
    spec = importlib.util.find_spec("tenantgate.proxy")
    assert spec is not None and spec.origin is not None  # this very module's package
    return Path(spec.origin).parent.parent.parent


def _source(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _extensions(root: Path) -> list[Path]:
    """Every extension a build left: the package is pure Python, so any under tenantgate/ is one
    (of a module that may have left ``MODULES`` since), and the group's shared library."""
    found = [root / f"{GROUP}__mypyc{suffix}" for suffix in EXTENSION_SUFFIXES]
    found += [p for p in (root / "tenantgate").rglob("*.so") if p.name.endswith(tuple(EXTENSION_SUFFIXES))]
    return [p for p in found if p.exists()]


def _is_extension(root: Path, module: str) -> bool:
    """Loaded (or would load, judged from the files: importing would run package code) compiled."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        return str(getattr(loaded, "__file__", "")).endswith(tuple(EXTENSION_SUFFIXES))
    stem = _source(root, module).with_suffix("")
    return not pure() and any(stem.with_name(stem.name + s).exists() for s in EXTENSION_SUFFIXES)


def status() -> dict[str, Any]:
    """Which of ``MODULES`` load compiled, and which of those were built from another source."""
    root = _root()
    try:
        built: dict[str, str] = json.loads((root / MANIFEST).read_text())["modules"]
    except (OSError, ValueError, KeyError):
        built = {}
    compiled = [m for m in MODULES if _is_extension(root, m)]
    stale = [m for m in compiled if built.get(m) != _digest(_source(root, m))]
    return {"compiled": bool(compiled), "modules": compiled, "stale": stale}


def describe() -> str:
    """One line for the admin console's ``SHOW VERSION``."""
    s = status()
    if not s["compiled"]:
        return "compiled: no (pure Python)"
    names = ", ".join(m.removeprefix("tenantgate.") for m in s["modules"])
    stale = f"; STALE (source edited since make install): {', '.join(s['stale'])}" if s["stale"] else ""
    return f"compiled: yes ({len(s['modules'])} modules: {names}){stale}"


def _remove(root: Path) -> None:
    for path in [*_extensions(root), root / MANIFEST]:
        path.unlink(missing_ok=True)


def _toolchain_missing() -> str | None:
    """Why this machine cannot compile C extensions, or None."""
    import shutil
    import sysconfig

    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    include = Path(sysconfig.get_paths()["include"], "Python.h")
    if not include.exists():
        return f"no Python headers ({include}; Debian: python3-dev)"
    return None


def build(root: Path) -> int:
    """Compile ``MODULES`` in place under ``root``; the pure modules stay when told or unable."""
    import tempfile
    import time

    _remove(root)  # never leave an extension of an older source behind
    if pure():
        print("tenantgate: TENANTGATE_PURE is set: pure-Python modules, nothing compiled")
        return 0
    missing = _toolchain_missing()
    if missing is not None:
        print(f"tenantgate: {missing}: installing the pure-Python modules (slower data plane)")
        return 0
    from mypyc.build import mypycify  # a build dependency only (it ships with mypy)
    from setuptools import setup

    started = time.monotonic()
    sources = [str(_source(root, m).relative_to(root)) for m in MODULES]
    config = Path(__file__).resolve().parent.parent / "pyproject.toml"  # the checkout's (mypy settings)
    with tempfile.TemporaryDirectory(prefix="tenantgate-mypyc-") as tmp:
        cwd = Path.cwd()
        os.chdir(root)  # mypyc names modules by their path below the current directory
        try:
            extensions = mypycify(
                ["--config-file", str(config), "--explicit-package-bases", *sources],
                opt_level=OPT_LEVEL, target_dir=str(Path(tmp, "c")), group_name=GROUP,
            )
            setup(name="tenantgate-native", ext_modules=extensions,
                  script_args=["-q", "build_ext", "--inplace", "--build-temp", str(Path(tmp, "o")),
                               "--build-lib", str(Path(tmp, "lib"))])
        finally:
            os.chdir(cwd)
    manifest = {"modules": {m: _digest(_source(root, m)) for m in MODULES}, "opt_level": OPT_LEVEL,
                "seconds": round(time.monotonic() - started, 1)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"tenantgate: compiled {len(MODULES)} modules with mypyc -O{OPT_LEVEL} in {manifest['seconds']} s")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["build"]:
        return build(_root())
    if argv in (["status"], ["status", "--json"]):
        print(json.dumps(status()) if "--json" in argv else describe())
        return 1 if status()["stale"] else 0
    print("usage: python -m tenantgate.proxy.native build | status [--json]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
