#!/usr/bin/env python3
"""Checks a Prometheus exposition with Prometheus' own Python client, then prints its samples.

    check_metrics.py openmetrics < exposition   # the strict OpenMetrics 1.0 parser
    check_metrics.py text < exposition          # the classic text format 0.0.4 parser

Besides what the parser enforces, checks the naming conventions
(https://prometheus.io/docs/practices/naming/): every metric named `plughost_...` in
snake_case, counters ending in `_total`, units spelt as base units at the end of the name,
snake_case label names, no series twice, histogram buckets cumulative up to `+Inf` = `_count`.

Prints one JSON object on stdout: {"families": [{"name", "type", "unit", "help"}],
"samples": [{"name", "labels", "value"}]}. Exit status 0 when all is well; 1 with the problems
on stderr; 3 when the `prometheus_client` module is missing.
"""

import json
import math
import re
import sys

try:
    from prometheus_client import parser as classic_parser
    from prometheus_client.openmetrics import parser as openmetrics_parser
except ImportError:
    sys.stderr.write(
        "the Python module prometheus_client is missing: "
        "pip install prometheus-client (or pip install -r tests/tools/requirements.txt)\n"
    )
    sys.exit(3)

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]*$")
# Units that are not base units, as name components (`_ms`, `_milliseconds`, `_kb`...).
NOT_BASE_UNITS = {
    "ms", "millis", "milliseconds", "us", "microseconds", "ns", "nanoseconds", "minutes",
    "hours", "days", "kb", "kib", "mb", "mib", "gb", "gib", "kilobytes", "megabytes",
    "percent",
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("openmetrics", "text"):
        sys.stderr.write(__doc__)
        return 2
    fmt = sys.argv[1]
    exposition = sys.stdin.read()
    parse = (
        openmetrics_parser.text_string_to_metric_families
        if fmt == "openmetrics"
        else classic_parser.text_string_to_metric_families
    )
    try:
        families = list(parse(exposition))
    except Exception as error:  # the parsers raise ValueError, and sometimes others
        sys.stderr.write(f"not valid {fmt}: {error!r}\n")
        return 1

    problems = []
    seen = set()
    out = {"families": [], "samples": []}
    for family in families:
        name = family.name
        out["families"].append(
            {"name": name, "type": family.type, "unit": family.unit, "help": family.documentation}
        )
        if not name.startswith("plughost_"):
            problems.append(f"{name}: not under the plughost_ prefix")
        if not SNAKE_CASE.match(name):
            problems.append(f"{name}: not snake_case")
        if set(name.split("_")) & NOT_BASE_UNITS:
            problems.append(f"{name}: a unit that is not a base unit (seconds, bytes)")
        if family.type != "counter" and name.endswith("_total"):
            problems.append(f"{name}: a {family.type} named like a counter")
        if family.unit and not name.endswith("_" + family.unit):
            problems.append(f"{name}: its unit {family.unit} is not at the end of its name")
        if not family.documentation:
            problems.append(f"{name}: no HELP")
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith(("_total", "_created")):
                problems.append(f"{sample.name}: a counter sample not ending in _total")
            for label in sample.labels:
                if not SNAKE_CASE.match(label):
                    problems.append(f"{sample.name}: label {label!r} is not snake_case")
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in seen:
                problems.append(f"{sample.name}{sample.labels}: the same series twice")
            seen.add(key)
            value = sample.value
            if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
                value = str(value)
            out["samples"].append({"name": sample.name, "labels": sample.labels, "value": value})
        if family.type == "histogram":
            problems.extend(check_histogram(family))

    if problems:
        sys.stderr.write("".join(f"{p}\n" for p in problems))
        return 1
    json.dump(out, sys.stdout)
    return 0


def check_histogram(family):
    """Per series: buckets in order of `le`, cumulative, the last `+Inf` and equal to `_count`."""
    problems = []
    series = {}
    for sample in family.samples:
        labels = {k: v for k, v in sample.labels.items() if k != "le"}
        entry = series.setdefault(tuple(sorted(labels.items())), {"buckets": [], "count": None})
        if sample.name == family.name + "_bucket":
            entry["buckets"].append((float(sample.labels["le"]), sample.value))
        elif sample.name == family.name + "_count":
            entry["count"] = sample.value
    for labels, entry in series.items():
        where = f"{family.name}{dict(labels)}"
        buckets = entry["buckets"]
        if not buckets or buckets[-1][0] != math.inf:
            problems.append(f"{where}: no +Inf bucket last")
            continue
        for (le_a, a), (le_b, b) in zip(buckets, buckets[1:]):
            if not le_a < le_b:
                problems.append(f"{where}: buckets out of order at le={le_b}")
            if not a <= b:
                problems.append(f"{where}: buckets not cumulative at le={le_b} ({a} > {b})")
        if entry["count"] != buckets[-1][1]:
            problems.append(f"{where}: _count {entry['count']} != +Inf bucket {buckets[-1][1]}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
