"""Hugging Face transformers: a TrainerCallback that commits the model when the Trainer saves, and records
each evaluation's metrics in the ledger for the weights they were measured on (docs/hooks.md)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import FrameworkMissingError
from ..tracker import Tracker, numeric_metrics

try:
    from transformers import TrainerCallback
except ImportError:
    raise FrameworkMissingError("transformers", "mlvc.integrations.hf") from None


class MlvcCallback(TrainerCallback):
    """`Trainer(..., callbacks=[MlvcCallback(repo_path, branch="run-42")])`.

    On every save (`save_steps`/`save_strategy`) the model is committed to `branch` (with the optimizer,
    scheduler and RNG states unless `save_state=False`); an evaluation records its metrics (the Trainer's
    `eval_*` values) for the commit of its step, committing the model then when that step has none. Other
    keyword arguments go to mlvc.Tracker (keep=, background=, every=...: `every` commits every N steps too).
    Only the main process commits."""

    def __init__(self, repo: str | os.PathLike, branch: str, *, task: str = "eval", **tracker_args: Any):
        self.repo, self.branch, self.task, self.tracker_args = repo, branch, task, tracker_args
        self.tracker: Tracker | None = None

    def _start(self, state) -> Tracker | None:
        if self.tracker is None and state.is_world_process_zero:
            self.tracker = Tracker(self.repo, self.branch, task=self.task, **self.tracker_args)
        return self.tracker

    @staticmethod
    def _meta(args, state) -> dict[str, Any]:
        return {"epoch": state.epoch, "metadata": {"framework": "transformers", "run_name": args.run_name}}

    def on_train_begin(self, args, state, control, **kwargs):
        self._start(state)

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        t = self._start(state)
        if t is not None and t.every and state.global_step % t.every == 0 and t.committed_step != state.global_step:
            t.commit(model, step=state.global_step, optimizer=optimizer, scheduler=lr_scheduler,
                     **self._meta(args, state))

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        t = self._start(state)
        values = numeric_metrics(metrics or {})
        if t is not None and values:
            t.evaluated(model, state.global_step, values, optimizer=kwargs.get("optimizer"),
                        scheduler=kwargs.get("lr_scheduler"), **self._meta(args, state))

    def on_save(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        t = self._start(state)
        if t is not None and t.committed_step != state.global_step:
            t.commit(model, step=state.global_step, optimizer=optimizer, scheduler=lr_scheduler,
                     **self._meta(args, state))

    def on_train_end(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self.tracker.close()
