#!/usr/bin/env python3
"""bench/tsdb/report.py - the table of the time-series benchmark: reads what
bench/tsdb/run left in DIR for each target (T.load.json from gen, T.cpu,
T.disk, T.queries.json from query.py; for thinghz also T.disk_served and
T.head.queries.json, before its head was cut into blocks), prints ingest, CPU, disk and query
figures side by side with the thinghz/influx ratios, checks that both
targets gave the same answers (floats within 1e-6 relative) and writes
DIR/results.json. Exit status 1 if any answer differs.

  report.py DIR
"""
import json
import math
import os
import sys

TARGETS = ["influx", "thinghz"]


def load(d, t):
    r = {"present": False}
    p = os.path.join(d, t)
    try:
        with open(p + ".load.json") as f:
            r["load"] = json.load(f)
        r["present"] = True
    except (OSError, ValueError):
        return r
    for k in ("cpu", "disk", "disk_served"):
        try:
            with open(p + "." + k) as f:
                r[k] = float(f.read().strip())
        except (OSError, ValueError):
            pass
    for k, fn in (("queries", ".queries.json"), ("head_queries", ".head.queries.json")):
        try:
            with open(p + fn) as f:
                r[k] = json.load(f)
        except (OSError, ValueError):
            r[k] = []
    return r


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return a == b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def same(a, b):
    """(equal, detail) for two normalized answers."""
    if isinstance(a, dict) and isinstance(b, dict):
        ka, kb = set(a), set(b)
        if ka != kb:
            return False, "keys differ: %d vs %d (e.g. %s)" % (
                len(ka), len(kb), sorted(ka ^ kb)[:3])
        bad = [k for k in ka if not close(a[k], b[k])]
        if bad:
            k = sorted(bad)[0]
            return False, "%d values differ (e.g. %s: %r vs %r)" % (len(bad), k, a[k], b[k])
        return True, "%d rows" % len(ka)
    return close(a, b), "%r vs %r" % (a, b)


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def ratio(t, i):
    if t is None or i is None or i == 0:
        return "-"
    r = t / i
    return "%.2fx" % r if r >= 0.1 else "%.2gx" % r


def main(d):
    res = {t: load(d, t) for t in TARGETS}
    rows = []
    for t in TARGETS:
        r = res[t]
        if not r["present"]:
            continue
        ld = r["load"]
        pts = ld.get("points") or 0
        r["points_per_s"] = ld.get("points_per_s")
        r["cpu_s_per_mpoint"] = r["cpu"] / (pts / 1e6) if pts and "cpu" in r else None
        r["bytes_per_point"] = r["disk"] / pts if pts and "disk" in r else None
        r["served_bytes_per_point"] = (r["disk_served"] / pts if pts and "disk_served" in r
                                       else None)
    I, T = res["influx"], res["thinghz"]

    def row(name, key, spec):
        iv, tv = I.get(key), T.get(key)
        rows.append((name, fmt(iv, spec), fmt(tv, spec), ratio(tv, iv)))

    row("ingest points/s", "points_per_s", ",.0f")
    row("server CPU s / M points", "cpu_s_per_mpoint", ".3f")
    row("bytes on disk / point", "bytes_per_point", ".3f")
    if T.get("served_bytes_per_point") is not None:
        rows.append(("  thinghz before the cut (WAL)", "", fmt(T["served_bytes_per_point"], ".3f"),
                     ""))
    mismatches = 0
    checks = []
    iq = {q["name"]: q for q in I.get("queries", [])}
    for label, key in (("", "queries"), (" (head)", "head_queries")):
        tq = {q["name"]: q for q in T.get(key, [])}
        if not tq and key != "queries":
            continue
        for name in list(iq) + [n for n in tq if n not in iq]:
            a, b = iq.get(name, {}), tq.get(name, {})
            rows.append(("query ms%s: %s" % (label, name), fmt(a.get("ms"), ".2f"),
                         fmt(b.get("ms"), ".2f"), ratio(b.get("ms"), a.get("ms"))))
            if "answer" in a and "answer" in b:
                ok, detail = same(a["answer"], b["answer"])
                mismatches += not ok
                checks.append("  %-40s %s (%s)" % (name + label, "same" if ok else "DIFFERENT",
                                                   detail))
            for t, q in (("influx", a), ("thinghz", b)):
                if "error" in q:
                    checks.append("  %-40s %s error: %s" % (name + label, t, q["error"]))
    w = max(len(r[0]) for r in rows) if rows else 10
    print("%-*s %16s %16s %10s" % (w, "", "influxdb 1.6", "thinghz", "thz/influx"))
    for r in rows:
        print("%-*s %16s %16s %10s" % (w, r[0], r[1], r[2], r[3]))
    for t in TARGETS:
        if res[t]["present"]:
            ld = res[t]["load"]
            print("%s: %d points in %.1f s, %d failed batches%s" % (
                t, ld.get("points", 0), ld.get("seconds", 0), ld.get("errors", 0),
                " (" + ld["first_error"] + ")" if ld.get("first_error") else ""))
        else:
            print("%s: not run or did not load" % t)
    if checks:
        print("answers:")
        print("\n".join(checks))
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    return 1 if mismatches else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
