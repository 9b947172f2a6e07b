"""The framework callbacks, each in a real (tiny) training run on the CPU: Hugging Face transformers' Trainer
and PyTorch Lightning's Trainer; and the clear error when the framework is absent."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import first_parent_chain, make_repo
from mlvc.repo import Repo

torch = pytest.importorskip("torch")


def run_chain(repo: Repo, branch: str) -> list:
    """The tracker's commits on the branch, oldest first."""
    return [c for c in first_parent_chain(repo, branch) if "tracker" in c.metadata]


def equal_weights(repo: Repo, rev: str, module) -> bool:
    got = repo.load(rev, path="model.safetensors")
    want = module.state_dict()
    return set(got) == set(want) and all(torch.equal(got[k], want[k].cpu()) for k in want)


def test_hugging_face_trainer_commits_on_save_and_records_evaluations(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from mlvc.integrations.hf import MlvcCallback

    repo = make_repo(tmp_path / "r")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config)
    ids = torch.randint(0, 64, (32, 8))
    data = [{"input_ids": ids[i], "labels": int(ids[i, 0] % 2)} for i in range(32)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=8,
                             per_device_eval_batch_size=16, save_strategy="steps", save_steps=4,
                             eval_strategy="steps", eval_steps=3, logging_steps=3, report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0)
    cb = MlvcCallback(repo.root, "hf-run", background=True)
    Trainer(model=model, args=args, train_dataset=data, eval_dataset=data[:16], callbacks=[cb]).train()

    commits = run_chain(repo, "hf-run")
    # evaluations at steps 3 and 6 commit the weights they measured; the save at step 4 commits; the save at
    # step 6 (the end) finds step 6 committed already
    assert [c.metadata["step"] for c in commits] == [3, 4, 6]
    assert all(c.metadata["framework"] == "transformers" and "lr" in c.metadata for c in commits)
    rows = {(r.commit, r.task, r.metric) for r in repo.ledger.records()}
    for c in (commits[0], commits[2]):
        assert (c.id, "eval", "eval_loss") in rows
    assert not any(r[0] == commits[1].id for r in rows)
    assert equal_weights(repo, commits[-1].id, model)  # the last commit is the trained model
    assert repo.head() is None  # nothing else moved


def test_lightning_callback_commits_every_n_steps_and_on_validation(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")

    from mlvc.integrations.lightning import MlvcCallback

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 2)]

    repo = make_repo(tmp_path / "r")
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8)  # 4 steps an epoch
    module = Tiny()
    cb = MlvcCallback(repo.root, "pl-run", every=3, background=True)
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path / "pl"))
    trainer.fit(module, loader, loader)

    commits = run_chain(repo, "pl-run")
    # every 3 steps (3, 6) and after each epoch's validation (4, 8)
    assert [c.metadata["step"] for c in commits] == [3, 4, 6, 8]
    assert [c.metadata["epoch"] for c in commits] == [0, 0, 1, 1]
    rows = {(r.commit, r.metric) for r in repo.ledger.records()}
    assert {(commits[1].id, "val_loss"), (commits[3].id, "val_loss")} <= rows
    assert equal_weights(repo, commits[-1].id, module)
    from mlvc.tracker import STATE_PATH

    assert repo.read_manifest(commits[-1].manifest).file(STATE_PATH) is not None  # optimizer and RNG too


@pytest.mark.parametrize("module,package", [("mlvc.integrations.hf", "transformers"),
                                            ("mlvc.integrations.lightning", "pytorch-lightning")])
def test_a_missing_framework_is_a_clear_error(module, package):
    """With the framework hidden from import, importing the integration says what to install."""
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('transformers', 'pytorch_lightning'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        f"import {module}\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode != 0
    assert f"needs the {package} package, which is not installed; install it with `pip install {package}`" \
        in r.stderr
    assert "FrameworkMissingError" in r.stderr
