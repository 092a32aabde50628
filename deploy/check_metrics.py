#!/usr/bin/env python3
"""Checks that deploy/ only speaks of metrics the gateway exposes.

Run by deploy/check.sh (``python3 deploy/check_metrics.py``, from anywhere);
standard library only, so it needs neither the venv nor PyYAML.

Known series are
  * every Counter / Gauge / Histogram / Summary declared in gateway/metrics.py
    and every subclass of those kinds it declares, read as its base
    (read with ``ast``, never imported; counters get ``_total``, histograms
    ``_bucket`` (+ ``le``), ``_sum`` and ``_count``),
  * the series of the client library's standard collectors that
    gateway/metrics.py registers (``COLLECTORS`` below: ``process_*``,
    ``python_info``, ``python_gc_*``),
  * the contract metrics not implemented yet (``CONTRACT_PENDING`` below),
  * ``up`` (Prometheus' own), and
  * the recording rules of deploy/prometheus/rules/*.yml.
Scraped series also carry ``job``, ``instance`` and the target labels of
deploy/prometheus/prometheus.yml.

Checked:
  * every metric name in a rule expression, a rule-test series / expression /
    expected sample and a dashboard target or template query is known, and every
    label it is matched, grouped or joined on is one that metric has;
  * every ``{{ $labels.x }}`` in an alert annotation is a label the alert has;
  * every alert named in a rule test exists, and every ``runbook`` annotation
    points at a heading of deploy/README.md;
  * dashboard panels use the ``${DS_PROMETHEUS}`` input and have unique ids.
Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRICS_PY = ROOT / "gateway" / "metrics.py"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
README = DEPLOY / "README.md"

# Part of the README's outside contract, not in gateway/metrics.py yet
# (names as exposed, labels as announced).
CONTRACT_PENDING: dict[str, frozenset[str]] = {
    "gateway_outbox_pending": frozenset({"tenant"}),
    "gateway_outbox_oldest_age_seconds": frozenset({"tenant"}),
    "gateway_push_records_total": frozenset({"source", "tenant", "outcome"}),
    "gateway_delivery_attempts_total": frozenset({"tenant", "result"}),
    "gateway_classified_responses_total": frozenset({"label"}),
}
# prometheus_client's collectors: their series, known when gateway/metrics.py
# registers the collector (a call to it by this name).
COLLECTORS: dict[str, dict[str, frozenset[str]]] = {
    "ProcessCollector": {name: frozenset() for name in (
        "process_resident_memory_bytes", "process_virtual_memory_bytes",
        "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
        "process_start_time_seconds")},
    "PlatformCollector": {"python_info": frozenset(
        {"implementation", "major", "minor", "patchlevel", "version"})},
    "GCCollector": {name: frozenset({"generation"}) for name in (
        "python_gc_objects_collected_total", "python_gc_objects_uncollectable_total",
        "python_gc_collections_total")},
}
SCRAPE_LABELS = frozenset({"job", "instance"})
PROMETHEUS_OWN: dict[str, frozenset[str]] = {"up": frozenset()}
DASHBOARD_DATASOURCE = "${DS_PROMETHEUS}"

# --------------------------------------------------------------------------
# Known metrics


def metrics_from_source(path: Path) -> dict[str, frozenset[str]]:
    """Exposed series name -> label names, from the metric constructors."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    library = {"Counter", "Gauge", "Histogram", "Summary"}
    # A subclass of one of the library's kinds declared in the file (the data
    # plane's lock-free LoopCounter, LoopHistogram) exposes what its base does.
    same_as = {node.name: base.id for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
               for base in node.bases if isinstance(base, ast.Name) and base.id in library}
    found: dict[str, frozenset[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kind = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) else "")
        kind = same_as.get(kind, kind)
        if kind in COLLECTORS:
            found.update(COLLECTORS[kind])
            continue
        if kind not in library:
            continue
        name = _const_str(node.args[0] if node.args else _kwarg(node, "name"))
        if name is None:
            continue
        labels_node = node.args[2] if len(node.args) > 2 else _kwarg(node, "labelnames")
        labels = frozenset(_const_strs(labels_node))
        if kind == "Counter":
            found[name.removesuffix("_total") + "_total"] = labels
        elif kind == "Gauge":
            found[name] = labels
        elif kind == "Histogram":
            found[name + "_bucket"] = labels | {"le"}
            found[name + "_sum"] = labels
            found[name + "_count"] = labels
        else:
            found[name] = labels | {"quantile"}
            found[name + "_sum"] = labels
            found[name + "_count"] = labels
    return found


def _kwarg(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _const_str(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _const_strs(node: ast.expr | None) -> list[str]:
    if isinstance(node, ast.List | ast.Tuple):
        return [s for s in (_const_str(e) for e in node.elts) if s is not None]
    return []


# --------------------------------------------------------------------------
# A little YAML: just the scalars these files use (plain, quoted, | and >).

_KEY = re.compile(r"^(?P<indent>\s*)(?:-\s+)?(?P<key>[A-Za-z_][\w-]*):(?:\s+(?P<value>.*))?$")


@dataclass
class Scalar:
    key: str
    value: str
    line: int


def yaml_scalars(path: Path, keys: Iterable[str]) -> list[Scalar]:
    wanted = set(keys)
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Scalar] = []
    i = 0
    while i < len(lines):
        m = _KEY.match(lines[i])
        i += 1
        if not m or m.group("key") not in wanted:
            continue
        key, raw = m.group("key"), (m.group("value") or "").strip()
        column = m.start("key")
        if raw[:1] in {"|", ">"}:
            body = []
            while i < len(lines) and (not lines[i].strip()
                                      or len(lines[i]) - len(lines[i].lstrip()) > column):
                body.append(lines[i].strip())
                i += 1
            joiner = "\n" if raw[0] == "|" else " "
            out.append(Scalar(key, joiner.join(b for b in body if b), i))
            continue
        if raw.startswith("'"):
            value = raw[1:raw.rindex("'")].replace("''", "'")
        elif raw.startswith('"'):
            value = json.loads(raw[:_closing_quote(raw) + 1])
        else:
            value = re.sub(r"\s+#.*$", "", raw)
            nxt = lines[i] if i < len(lines) else ""
            if (nxt.strip() and len(nxt) - len(nxt.lstrip()) > column
                    and not _KEY.match(nxt) and not nxt.lstrip().startswith("#")):
                raise ValueError(f"{path}:{i}: multi-line plain scalar for {key!r}: "
                                 "use | or > so this checker can read it")
        out.append(Scalar(key, value, i))
    return out


def _closing_quote(raw: str) -> int:
    j = 1
    while raw[j] != '"':
        j += 2 if raw[j] == "\\" else 1
    return j


def target_labels(path: Path) -> frozenset[str]:
    """Label names under `labels:` of the static_configs."""
    names: set[str] = set()
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        m = _KEY.match(line)
        if not m or m.group("key") != "labels" or m.group("value"):
            continue
        column = m.start("key")
        for sub in lines[n + 1:]:
            if sub.strip().startswith("#"):
                continue
            sm = _KEY.match(sub)
            if not sm or sm.start("key") <= column:
                break
            names.add(sm.group("key"))
    return frozenset(names)


# --------------------------------------------------------------------------
# A little PromQL: enough to find selectors and the labels used on them.

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<braces>\{(?:"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^}"'])*\})
  | (?P<range>\[[^\]]*\])
  | (?P<dur>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![\w.]))
  | (?P<num>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<grafana>\$\{?\w+(?::\w+)?\}?)
  | (?P<other>.)
""", re.VERBOSE)
_MATCHER = re.compile(r"""\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*
                          ("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)\s*,?""", re.VERBOSE)
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                 "count_values", "bottomk", "topk", "quantile"}
_KEYWORDS = {"bool", "and", "or", "unless", "offset", "atan2", "inf", "nan", "Inf", "NaN"}


@dataclass
class Use:
    """What one PromQL expression uses."""
    selectors: list[tuple[str, list[str]]] = field(default_factory=list)  # name, matched labels
    grouping: set[str] = field(default_factory=set)                      # by/on/... labels
    errors: list[str] = field(default_factory=list)


def analyse(expr: str) -> Use:
    use = Use()
    tokens = [(m.lastgroup or "", m.group()) for m in _TOKEN.finditer(expr)]
    tokens = [t for t in tokens if t[0] != "ws"]
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident" and text in _LABEL_LISTS and nxt[1] == "(":
            j = i + 2
            while j < len(tokens) and tokens[j][1] != ")":
                if tokens[j][0] == "ident":
                    use.grouping.add(tokens[j][1])
                j += 1
            i = j + 1
            continue
        if kind == "ident" and (nxt[1] == "(" or (text in _AGGREGATIONS
                                                   and nxt[1] in {"by", "without"})):
            i += 1  # a function or an aggregation
            continue
        if kind == "ident" and text not in _KEYWORDS and text not in _LABEL_LISTS:
            labels = _matchers(nxt[1], use) if nxt[0] == "braces" else []
            use.selectors.append((text, labels))
            i += 2 if nxt[0] == "braces" else 1
            continue
        if kind == "braces":  # {__name__="..."} without a leading name
            labels = _matchers(text, use)
            names = re.findall(r"""__name__\s*=\s*["']([^"']+)["']""", text)
            if not names:
                use.errors.append(f"selector without a metric name: {text}")
            use.selectors.extend((n, [x for x in labels if x != "__name__"]) for n in names)
        i += 1
    return use


def _matchers(braces: str, use: Use) -> list[str]:
    inner = braces[1:-1].strip()
    labels: list[str] = []
    pos = 0
    while pos < len(inner):
        m = _MATCHER.match(inner, pos)
        if not m:
            use.errors.append(f"cannot read label matchers {braces}")
            break
        labels.append(m.group(1))
        pos = m.end()
    return labels


# --------------------------------------------------------------------------
# The checks


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []
        scrape = SCRAPE_LABELS | target_labels(PROMETHEUS_YML)
        self.known: dict[str, frozenset[str]] = {}
        for name, labels in metrics_from_source(METRICS_PY).items():
            self.known[name] = labels | scrape
        for name, labels in CONTRACT_PENDING.items():
            self.known.setdefault(name, labels | scrape)
        for name, labels in PROMETHEUS_OWN.items():
            self.known[name] = labels | scrape
        if len(self.known) < 10:
            self.problem(f"{METRICS_PY}: found only {len(self.known)} metrics; parser broken?")
        self.alerts: set[str] = set()

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def check_expr(self, where: str, expr: str) -> Use:
        use = analyse(expr)
        for err in use.errors:
            self.problem(f"{where}: {err}")
        available: set[str] = set()
        for name, labels in use.selectors:
            if name not in self.known:
                self.problem(f"{where}: unknown metric {name!r}")
                continue
            available |= self.known[name]
            for label in labels:
                if label not in self.known[name]:
                    self.problem(f"{where}: metric {name} has no label {label!r}")
        for label in sorted(use.grouping - available):
            if use.selectors and all(n in self.known for n, _ in use.selectors):
                self.problem(f"{where}: grouping label {label!r} is on none of its metrics")
        return use

    def output_labels(self, use: Use) -> set[str]:
        """Labels a rule's result carries (approximately: its grouping labels
        when it aggregates, else those of its metrics), without `le` once a
        quantile has been taken."""
        if use.grouping:
            labels = set(use.grouping)
        else:
            labels = set()
            for name, _ in use.selectors:
                labels |= self.known.get(name, frozenset())
        return labels

    def rules(self) -> None:
        anchors = readme_anchors(README)
        for path in RULES:
            rel = path.relative_to(ROOT)
            scalars = yaml_scalars(path, {"record", "alert", "expr", "summary",
                                          "description", "runbook"})
            current: tuple[str, str] | None = None
            current_labels: set[str] = set()
            for s in scalars:
                where = f"{rel}:{s.line}"
                if s.key in {"record", "alert"}:
                    current = (s.key, s.value)
                    if s.key == "alert":
                        if s.value in self.alerts:
                            self.problem(f"{where}: alert {s.value} defined twice")
                        self.alerts.add(s.value)
                elif s.key == "expr":
                    if current is None:
                        self.problem(f"{where}: expr outside a rule")
                        continue
                    use = self.check_expr(f"{where} ({current[1]})", s.value)
                    current_labels = self.output_labels(use)
                    if current[0] == "record":
                        if "histogram_quantile" in s.value:
                            current_labels.discard("le")
                        if current[1] in self.known:
                            self.problem(f"{where}: recording rule {current[1]} shadows a metric")
                        self.known[current[1]] = frozenset(current_labels)
                else:
                    if current is None or current[0] != "alert":
                        continue
                    for label in re.findall(r"\$labels\.(\w+)", s.value):
                        if label not in current_labels:
                            self.problem(f"{where}: {current[1]} {s.key} uses $labels.{label},"
                                         " which the alert does not carry")
                    if s.key == "runbook":
                        target, _, anchor = s.value.partition("#")
                        if target != "deploy/README.md" or anchor not in anchors:
                            self.problem(f"{where}: runbook {s.value!r} is not a heading of "
                                         "deploy/README.md")
            for name in sorted(self.alerts):
                if name.lower() not in anchors:
                    self.problem(f"{README.relative_to(ROOT)}: no runbook section for {name}")

    def rule_tests(self) -> None:
        for path in RULE_TESTS:
            rel = path.relative_to(ROOT)
            for s in yaml_scalars(path, {"series", "expr", "labels", "alertname"}):
                where = f"{rel}:{s.line}"
                if s.key == "alertname":
                    if s.value not in self.alerts:
                        self.problem(f"{where}: no alert named {s.value}")
                elif s.key == "labels" and not s.value.strip():
                    continue  # a mapping, not a selector
                else:
                    self.check_expr(where, s.value)

    def dashboards(self) -> None:
        for path in DASHBOARDS:
            rel = path.relative_to(ROOT)
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as exc:
                self.problem(f"{rel}: invalid JSON: {exc}")
                continue
            inputs = {i.get("name") for i in doc.get("__inputs", [])}
            if "DS_PROMETHEUS" not in inputs:
                self.problem(f"{rel}: no DS_PROMETHEUS datasource input")
            ids: set[object] = set()
            for panel in walk_panels(doc.get("panels", [])):
                title = panel.get("title", "?")
                where = f"{rel} panel {title!r}"
                if panel.get("id") in ids:
                    self.problem(f"{where}: duplicate panel id {panel.get('id')}")
                ids.add(panel.get("id"))
                if panel.get("type") == "row":
                    continue
                if (panel.get("datasource") or {}).get("uid") != DASHBOARD_DATASOURCE:
                    self.problem(f"{where}: datasource is not {DASHBOARD_DATASOURCE}")
                targets = panel.get("targets") or []
                if not targets:
                    self.problem(f"{where}: no targets")
                for target in targets:
                    if (target.get("datasource") or {}).get("uid") != DASHBOARD_DATASOURCE:
                        self.problem(f"{where}: target datasource is not {DASHBOARD_DATASOURCE}")
                    self.check_expr(where, target.get("expr", ""))
            for var in doc.get("templating", {}).get("list", []):
                if var.get("type") != "query":
                    continue
                query = var.get("query")
                text = query.get("query", "") if isinstance(query, dict) else str(query)
                self.check_template(f"{rel} variable {var.get('name')!r}", text)

    def check_template(self, where: str, text: str) -> None:
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", text)
        if not m:
            self.check_expr(where, re.sub(r"^\s*query_result\((.*)\)\s*$", r"\1", text))
            return
        use = self.check_expr(where, m.group(1))
        for name, _ in use.selectors:
            if name in self.known and m.group(2) not in self.known[name]:
                self.problem(f"{where}: metric {name} has no label {m.group(2)!r}")


def walk_panels(panels: list[Any]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        nested = panel.get("panels")
        if isinstance(nested, list):
            yield from walk_panels(nested)


def readme_anchors(path: Path) -> set[str]:
    """GitHub-style anchors of the Markdown headings."""
    anchors: set[str] = set()
    if not path.exists():
        return anchors
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def main() -> int:
    checker = Checker()
    checker.rules()
    checker.rule_tests()
    checker.dashboards()
    for line in checker.problems:
        print(f"  PROBLEM {line}")
    if checker.problems:
        print(f"{len(checker.problems)} problem(s)")
        return 1
    print(f"  {len(checker.known)} known series; rules {len(RULES)}, rule tests "
          f"{len(RULE_TESTS)}, dashboards {len(DASHBOARDS)} use only those")
    return 0


if __name__ == "__main__":
    sys.exit(main())
