#!/usr/bin/python3
"""Merges one deploy/loadtest.sh results folder into merged.json, prints a summary, and exits 1 when a
run failed: a generator's result missing, a generator exiting non-zero, errors, violations that the
scenario does not expect (or none where it expects them), or no Prometheus data about the daemon.

    merge_results.py RESULTS_DIR      (the scenario comes from the environment, set by loadtest.sh)

Layout read: RESULTS_DIR/<strategy>/gen-N.{json,rc,txt}, generators.exit, window,
prometheus/<series>.json (Prometheus query_range answers).
"""
import glob
import json
import os
import re
import sys
import time


def env_list(name):
    return os.environ.get(name, "").split()


def load_series(path):
    """A query_range answer -> [{"metric": {...}, "values": [[t, v], ...]}] (empty if unusable)."""
    try:
        with open(path) as f:
            d = json.load(f)
        if d.get("status") != "success":
            return []
        return [{"metric": r.get("metric", {}),
                 "values": [[float(t), float(v)] for t, v in r.get("values", [])]}
                for r in d["data"]["result"]]
    except (OSError, ValueError, KeyError):
        return []


def series_summary(series):
    vals = [v for s in series for _, v in s["values"]]
    return {"series": len(series), "points": len(vals),
            "max": max(vals) if vals else None,
            "last": series[0]["values"][-1][1] if len(series) == 1 and series[0]["values"] else None,
            "data": series}


def merge_run(out, strategy, expected_gens, expect_violations):
    d = os.path.join(out, strategy)
    problems = []
    gens = []
    files = sorted(glob.glob(os.path.join(d, "gen-*.json")),
                   key=lambda p: int(re.search(r"gen-(\d+)\.json$", p).group(1)))
    for path in files:
        idx = int(re.search(r"gen-(\d+)\.json$", path).group(1))
        g = {"index": idx, "file": os.path.relpath(path, out)}
        try:
            with open(path) as f:
                g["result"] = json.load(f)
        except (OSError, ValueError) as e:
            problems.append(f"generator {idx}: unreadable result ({e})")
            continue
        rc_path = path[:-5] + ".rc"
        try:
            g["exit_status"] = int(open(rc_path).read().strip())
        except (OSError, ValueError):
            g["exit_status"] = None
        gens.append(g)
    if len(gens) != expected_gens:
        problems.append(f"{len(gens)} generator results, expected {expected_gens}")
    # Container exit statuses as the engine saw them (a generator that died before writing its .rc).
    exits = {}
    try:
        for line in open(os.path.join(d, "generators.exit")):
            name, code = line.split()
            exits[name] = code
    except OSError:
        problems.append("no generators.exit (the run did not finish)")

    ok_codes = {0, 3} if expect_violations else {0}
    for name, code in sorted(exits.items()):
        if not code.isdigit() or int(code) not in ok_codes:
            problems.append(f"container {name} exited {code}")
    totals = {"page_ops": 0, "page_ops_per_sec": 0.0, "errors": 0, "violations": 0,
              "expected_refusals": 0, "held_at_destroy": 0, "pages_unmapped_at_destroy": 0,
              "rpc_p50_us_max": 0.0, "rpc_p99_us_max": 0.0}
    for g in gens:
        r = g["result"]
        for k in ("page_ops", "page_ops_per_sec", "errors", "violations", "expected_refusals",
                  "held_at_destroy", "pages_unmapped_at_destroy"):
            totals[k] += r.get(k, 0)
        totals["rpc_p50_us_max"] = max(totals["rpc_p50_us_max"], r.get("rpc_p50_us", 0.0))
        totals["rpc_p99_us_max"] = max(totals["rpc_p99_us_max"], r.get("rpc_p99_us", 0.0))
        if r.get("errors", 0):
            problems.append(f"generator {g['index']}: {r['errors']} errors "
                            f"(first: {r.get('first_error', '')!r})")
        if g["exit_status"] not in ok_codes:
            problems.append(f"generator {g['index']}: ppctl exit status {g['exit_status']}")
        if r.get("violations", 0) and not expect_violations:
            problems.append(f"generator {g['index']}: {r['violations']} violations")

    prom = {}
    for path in sorted(glob.glob(os.path.join(d, "prometheus", "*.json"))):
        prom[os.path.basename(path)[:-5]] = series_summary(load_series(path))
    up = prom.get("up", {})
    if not up.get("points") or up.get("max") != 1.0:
        problems.append("Prometheus has no `up` series of pagepoold (the daemon was not scraped)")
    if not prom.get("page_ops_rate", {}).get("max"):
        problems.append("Prometheus saw no traffic (pagepool_traffic_page_ops_total did not rise)")
    prom_violations = prom.get("domain_violations", {}).get("max") or 0
    if expect_violations:
        if totals["violations"] == 0 and prom_violations == 0:
            problems.append("violations expected under this strategy (EXPECT_VIOLATIONS), none seen")
    elif prom_violations:
        problems.append(f"Prometheus: pagepool_domain_violations_total reached {prom_violations:.0f}")

    window = None
    try:
        t0, t1 = open(os.path.join(d, "window")).read().split()
        window = {"start": int(t0), "end": int(t1)}
    except (OSError, ValueError):
        pass
    daemon_cpu_s = None
    try:
        c0, c1, tck = open(os.path.join(d, "daemon_cpu")).read().split()
        daemon_cpu_s = (int(c1) - int(c0)) / int(tck)
    except (OSError, ValueError):
        pass
    if daemon_cpu_s is not None and totals.get("page_ops"):
        totals["daemon_cpu_s"] = round(daemon_cpu_s, 2)
        totals["daemon_cpu_s_per_M_ops"] = round(daemon_cpu_s / (totals["page_ops"] / 1e6), 3)
    return {"strategy": strategy, "expect_violations": expect_violations, "window": window,
            "generators": gens, "container_exits": exits, "totals": totals,
            "prometheus": prom, "problems": problems, "passed": not problems}


def fmt_num(v):
    return "-" if v is None else f"{v:,.0f}"


def main():
    out = sys.argv[1]
    strategies = env_list("STRATEGIES")
    expect = set(env_list("EXPECT_VIOLATIONS"))
    scenario = {k.lower(): os.environ.get(k, "") for k in
                ("SCENARIO", "PATTERN", "GENERATORS", "STREAMS", "BATCH", "WINDOW", "DURATION",
                 "STRATEGIES", "IOMMU_MODE", "TRAFFIC_ARGS", "EXPECT_VIOLATIONS")}
    gens = int(scenario["generators"] or 0)
    runs = [merge_run(out, s, gens, s in expect) for s in strategies]
    merged = {"scenario": scenario, "results_dir": out,
              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "passed": all(r["passed"] for r in runs), "runs": runs}
    with open(os.path.join(out, "merged.json"), "w") as f:
        json.dump(merged, f, indent=1)

    print(f"\nscenario {scenario['scenario']}: {scenario['pattern']}, {gens} generators x "
          f"{scenario['streams']} streams x batch {scenario['batch']}, {scenario['duration']} s, "
          f"iommu {scenario['iommu_mode']} {scenario['traffic_args']}".rstrip())
    hdr = (f"{'strategy':8} {'gen':>3} {'page ops/s':>12} {'p50 us':>8} {'p99 us':>8} "
           f"{'errors':>6} {'viol.':>6} {'held@destroy':>12} {'unmapped':>9} {'exit':>4}")
    print(hdr)
    for r in runs:
        for g in r["generators"]:
            x = g["result"]
            print(f"{r['strategy']:8} {g['index']:>3} {x.get('page_ops_per_sec', 0):>12,.0f} "
                  f"{x.get('rpc_p50_us', 0):>8.1f} {x.get('rpc_p99_us', 0):>8.1f} "
                  f"{x.get('errors', 0):>6} {x.get('violations', 0):>6} "
                  f"{x.get('held_at_destroy', 0):>12} {x.get('pages_unmapped_at_destroy', 0):>9} "
                  f"{g['exit_status'] if g['exit_status'] is not None else '-':>4}")
        t = r["totals"]
        print(f"{r['strategy']:8} {'all':>3} {t['page_ops_per_sec']:>12,.0f} {'':>8} "
              f"{t['rpc_p99_us_max']:>8.1f} {t['errors']:>6} {t['violations']:>6} "
              f"{t['held_at_destroy']:>12} {t['pages_unmapped_at_destroy']:>9}")
        if "daemon_cpu_s" in t:
            print(f"{r['strategy']:8} daemon CPU {t['daemon_cpu_s']:.2f} s over the run, "
                  f"{t['daemon_cpu_s_per_M_ops']:.3f} s per million page ops")
    print(f"\nPrometheus, max over the run:\n{'strategy':8} {'scrapes':>7} {'inflight':>10} "
          f"{'table bytes':>12} {'violations':>10} {'page ops/s':>12}")
    for r in runs:
        p = r["prometheus"]
        print(f"{r['strategy']:8} {p.get('up', {}).get('points', 0):>7} "
              f"{fmt_num(p.get('pool_inflight', {}).get('max')):>10} "
              f"{fmt_num(p.get('domain_table_bytes', {}).get('max')):>12} "
              f"{fmt_num(p.get('domain_violations', {}).get('max')):>10} "
              f"{fmt_num(p.get('page_ops_rate', {}).get('max')):>12}")
    print()
    for r in runs:
        note = " (violations expected: EXPECT_VIOLATIONS)" if r["expect_violations"] else ""
        if r["passed"]:
            print(f"  {r['strategy']}: PASS{note}")
        else:
            print(f"  {r['strategy']}: FAIL{note}")
            for pr in r["problems"]:
                print(f"    - {pr}")
    print(f"loadtest {scenario['scenario']}: {'PASS' if merged['passed'] else 'FAIL'}")
    return 0 if merged["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
