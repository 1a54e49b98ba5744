"""The peer suites: real clients and their own test suites, each run against a :class:`Target`.

A suite's ``run`` returns ``{check id: outcome}`` where an outcome is ``"ok"``, ``"skip"`` or a failure
reason. Our programs (tests/peer/clients) print ``ok NAME`` / ``FAIL NAME: reason`` lines; pytest
suites (psycopg's) are read from their JUnit XML; Django's runner from its verbose output.
Everything a suite installs comes from the package registries (pip, npm, apt through
install_clients.sh) and is cached under tests/peer/.cache (gitignored).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .env import Target

HERE = Path(__file__).parent
CLIENTS = HERE / "clients"
CACHE = HERE / ".cache"
PYLIB = CACHE / "pylib"  # Django and the psycopg suite's test requirements (pip --target)
NODE_MODULES = HERE / "node" / "node_modules"
JDBC_JAR = Path("/usr/share/java/postgresql.jar")
Outcomes = dict[str, str]
LOGS = CACHE / "logs"  # each run's whole output; the runner points it at its --work folder
_LINE = re.compile(r"^(ok|FAIL) (\S+)(?:: (.*))?$")


class SuiteUnavailable(RuntimeError):
    """The suite's client cannot be installed or found here (reported, not a difference)."""


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True)


def _install_clients() -> None:
    script = HERE / "install_clients.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SuiteUnavailable(f"install_clients.sh: {done.stderr.strip() or done.stdout.strip()}")


def _run(name: str, cmd: list[str], target: Target, timeout: float, cwd: Path | None = None,
         extra_env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    """(exit code or None on timeout, stdout, stderr); both kept in LOGS/<name>-<target>.log."""
    env = target.env() | (extra_env or {})
    code: int | None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code = None
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"{name}-{target.name.replace('/', '-')}.log").write_text(f"$ {' '.join(cmd)}\n{out}\n{err}")
    return code, out, err


def parse_lines(code: int | None, out: str, err: str, timeout: float) -> Outcomes:
    """Our programs' ``ok``/``FAIL`` lines; a crash or a time-out is one more failed check, ``program``.

    >>> parse_lines(2, "ok connect\\nFAIL crud: 42501 refused\\n", "", 60)
    {'connect': 'ok', 'crud': '42501 refused'}
    >>> parse_lines(None, "ok connect\\n", "", 60)
    {'connect': 'ok', 'program': 'timed out after 60 s'}
    """
    outcomes: Outcomes = {}
    for line in out.splitlines():
        m = _LINE.match(line.strip())
        if m:
            outcomes[m[2]] = "ok" if m[1] == "ok" else (m[3] or "failed")
    if code is None:
        outcomes["program"] = f"timed out after {timeout:.0f} s"
    elif not outcomes or (code not in (0, 2) and all(v == "ok" for v in outcomes.values())):
        tail = " | ".join((err or out).strip().splitlines()[-3:])
        outcomes["program"] = f"exit {code}: {tail}"
    return outcomes


@dataclass
class Suite:
    name: str
    roles: tuple[str, ...]  # "trusted" (fidelity) and/or "tenant" (a scoped app)
    prepare: Callable[[bool], None]  # (quick) -> None; raises SuiteUnavailable
    run: Callable[[Target, float, bool], Outcomes]  # (target, timeout, quick)
    timeout: float = 120.0
    heavy: bool = False  # a large foreign suite (minutes per target): --quick runs a slice of it


# -- our client programs -------------------------------------------------------------------------

def _prepare_jdbc(quick: bool) -> None:
    _install_clients()
    out = CACHE / "jdbc"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["javac", "-d", str(out), "-cp", str(JDBC_JAR), str(CLIENTS / "JdbcClient.java")], check=True)


def _run_jdbc(target: Target, timeout: float, quick: bool) -> Outcomes:
    cmd = ["java", "-cp", f"{CACHE / 'jdbc'}:{JDBC_JAR}", "JdbcClient"]
    return parse_lines(*_run("jdbc", cmd, target, timeout), timeout)


def _run_node(target: Target, timeout: float, quick: bool) -> Outcomes:
    cmd = ["node", "--no-deprecation", str(CLIENTS / "node_client.js")]
    return parse_lines(*_run("node", cmd, target, timeout, extra_env={"NODE_PATH": str(NODE_MODULES)}), timeout)


def _run_ruby(target: Target, timeout: float, quick: bool) -> Outcomes:
    return parse_lines(*_run("activerecord", ["ruby", str(CLIENTS / "ar_client.rb")], target, timeout), timeout)


def _prepare_django(quick: bool) -> None:
    if not (PYLIB / "django").is_dir():
        _pip("--target", str(PYLIB), "django>=5.2,<6")


def _python_program(script: str) -> Callable[[Target, float, bool], Outcomes]:
    def run(target: Target, timeout: float, quick: bool) -> Outcomes:
        extra = {"PYTHONPATH": os.pathsep.join([str(PYLIB), os.environ.get("PYTHONPATH", "")])}
        cmd = [sys.executable, str(CLIENTS / script)]
        return parse_lines(*_run(Path(script).stem, cmd, target, timeout, extra_env=extra), timeout)

    return run


# -- psycopg's own test suite --------------------------------------------------------------------

PSYCOPG_SRC = CACHE / "psycopg-src"  # a checkout with tests/ (the PyPI sdist has none): --psycopg-src
PSYCOPG_ARGS: list[str] = []  # extra pytest arguments (--psycopg-args), e.g. -m "not slow"
PSYCOPG_QUICK = [f"tests/test_{name}.py" for name in ("connection", "cursor", "cursor_server", "prepared", "copy",
                                                      "notify", "errors", "encodings", "pipeline", "transaction")]


def _psycopg_src() -> Path:
    src = Path(os.environ.get("PEER_PSYCOPG_SRC", PSYCOPG_SRC))
    if not (src / "tests" / "conftest.py").is_file():
        raise SuiteUnavailable(
            f"psycopg's tests are not in its PyPI sdist; put a psycopg checkout (with tests/) at {src} "
            "or pass --psycopg-src DIR")
    return src


def _prepare_psycopg(quick: bool) -> None:
    _psycopg_src()
    if not (PYLIB / "anyio").is_dir():  # psycopg[test]'s requirements, less psycopg and pytest (the venv's)
        _pip("--target", str(PYLIB), "--no-deps", "anyio>=4", "sniffio", "idna", "pproxy>=2.7", "pytest-randomly")


def parse_junit(path: Path) -> Outcomes:
    outcomes: Outcomes = {}
    if not path.is_file():
        return outcomes
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            outcomes[test_id] = (bad.get("message") or bad.tag).splitlines()[0][:200]
        else:
            outcomes[test_id] = "skip" if case.find("skipped") is not None else "ok"
    return outcomes


def _run_psycopg(target: Target, timeout: float, quick: bool) -> Outcomes:
    src = _psycopg_src()
    report = LOGS / f"psycopg-{target.name.replace('/', '-')}.xml"
    report.unlink(missing_ok=True)
    # A cache of this run's own: the suite's conftest refuses to start while another run's
    # "segfault" marker (set at start, cleared at a clean end) is in a shared cache.
    cache = LOGS / f"pytest-cache-{target.name.replace('/', '-')}"
    shutil.rmtree(cache, ignore_errors=True)
    dsn = (f"host={target.host} port={target.port} user={target.user} password={target.password} "
           f"dbname={target.database} sslmode=disable" + (f" options='{target.options}'" if target.options else ""))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "--no-header", "-o",
           f"cache_dir={cache}", f"--junitxml={report}", "--test-dsn", dsn,
           *(["-m", "not slow", *PSYCOPG_QUICK] if quick else ["tests"]), *PSYCOPG_ARGS]
    # The checkout's psycopg_pool/ project folder holds the pool package its pool tests import (it is
    # not on the registries); without it on the path the folder itself is a namespace package.
    pool = src / "psycopg_pool"
    extra = {"PYTHONPATH": os.pathsep.join([str(PYLIB), *([str(pool)] if (pool / "psycopg_pool").is_dir() else [])])}
    code, out, err = _run("psycopg", cmd, target, timeout, cwd=src, extra_env=extra)
    outcomes = parse_junit(report)
    if code is None:
        outcomes["pytest"] = f"timed out after {timeout:.0f} s"
    elif not outcomes:
        outcomes["pytest"] = f"exit {code}: {' | '.join((out + err).strip().splitlines()[-3:])}"
    return outcomes


# -- Django's own test suite ---------------------------------------------------------------------

DJANGO_QUICK = ["basic", "aggregation", "annotations", "select_related", "prefetch_related", "transactions",
                "bulk_create", "update", "select_for_update", "get_or_create"]


def _prepare_django_tests(quick: bool) -> None:
    _prepare_django(quick)
    if (CACHE / "django-src" / "tests" / "runtests.py").is_file():
        return
    version = subprocess.run([sys.executable, "-c", "import django; print(django.__version__)"],
                             env=dict(os.environ, PYTHONPATH=str(PYLIB)), capture_output=True, text=True,
                             check=True).stdout.strip()
    dl = CACHE / "downloads"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                    f"django=={version}", "-d", str(dl)], check=True)
    sdist = next(dl.glob(f"[dD]jango-{version}.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(CACHE / "django-extract", filter="data")
    shutil.move(str(CACHE / "django-extract" / f"django-{version}"), CACHE / "django-src")


def _django_settings(target: Target) -> str:
    db = {"ENGINE": "django.db.backends.postgresql", "HOST": target.host, "PORT": target.port, "USER": target.user,
          "PASSWORD": target.password, "NAME": target.database,
          "OPTIONS": {"sslmode": "disable", **({"options": target.options} if target.options else {})},
          "TEST": {"NAME": f"{target.database}_django_test"}}
    other = db | {"TEST": {"NAME": f"{target.database}_django_other"}}
    return (f"DATABASES = {{'default': {db!r}, 'other': {other!r}}}\n"
            "SECRET_KEY = 'peer'\nPASSWORD_HASHERS = ['django.contrib.auth.hashers.MD5PasswordHasher']\n"
            "DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'\nUSE_TZ = False\n")


_DJANGO_ID = re.compile(r"^\S+ \(([\w.]+)\)")
_DJANGO_WORD = re.compile(r" \.\.\. (ok|FAIL|ERROR|skipped.*|expected failure|unexpected success)$")


def parse_django(out: str) -> Outcomes:
    """Django's runner at -v 2: ``test_x (app.tests.Case.test_x) ... ok``, or the test's docstring on
    a line of its own before `` ... ok``.

    >>> parse_django("test_a (basic.tests.T.test_a) ... ok\\ntest_b (basic.tests.T.test_b)\\nDoc. ... FAIL")
    {'basic.tests.T.test_a': 'ok', 'basic.tests.T.test_b': 'FAIL'}
    """
    outcomes: Outcomes = {}
    current = None
    for line in out.splitlines():
        line = line.strip()
        named = _DJANGO_ID.match(line)
        if named:
            current = named[1]
        word = _DJANGO_WORD.search(line)
        if word and current:
            w = word[1]
            outcomes[current] = "ok" if w in ("ok", "expected failure") else "skip" if w.startswith("skip") else w
            current = None
    return outcomes


def _run_django_tests(target: Target, timeout: float, quick: bool) -> Outcomes:
    src = CACHE / "django-src" / "tests"
    settings = src / f"peer_{target.name.replace('/', '_')}.py"
    settings.write_text(_django_settings(target))
    cmd = [sys.executable, "runtests.py", f"--settings={settings.stem}", "-v", "2", "--noinput", "--parallel", "1",
           *(DJANGO_QUICK if quick else [])]
    extra = {"PYTHONPATH": os.pathsep.join([str(PYLIB), str(src)])}
    code, out, err = _run("django-tests", cmd, target, timeout, cwd=src, extra_env=extra)
    outcomes = parse_django(out + "\n" + err)
    if code is None:
        outcomes["runtests"] = f"timed out after {timeout:.0f} s"
    elif not outcomes:
        outcomes["runtests"] = f"exit {code}: {' | '.join((out + err).strip().splitlines()[-3:])}"
    return outcomes


SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite("jdbc", ("trusted", "tenant"), _prepare_jdbc, _run_jdbc),
        Suite("node", ("trusted", "tenant"), lambda quick: _install_clients(), _run_node),
        Suite("activerecord", ("trusted", "tenant"), lambda quick: _install_clients(), _run_ruby),
        Suite("django-shop", ("tenant",), _prepare_django, _python_program("django_shop.py")),
        Suite("sqlalchemy", ("tenant",), lambda quick: None, _python_program("sqla_accounts.py")),
        Suite("psycopg", ("trusted",), _prepare_psycopg, _run_psycopg, timeout=3600, heavy=True),
        Suite("django-tests", ("trusted",), _prepare_django_tests, _run_django_tests, timeout=5400, heavy=True),
    ]
}
