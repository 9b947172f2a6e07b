"""PyTorch Lightning (the pytorch-lightning package): a Callback that commits the LightningModule every N
steps and when a checkpoint is saved, and records validation metrics in the ledger (docs/hooks.md)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import FrameworkMissingError
from ..tracker import Tracker, numeric_metrics

try:
    import pytorch_lightning as pl
except ImportError:
    raise FrameworkMissingError("pytorch-lightning", "mlvc.integrations.lightning") from None


class MlvcCallback(pl.Callback):
    """`pl.Trainer(..., callbacks=[MlvcCallback(repo_path, branch="run-42", every=100)])`.

    Commits the module's state_dict to `branch` every `every` optimizer steps and whenever Lightning saves a
    checkpoint (with the optimizer, scheduler and RNG states unless `save_state=False`); after each validation
    its logged metrics (`trainer.callback_metrics`) are recorded for the commit of that step, committing the
    module then when that step has none. Other keyword arguments go to mlvc.Tracker. Only global rank 0
    commits; the tracker is closed (its queue flushed) when fitting ends or fails."""

    def __init__(self, repo: str | os.PathLike, branch: str, *, task: str = "val", **tracker_args: Any):
        self.repo, self.branch, self.task, self.tracker_args = repo, branch, task, tracker_args
        self.tracker: Tracker | None = None

    def _start(self, trainer) -> Tracker | None:
        if self.tracker is None and trainer.is_global_zero:
            self.tracker = Tracker(self.repo, self.branch, task=self.task, **self.tracker_args)
        return self.tracker

    @staticmethod
    def _state(trainer) -> dict[str, Any]:
        scheds = getattr(trainer, "lr_scheduler_configs", None) or []
        return {"optimizer": trainer.optimizers[0] if trainer.optimizers else None,
                "scheduler": scheds[0].scheduler if scheds else None, "epoch": trainer.current_epoch,
                "metadata": {"framework": "pytorch-lightning"}}

    def _commit(self, trainer, module, metrics: dict[str, float] | None = None) -> None:
        t = self._start(trainer)
        if t is None:
            return
        if metrics:
            t.evaluated(module, trainer.global_step, metrics, **self._state(trainer))
        elif t.committed_step != trainer.global_step:
            t.commit(module, step=trainer.global_step, **self._state(trainer))

    def on_train_start(self, trainer, pl_module):
        self._start(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        t = self._start(trainer)
        if t is not None and t.every and trainer.global_step and trainer.global_step % t.every == 0:
            self._commit(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        values = numeric_metrics(trainer.callback_metrics)
        if values:
            self._commit(trainer, pl_module, values)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._commit(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if self.tracker is not None:
            self.tracker.close()

    def on_exception(self, trainer, pl_module, exception):
        if self.tracker is not None:  # write what was queued; the training error stays the one raised
            try:
                self.tracker.close()
            except Exception as e:  # noqa: BLE001
                import warnings

                warnings.warn(f"mlvc: {e}", stacklevel=2)
