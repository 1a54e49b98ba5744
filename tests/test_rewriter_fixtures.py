"""Runs rewriter/fixtures/*.sql (format: rewriter/fixtures/README.md) through Rewriter.plan."""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass

import pglast
import pytest

from tenantgate.rewriter import Policy, Refused, Rewriter

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "rewriter" / "fixtures"
POLICY = Policy(scoped={("public", "orders"): "tenant_id", ("public", "customers"): "tenant_id",
                        ("public", "invoices"): "org_id"}, reference=frozenset({("public", "countries")}))
HEADER = re.compile(r"^-- (in:(?: extended)?|out:|same|refused: .*|kinds: .*|params: .*)$")


@dataclass
class Case:
    name: str
    sql: str
    extended: bool
    out: str | None = None
    same: bool = False
    refused: tuple[str, str] | None = None
    kinds: tuple[str, ...] | None = None
    params: tuple[int, ...] = ()


def _parse(path: pathlib.Path) -> list[Case]:
    cases: list[Case] = []
    section: str | None = None
    body: list[str] = []

    def flush() -> None:
        text = "\n".join(body).strip("\n")
        if section is not None and section.startswith("in:"):
            cases.append(Case(f"{path.stem}:{len(cases) + 1}", text, section.endswith("extended")))
        elif section == "out:":
            cases[-1].out = text

    for line in path.read_text().splitlines():
        match = HEADER.match(line)
        if not match:
            body.append(line)
            continue
        flush()
        body = []
        section = match.group(1)
        if section == "same":
            cases[-1].same = True
        elif section.startswith("refused: "):
            reason, sqlstate = section.removeprefix("refused: ").split()
            cases[-1].refused = (reason, sqlstate)
        elif section.startswith("kinds: "):
            cases[-1].kinds = tuple(k.strip() for k in section.removeprefix("kinds: ").split(","))
        elif section.startswith("params: "):
            cases[-1].params = tuple(int(p) for p in section.removeprefix("params: ").split(","))
    flush()
    return cases


CASES = [case for path in sorted(FIXTURES.glob("*.sql")) for case in _parse(path)]


def test_fixtures_found() -> None:
    assert len(CASES) > 200
    assert all(c.refused or c.same or c.out for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fixture(case: Case) -> None:
    rw = Rewriter(POLICY)
    for attempt in range(2):  # the second answer comes from the plan cache and must be the same
        if case.refused:
            with pytest.raises(Refused) as info:
                rw.plan(case.sql, "acme", extended=case.extended)
            assert (info.value.reason, info.value.sqlstate) == case.refused
            continue
        plan = rw.plan(case.sql, "acme", extended=case.extended)
        expected = case.sql if case.same else case.out
        if attempt == 1 and plan.sql != expected:
            # from the cache, literals come back in canonical form (issue 12): the same statement
            assert pglast.prettify(plan.sql) == pglast.prettify(expected)
        else:
            assert plan.sql == expected
        if case.kinds is not None:
            assert plan.kinds == case.kinds
        assert plan.tenant_params == case.params
        assert plan.cached is (attempt == 1)
