"""How the answers of several workers become one: admin result sets, and /metrics expositions.

Pure functions of what the workers sent over the control channel (workers.py fans out and
calls these); workers.py's docstring says which command is merged how.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tenantgate.audit.framing import Message

from .commands import Result

_TAG_COUNT = re.compile(r"([A-Z]+) (\d+)")


def merge_results(answers: list[tuple[int, Message]], summed: bool) -> Result:
    """One admin Result from the answers of several workers, whatever the columns are.

    Lists are concatenated with a ``worker`` column; ``summed`` tables add up their integer
    cells per row key (the non-numeric cells) and average their float cells (averages, like
    avg_statement_ms) weighted by the row's first integer cell. Tags such as "KILL 2" add up.

    >>> a = {"tag": "SHOW", "columns": ["tenant", "statements", "avg_ms"], "rows": [["acme", 1, 4.0]], "notices": []}
    >>> b = {"tag": "SHOW", "columns": ["tenant", "statements", "avg_ms"],
    ...      "rows": [["acme", 3, 8.0], ["globex", 2, None]], "notices": []}
    >>> merge_results([(0, a), (1, b)], summed=True).rows
    [('acme', 4, 7.0), ('globex', 2, None)]
    >>> merge_results([(0, a), (1, b)], summed=False).rows[-1]
    ('globex', 2, None, 1)
    >>> merge_results([(0, {"tag": "KILL 1"}), (1, {"tag": "KILL 2"})], summed=False).tag
    'KILL 3'
    """
    first = answers[0][1]
    columns = tuple(first.get("columns", ()))
    notices = unique(n for _, a in answers for n in a.get("notices", ()))
    tags = [a["tag"] for _, a in answers]
    counts = [_TAG_COUNT.fullmatch(t) for t in tags]
    word = counts[0].group(1) if counts[0] else None
    if word is not None and all(m is not None and m.group(1) == word for m in counts):
        tag = f"{word} {sum(int(m.group(2)) for m in counts if m is not None)}"
    else:
        tag = tags[0]
    if not columns:
        return Result(tag, notices=notices)
    if not summed:
        rows = [(*row, index) for index, a in answers for row in a.get("rows", ())]
        return Result(tag, (*columns, "worker"), rows, notices)
    all_rows = [tuple(row) for _, a in answers for row in a.get("rows", ())]
    numeric = [any(_is_number(row[i]) for row in all_rows) for i in range(len(columns))]
    groups: dict[tuple[object, ...], list[tuple[object, ...]]] = {}
    for row in all_rows:
        groups.setdefault(tuple(v for v, n in zip(row, numeric, strict=True) if not n), []).append(row)
    weight = next((i for i, n in enumerate(numeric) if n and isinstance(all_rows[0][i], int)), None)
    merged = []
    for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        group, keys = groups[key], iter(key)
        weights = [r[weight] for r in group] if weight is not None else [1] * len(group)
        merged.append(
            tuple(_combine([r[i] for r in group], weights) if n else next(keys) for i, n in enumerate(numeric))
        )
    return Result(tag, columns, merged, notices)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _combine(values: list[Any], weights: list[Any]) -> object:
    present = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    if not present:
        return None
    if all(isinstance(v, int) for v, _ in present):
        return sum(v for v, _ in present)
    total = sum(w for _, w in present if _is_number(w))
    if not total:
        return sum(v for v, _ in present) / len(present)
    return sum(v * w for v, w in present if _is_number(w)) / total


def unique(items: Iterable[str]) -> list[str]:
    """The items once each, in first-seen order (notices that several workers repeat)."""
    return list(dict.fromkeys(items))


def merge_expositions(texts: Iterable[str]) -> bytes:
    """Sum the samples of several text expositions that share a name and labels.

    >>> one = '# HELP x_total X\\n# TYPE x_total counter\\nx_total{t="a"} 2.0\\n'
    >>> two = '# HELP x_total X\\n# TYPE x_total counter\\nx_total{t="a"} 3.0\\nx_total{t="b"} 1.0\\n'
    >>> print(merge_expositions([one, two]).decode().strip())
    # HELP x_total X
    # TYPE x_total counter
    x_total{t="a"} 5.0
    x_total{t="b"} 1.0
    """
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, frozenset[tuple[str, str]]], list[Any]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            samples = sums.setdefault(family.name, {})
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                entry = samples.get(key)
                if entry is None:
                    samples[key] = [s.name, s.labels, s.value]
                else:
                    entry[2] += s.value
    for name, family in families.items():
        for sample_name, labels, value in sums[name].values():
            family.add_sample(sample_name, labels, value)

    class _Merged:
        def collect(self) -> Iterable[Metric]:
            return families.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)
