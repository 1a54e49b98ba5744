"""The peer runner's pure parts (tests/peer is not collected: its suites are opt-in): parsing each
suite's output and finding the checks that fail only through the proxy."""

from __future__ import annotations

import doctest
from pathlib import Path
from types import ModuleType

import pytest

from .peer import __main__ as runner
from .peer import suites


@pytest.mark.parametrize("module", [suites, runner], ids=lambda m: m.__name__)
def test_doctests(module: ModuleType) -> None:
    result = doctest.testmod(module)
    assert result.attempted and not result.failed


def test_junit_outcomes(tmp_path: Path) -> None:
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite><testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2&#10;more"/></testcase>'
        '<testcase classname="tests.test_a" name="test_err"><error message="boom"/></testcase>'
        '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase></testsuite></testsuites>')
    assert suites.parse_junit(report) == {
        "tests.test_a::test_ok": "ok", "tests.test_a::test_bad": "assert 1 == 2",
        "tests.test_a::test_err": "boom", "tests.test_a::test_skip": "skip"}

