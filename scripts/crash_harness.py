#!/usr/bin/env python
"""The long crash harness: kill mlvc commands at every step of their transactions, and hammer one repository
from many processes at once; print a table and write JSON (docs/reliability.md).

    python scripts/crash_harness.py                        # every scenario, then the full concurrency run
    python scripts/crash_harness.py --set ci --no-concurrency
    python scripts/crash_harness.py --scenario merge --at 7 --keep    # one kill, folder kept to look at
    python scripts/crash_harness.py --recovery-kills --scenario checkout-branch   # also kill the recovery

tests/test_crash.py and tests/test_concurrency.py run the CI subset of the same code.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import crash_scenarios
import crashlib
import mlvcrun

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ["scenario", "steps", "kills", "landed", "corrupt", "torn", "lost", "next failed", "s"]
# kills: the runs killed at step N (N = 1..steps); "A+B" for --recovery-kills: A runs killed at a step of the
# command, B of which had their recovery or next operation killed too (the others finished before step M)


def _table(rows: list[list], headers: list[str]) -> str:
    try:
        from tabulate import tabulate

        return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    except ImportError:  # pragma: no cover
        return "\n".join(" | ".join(str(c) for c in r) for r in [headers, *rows])


def crash_rows(results: list[crashlib.ScenarioResult]) -> list[list]:
    rows = []
    for r in results:
        if r.skipped:
            rows.append([r.name, "-", "-", "-", "-", "-", "-", "-", r.skipped])
            continue
        kills = f"{r.kills}+{r.second_kills}" if r.recovery else r.kills
        rows.append([r.name + (" (recovery kills)" if r.recovery else ""), r.steps, kills, r.landed, r.corrupt,
                     r.torn, r.lost, r.next_failed, f"{r.seconds:.0f}"])
    done = [r for r in results if not r.skipped]
    rows.append(["TOTAL", sum(r.steps for r in done), sum(r.kills + r.second_kills for r in done),
                 sum(r.landed for r in done),
                 sum(r.corrupt for r in done), sum(r.torn for r in done), sum(r.lost for r in done),
                 sum(r.next_failed for r in done), f"{sum(r.seconds for r in done):.0f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=["ci", "all"], default="all", help="which scenarios (default: all)")
    ap.add_argument("--scenario", action="append", default=[], help="only this scenario (repeatable)")
    ap.add_argument("--at", type=int, action="append", default=[], help="only the kill at this step (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the case folders (printed) to look at")
    ap.add_argument("--runner", choices=["fork", "spawn"], default="fork",
                    help="fork: children forked from one pre-imported Python (fast); spawn: `python -m mlvc` each")
    ap.add_argument("--recovery-kills", action="store_true",
                    help="after each kill, also kill the next operation at each of its steps")
    ap.add_argument("--no-crash", action="store_true", help="skip the crash scenarios")
    ap.add_argument("--no-concurrency", action="store_true", help="skip the concurrency runs")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--commits", type=int, default=50, help="commits (and ledger rows) per writer")
    ap.add_argument("--workdir", default=None, help="where the case folders go (default: a new temp folder)")
    ap.add_argument("--json", dest="json_path", default=None,
                    help="write the results here (default: benchmarks/out/crash_harness-DATE.json)")
    args = ap.parse_args(argv)

    workdir = args.workdir or tempfile.mkdtemp(prefix="mlvc-crash-", dir=crashlib.scratch_root())
    os.makedirs(workdir, exist_ok=True)
    chosen = crash_scenarios.CI if args.set == "ci" else crash_scenarios.ALL
    if args.scenario:
        by_name = {s.name: s for s in crash_scenarios.ALL}
        unknown = [n for n in args.scenario if n not in by_name]
        if unknown:
            ap.error(f"unknown scenario(s) {unknown}; known: {sorted(by_name)}")
        chosen = [by_name[n] for n in args.scenario]
    started = time.time()
    out: dict = {"date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "system": platform.platform()},
                 "runner": args.runner, "argv": sys.argv[1:], "git": _git_revision()}
    exit_code = 0
    if not args.no_crash:
        runner = mlvcrun.make_runner(args.runner)
        out["runner"] = runner.name
        results = []
        try:
            for sc in chosen:
                print(f"{sc.name}: mlvc {' '.join(sc.cmd)} ...", file=sys.stderr, flush=True)
                res = crashlib.run_scenario(sc, runner, workdir, only=args.at or None, keep=args.keep,
                                            recovery=args.recovery_kills)
                results.append(res)
                if res.failures:
                    print(crashlib.failure_text(res), file=sys.stderr, flush=True)
        finally:
            runner.close()
        print(_table(crash_rows(results), COLUMNS))
        out["crash"] = [r.to_json() for r in results]
        if any(r.failures for r in results):
            exit_code = 1
    if not args.no_concurrency and not args.scenario:
        import concurrencylib

        conc = concurrencylib.run_all(workdir, writers=args.writers, commits=args.commits, log=sys.stderr)
        print()
        print(_table(concurrencylib.rows(conc), concurrencylib.COLUMNS))
        out["concurrency"] = conc
        if any(c["failures"] for c in conc.values()):
            exit_code = 1
    out["seconds"] = round(time.time() - started, 1)
    path = args.json_path or os.path.join(HERE, "..", "benchmarks", "out",
                                          f"crash_harness-{out['date'][:10]}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    kept = f"; case folders in {workdir}" if args.keep else ""
    print(f"\nwrote {os.path.abspath(path)} ({out['seconds']:.0f} s){kept}")
    if not args.keep and not args.workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return exit_code


def _git_revision() -> str | None:
    import subprocess

    try:
        p = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "") if p.returncode == 0 else None


if __name__ == "__main__":
    sys.exit(main())
