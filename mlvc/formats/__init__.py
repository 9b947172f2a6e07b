"""Checkpoint file formats: safetensors (the native one), PyTorch .pt/.bin, and anything else as blobs."""

import os

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def kind_of(path: str) -> str:
    """The kind a file is stored as, from its name: 'safetensors', 'torch' or 'blob'."""
    name = os.path.basename(path).lower()
    if name.endswith(SAFETENSORS_SUFFIXES):
        return "safetensors"
    if name.endswith(TORCH_SUFFIXES):
        return "torch"
    return "blob"
