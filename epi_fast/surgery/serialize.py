"""Pruned models on disk: shapes and weights, no pickled code.

`model.pt` is a plain dict that `torch.load(path, weights_only=True)` reads:

    {"format": "epi_fast.pruned/1",
     "arch": {"name": str, "kwargs": {...}} or None,
     "channels": {layer name: output channels}            # conv/linear layers
     "modules": {module name: {attr: int or list, ...}},  # in/out_channels, groups,
                                                          # num_features, in/out_features, ...
     "state_dict": {name: tensor}}

A pruned model has shapes its class would not build by default, so `load_pruned` builds the
dense model (from "arch" or a given instance), shrinks every module to the saved attributes and
tensor shapes, and then loads the weights strictly.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch
import torch.nn as nn

from ..layout import unwrap_model
from .._io import atomic_write

__all__ = ["FORMAT", "save_pruned", "load_pruned"]

FORMAT = "epi_fast.pruned/1"

# Module attributes that change when channels are removed.
_SHAPE_ATTRS = (
    "in_channels", "out_channels", "groups",  # convs
    "in_features", "out_features",  # linear
    "num_features",  # batch/instance norms
    "num_channels", "num_groups",  # group norm
    "normalized_shape",  # layer norm
    "num_parameters",  # PReLU
)


def _arch_entry(arch) -> Optional[dict]:
    if arch is None:
        return None
    if isinstance(arch, str):
        arch = {"name": arch, "kwargs": {}}
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str):
        raise TypeError('arch must be a model name or {"name": str, "kwargs": dict}')
    entry = {"name": arch["name"], "kwargs": dict(arch.get("kwargs") or {})}
    try:
        # weights_only loading accepts plain containers and numbers only: JSON is a fair test.
        json.dumps(entry)
    except TypeError as err:
        raise TypeError(f"arch kwargs must be plain str/int/float/bool/list/dict values: {err}") from None
    return entry


def _module_attrs(module: nn.Module) -> dict:
    out = {}
    for attr in _SHAPE_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            out[attr] = value
        elif isinstance(value, tuple) and all(isinstance(v, int) for v in value):
            out[attr] = list(value)
    return out


def save_pruned(model: nn.Module, path, arch=None) -> str:
    """Write `model` (pruned or not) to `path` atomically (a temporary file, then os.replace);
    a directory path gets `model.pt` inside it. arch: the name and keyword arguments that
    `epi_fast.models.build_model` needs to build the dense model, e.g.
    ``{"name": "resnet_small", "kwargs": {"num_classes": 10, "in_channels": 1}}``; without it,
    `load_pruned` needs a dense instance. Returns the path written."""
    model = unwrap_model(model)
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.pt")
    modules, channels = {}, {}
    for name, m in model.named_modules():
        attrs = _module_attrs(m)
        if attrs and name:
            modules[name] = attrs
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            channels[name] = m.out_features if isinstance(m, nn.Linear) else m.out_channels
    payload = {
        "format": FORMAT,
        "arch": _arch_entry(arch),
        "channels": channels,
        "modules": modules,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def _read(path, map_location) -> dict:
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved model at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not an epi_fast pruned model (torch.load failed: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not an epi_fast pruned model: format {found!r}, expected {FORMAT!r}")
    for key in ("modules", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise ValueError(f"{path} is damaged: {key!r} is missing")
    return payload


def _shrink(model: nn.Module, modules: dict, state: dict) -> None:
    by_name = dict(model.named_modules())
    for name, attrs in modules.items():
        if name not in by_name:
            raise ValueError(f"the saved model has a module {name!r} that the rebuilt model lacks: wrong arch?")
        m = by_name[name]
        for attr, value in attrs.items():
            setattr(m, attr, tuple(value) if isinstance(value, list) else value)
    for name, m in by_name.items():
        prefix = f"{name}." if name else ""
        for attr, p in list(m._parameters.items()):
            saved = state.get(prefix + attr)
            if p is not None and saved is not None and saved.shape != p.shape:
                m._parameters[attr] = nn.Parameter(
                    torch.empty(saved.shape, dtype=p.dtype, device=p.device), requires_grad=p.requires_grad
                )
        for attr, b in list(m._buffers.items()):
            saved = state.get(prefix + attr)
            if b is not None and saved is not None and saved.shape != b.shape:
                m._buffers[attr] = torch.empty(saved.shape, dtype=b.dtype, device=b.device)


def load_pruned(path, model: Optional[nn.Module] = None, map_location="cpu") -> nn.Module:
    """Rebuild a model saved by `save_pruned`.

    model: a dense instance of the same architecture to shrink in place (e.g. when the file
    has no "arch"); otherwise the model is built with `epi_fast.models.build_model` from the
    saved arch. The saved channel counts need not be known in advance. Raises
    FileNotFoundError for a missing file and ValueError for a file of another format or a
    model that does not match it.
    """
    payload = _read(path, map_location)
    if model is None:
        arch = payload.get("arch")
        if not arch:
            raise ValueError(f"{path} records no architecture: pass a dense instance as model=")
        from ..models import build_model

        model = build_model(arch["name"], **arch.get("kwargs", {}))
    model = unwrap_model(model)
    state = payload["state_dict"]
    _shrink(model, payload["modules"], state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the saved weights do not fit the rebuilt model: {err}") from None
    return model
