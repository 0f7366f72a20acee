"""Loading a pruned Hugging Face model written by its own `save_pretrained`.

`save_pretrained` writes the pruned weights as they are and the dense config (one head count,
one intermediate size per model); Hugging Face's `from_pretrained` then refuses the narrower
tensors. `load_pretrained(cls, path)` builds the dense model from the saved config, narrows
every parameter to the saved shape, sets each attention and MLP module's own attributes (head
counts, sizes) from the narrowed widths, and loads the weights strictly: the per-layer sizes
are read from the weights themselves, no side file is needed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

import torch
import torch.nn as nn

from ..layout.transformer import _recognise, _sync_features
from .serialize import describe_mismatch

__all__ = ["load_pretrained"]


def _read_state(path: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        state: Dict[str, torch.Tensor] = {}
        for name in files:
            state.update(load_file(os.path.join(path, name)))
        return state
    raise FileNotFoundError(f"no model.safetensors (or its index) in {path}: was it written by save_pretrained?")


def load_pretrained(cls, path, **config_overrides: Any) -> nn.Module:
    """The pruned model that ``model.save_pretrained(path)`` wrote, as a `cls` (e.g.
    transformers.LlamaForCausalLM) with its per-layer head and MLP sizes. Raises
    FileNotFoundError when path holds no weights, ValueError when they do not fit `cls`."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory written by save_pretrained")
    config = cls.config_class.from_pretrained(path, **config_overrides)
    model = cls(config)
    state = _read_state(path)
    blocks = [(m, block) for m in model.modules() for _, block in [_recognise(m)] if block is not None]
    dense_len = {}
    for _, block in blocks:
        for s in block.slices:
            dense_len[(id(s.owner), s.attr, s.dim)] = getattr(s.owner, s.attr).shape[s.dim]
    for module_name, m in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for attr, p in list(m._parameters.items()):
            saved = state.get(prefix + attr)
            if p is not None and saved is not None and saved.shape != p.shape:
                m._parameters[attr] = nn.Parameter(torch.empty(saved.shape, dtype=p.dtype), requires_grad=p.requires_grad)
    for _, block in blocks:
        removed = {}
        for s in block.slices:
            removed.setdefault((id(s.owner), s.attr, s.dim), [s, 0])[1] += s.width
        s, per_neuron = next(iter(removed.values()))
        now = getattr(s.owner, s.attr).shape[s.dim]
        gone, rest = divmod(dense_len[(id(s.owner), s.attr, s.dim)] - now, per_neuron)
        if rest:
            raise ValueError(f"{path}: a saved {s.attr} of width {now} is not a whole number of heads or channels")
        for x in block.slices:
            _sync_features(x.owner)
        if gone and block.update is not None:
            block.update(block.size - gone)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (lm_head = embed_tokens) are saved once: tie_weights fills the other.
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not any(k.startswith(t) for t in tied)]
    if missing or unexpected:
        hint = ""
        if missing and unexpected:
            hint = ("; transformers' save_pretrained renames some families' weights on save (ViT's to their legacy "
                    "names), which this loader does not map: save such a model with epi_fast.save_pruned instead")
        raise ValueError(f"the weights in {path} do not fit {cls.__name__}: {describe_mismatch(model, state)}{hint}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model
