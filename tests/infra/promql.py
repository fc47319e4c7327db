"""The metric names and label names a PromQL expression refers to (a small tokenizer, not a
full parser): enough to ask a live Prometheus whether some target exports each of them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TOKEN = re.compile(
    r"""(?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
    |(?P<num>[0-9][0-9a-zA-Z._]*|\$[a-zA-Z_][a-zA-Z0-9_]*)
    |(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[{}()\[\],=<>+\-*/%^@])
    |(?P<ws>\s+)""",
    re.X,
)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}  # fmt: skip
KEYWORDS = {"bool", "and", "or", "unless", "offset", "start", "end", "inf", "nan", "atan2"}


@dataclass
class Refs:
    selectors: list[tuple[str | None, set[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {name for name, _ in self.selectors if name}


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read {expr[pos:pos + 20]!r} in {expr!r}")
        if match.lastgroup != "ws":
            out.append((match.lastgroup or "", match.group()))
        pos = match.end()
    return out


def refs(expr: str) -> Refs:
    toks = tokens(expr)
    found = Refs()
    i = 0

    def nxt(j: int) -> str:
        return toks[j][1] if j < len(toks) else ""

    while i < len(toks):
        kind, text = toks[i]
        if text == "[":  # range or subquery: durations only
            while toks[i][1] != "]":
                i += 1
        elif kind == "ident" and text in GROUPING and nxt(i + 1) == "(":
            i += 2
            while toks[i][1] != ")":
                if toks[i][0] == "ident":
                    found.grouping.add(toks[i][1])
                i += 1
        elif kind == "ident" and (nxt(i + 1) == "(" or text in AGGREGATORS | KEYWORDS | GROUPING):
            pass  # a function, an aggregation or a keyword
        elif kind == "ident" or text == "{":
            name = text if kind == "ident" else None
            labels: set[str] = set()
            if kind == "ident" and nxt(i + 1) == "{":
                i += 1
            if toks[i][1] == "{":
                i += 1
                while toks[i][1] != "}":
                    if toks[i][0] == "ident" and nxt(i + 1) in {"=", "!=", "=~", "!~"}:
                        if toks[i][1] == "__name__":
                            name = toks[i + 2][1].strip("\"'`")
                        else:
                            labels.add(toks[i][1])
                        i += 2
                    i += 1
            found.selectors.append((name, labels))
        i += 1
    return found


def problems(queries: dict[str, str], labels: dict[str, set[str]]) -> list[str]:
    """What each query names that is not exported: `labels` maps each exported metric name to
    the label names its series carry (from Prometheus' /api/v1/series)."""
    out = []
    for where, expr in queries.items():
        found = refs(expr)
        for name in sorted(found.metrics - set(labels)):
            out.append(f"{where}: no target exports {name}")
        for name, matchers in found.selectors:
            for label in sorted(matchers - labels.get(name or "", set())):
                out.append(f"{where}: {name} has no label {label!r}")
        known = set().union(*(labels.get(m, set()) for m in found.metrics))
        for label in sorted(found.grouping - known):
            out.append(f"{where}: no metric of the query has label {label!r}")
    return out
