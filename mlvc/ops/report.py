"""report: what the HTML report shows, gathered from the repository (the page itself is mlvc/render/report.py).

ReportData holds the commit history (newest first), the effect table of those commits (ledger values and
their change against the baseline), each commit's diff against its first parent (by layer group, for the
newest `max_diffs` commits: each one reads two checkpoints), and the refs that label commits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..util import utc_now

if TYPE_CHECKING:
    from ..objects import Commit
    from ..repo import Repo
    from .diff import TreeDiff
    from .evals import EffectTable

MAX_DIFFS = 50  # layer maps for at most this many (the newest) commits: each one reads two checkpoints


@dataclass
class ReportData:
    root: str
    rev: str
    commits: list[Commit]  # newest first
    effects: EffectTable  # rows: the commits above that are in the range (all of them, evaluated or not)
    layer_diffs: dict[str, TreeDiff]  # commit id -> its diff against its first parent
    head: str | None = None
    head_branch: str | None = None
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    generated: str = ""  # UTC, ISO 8601

    @property
    def tasks(self) -> list[str]:
        """The tasks with a column in the effect table, in column order."""
        return list(dict.fromkeys(c.task for c in self.effects.columns))

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "rev": self.rev, "generated": self.generated, "head": self.head,
                "head_branch": self.head_branch, "branches": dict(self.branches), "tags": dict(self.tags),
                "commits": [c.to_json() for c in self.commits], "effects": self.effects.to_json(),
                "layer_diffs": {cid: {k: v for k, v in d.to_json().items() if k != "tensors"}
                                for cid, d in self.layer_diffs.items()}}


def report_data(repo: Repo, rev: str = "HEAD", max_commits: int = 200, max_diffs: int = MAX_DIFFS) -> ReportData:
    """The history reachable from `rev` (at most `max_commits`, newest first) with its evaluations and diffs."""
    commits = repo.log(rev, max_commits)
    shown = {c.id for c in commits}
    table = repo.eval_show(rev, include_all=True)  # ops/evals.py, through the Repo: verbs never import verbs
    table.rows = [r for r in table.rows if r.commit in shown]
    diffs = {c.id: repo.diff(c.parents[0], c.id) for c in commits[:max_diffs] if c.parents}
    return ReportData(repo.root, rev, commits, table, diffs, repo.head(), repo.head_branch(),
                      repo.branches(), repo.tags(), utc_now())
