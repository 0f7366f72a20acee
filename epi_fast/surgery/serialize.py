"""Pruned models on disk: shapes and weights, no pickled code.

`model.pt` is a plain dict that `torch.load(path, weights_only=True)` reads:

    {"format": "epi_fast.pruned/1",
     "epi_fast_version": "0.2.0",                         # the writer's version (absent in 0.1)
     "arch": {"name": str, "kwargs": {...}} or None,
     "channels": {layer name: output channels}            # conv/linear layers
     "modules": {module name: {attr: int or list, ...}},  # in/out_channels, groups,
                                                          # num_features, in/out_features, ...
     "state_dict": {name: tensor}}

A pruned model has shapes its class would not build by default, so `load_pruned` builds the
dense model (from "arch" or a given instance), shrinks every module to the saved attributes and
tensor shapes, and then loads the weights strictly.

The format number changes only when a reader of the old number could not read the new files;
a key added beside the others (as "epi_fast_version" was) keeps it. Files written by epi_fast
0.1 (without "epi_fast_version") load as before.

`read_torch_file` is the one place that opens such files (for `load_pruned` and
`epi-fast prune --checkpoint`): an empty, truncated or foreign file raises `TorchFileError`
(a ValueError) that says what is wrong with the file, not torch's internal message.
"""

from __future__ import annotations

import codecs
import json
import os
import pickle
import re
import warnings
import zipfile
from typing import Any, Optional

import torch
import torch.nn as nn

from ..layout import unwrap_model
from ..layout.transformer import HeadPrunedMultiheadAttention, _recognise, guard_fused_paths
from ..layout.transformer_vision import head_pruned_class
from .._io import atomic_write
from .._version import __version__

__all__ = [
    "FORMAT", "FORMAT_PREFIX", "save_pruned", "load_pruned", "read_torch_file", "is_saved_model",
    "TorchFileError", "describe_mismatch",
]

FORMAT = "epi_fast.pruned/1"
FORMAT_PREFIX = "epi_fast.pruned/"

# Module attributes that change when channels are removed.
_SHAPE_ATTRS = (
    "in_channels", "out_channels", "groups",  # convs
    "in_features", "out_features",  # linear
    "num_features",  # batch/instance norms
    "num_channels", "num_groups",  # group norm
    "normalized_shape",  # layer norm
    "num_parameters",  # PReLU
    "nf", "nx",  # transformers' Conv1D
    # attention modules whose heads were pruned (epi_fast.layout.transformer)
    "num_heads", "num_key_value_heads", "num_attention_heads", "all_head_size", "split_size", "inner_dim", "intermediate_size",
    "attn_dim",  # timm Attention
)


class TorchFileError(ValueError):
    """A file that is not a readable torch file of plain data. `reason` completes a sentence
    whose subject is the file ("is empty (0 bytes)"); str() is "PATH REASON"."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.path = path
        self.reason = reason


# torch.save's legacy (pre-zip) format begins with a pickled magic number.
_LEGACY_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _first_line(err: BaseException) -> str:
    for line in str(err).splitlines():
        line = line.strip()
        if line:
            return line[:200]
    return type(err).__name__


def _sniff(path: str, size: int) -> Optional[str]:
    """What is visibly wrong with the file before torch reads it, or None."""
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return (f"is truncated or not a torch file ({size} bytes that begin like the zip archive torch.save "
                    "writes, but the archive's directory at its end is missing or damaged: was it copied "
                    "or written completely?)")
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return ("holds a torch.jit archive (TorchScript, written by torch.jit.save), not plain data: "
                    "load it with torch.jit.load and torch.save its state_dict() to use it here")
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return f"is a zip archive but not a torch file (no data.pkl among its {len(names)} entries)"
        return None
    if head[:1] == b"\x80":
        if head[2:2 + len(_LEGACY_MAGIC)] == _LEGACY_MAGIC:
            return None  # torch.save's legacy format
        return "is a plain Python pickle (pickle.dump), not a torch file (torch.save)"
    try:
        # Incremental: a character cut at byte 64 is not an error.
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        shown = " ".join(text.split())[:40]
        return f"is a text file, not a torch file (it begins {shown!r})"
    return (f"is truncated or not a torch file ({size} bytes that are neither the zip archive torch.save "
            f"writes nor a pickle; it begins {head[:8].hex(' ')})")


def read_torch_file(path, map_location="cpu", mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` with errors that describe the file.

    Raises FileNotFoundError when nothing is at `path`, IsADirectoryError for a directory, and
    TorchFileError (a ValueError) for an empty, truncated or foreign file: a text file, random
    bytes, a plain pickle, a pickled object or module that weights-only loading refuses, a
    TorchScript archive.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    try:
        size = os.path.getsize(path)
        reason = _sniff(path, size)
    except OSError as err:
        raise TorchFileError(path, f"cannot be read: {err.strerror or err}") from None
    if reason is not None:
        raise TorchFileError(path, reason)
    kwargs = {"mmap": True} if mmap and _is_zip(path) else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise TorchFileError(
                path,
                f"is a pickle that is not a plain dict of tensors: it needs {found.group(1)} (a pickled "
                "object, e.g. a whole nn.Module, which weights_only loading refuses to run); if you trust "
                "the file, load it with torch.load(..., weights_only=False) and torch.save its state_dict()",
            ) from None
        operand = re.search(r"Unsupported operand \d+", str(err))
        detail = operand.group(0) if operand else _first_line(err)
        raise TorchFileError(path, f"is truncated or not a torch file (unpickling failed: {detail})") from None
    except OSError as err:
        raise TorchFileError(path, f"cannot be read: {err.strerror or _first_line(err)}") from None
    except Exception as err:  # EOFError, RuntimeError (zip records), KeyError, ...
        raise TorchFileError(path, f"is truncated or not a torch file ({type(err).__name__}: {_first_line(err)})") from None


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"PK"


def is_saved_model(path) -> bool:
    """Whether `path` is a file in the format `save_pruned` writes (any version of it)."""
    try:
        payload = read_torch_file(path, mmap=True)
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and isinstance(payload.get("format"), str) and payload["format"].startswith(FORMAT_PREFIX)


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
    extra: tuple = ()
    if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)):
        # An adapter (a user's included) may name attributes of its own: Block.saved_attrs.
        try:
            _, block = _recognise(module)
        except (ValueError, TypeError, AttributeError):
            block = None
        extra = tuple(block.saved_attrs) if block is not None else ()
    for attr in _SHAPE_ATTRS + extra:
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
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.pt")
    payload = model_payload(model, arch)
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def model_payload(model: nn.Module, arch=None, state_dict: Optional[dict] = None) -> dict:
    """What `save_pruned` writes: the format header, the architecture, the saved shapes of every
    module and the state_dict (on the CPU); plain containers and tensors only, so it loads with
    torch.load(weights_only=True). `restore_payload` reads it back into a dense instance.

    state_dict: the weights to record instead of `model.state_dict()`: for a model sharded with
    FSDP, the full state dict gathered on this rank (its own holds shards, DTensors)."""
    model = unwrap_model(model)
    modules, channels = {}, {}
    for name, m in model.named_modules():
        attrs = _module_attrs(m)
        if attrs and name:
            modules[name] = attrs
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            channels[name] = m.out_features if isinstance(m, nn.Linear) else m.out_channels
    payload = {
        "format": FORMAT,
        "epi_fast_version": __version__,
        "arch": _arch_entry(arch),
        "channels": channels,
        "modules": modules,
        "state_dict": {k: v.detach().cpu() for k, v in (model.state_dict() if state_dict is None else state_dict).items()},
    }
    return payload


def _describe(payload: Any) -> str:
    if isinstance(payload, dict):
        if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
            first = next(iter(payload))
            n = len(payload)
            return (f"it holds a plain state_dict ({n} tensor{'' if n == 1 else 's'}, e.g. {first!r}), not a model saved "
                    "by epi_fast.save_pruned: load it into its model with load_state_dict")
        keys = ", ".join(repr(k) for k in list(payload)[:4]) + (", ..." if len(payload) > 4 else "")
        return f"it holds a dict without the epi_fast header (keys {keys or 'none'})"
    kind = type(payload).__name__
    return f"it holds {'an' if kind[:1] in 'aeiou' else 'a'} {kind}, not a dict"


def _read(path, map_location) -> dict:
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = os.path.join(path, "model.pt")
        if not os.path.exists(inside):
            raise FileNotFoundError(f"no saved model at {inside} ({path} is a directory without model.pt)")
        path = inside
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved model at {path}")
    try:
        payload = read_torch_file(path, map_location=map_location)
    except TorchFileError as err:
        raise TorchFileError(path, f"is not an epi_fast pruned model: it {err.reason}") from None
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith(FORMAT_PREFIX):
        raise ValueError(f"{path} is not an epi_fast pruned model: {_describe(payload)}")
    if fmt != FORMAT:
        version = payload.get("epi_fast_version")
        by = f"epi_fast {version}" if isinstance(version, str) else "another epi_fast"
        raise ValueError(f"{path} is in format {fmt!r}, written by {by}; this epi_fast ({__version__}) reads {FORMAT!r}")
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
        if isinstance(m, nn.MultiheadAttention) and "inner_dim" in attrs and type(m) is nn.MultiheadAttention:
            m.__class__ = HeadPrunedMultiheadAttention  # its heads were pruned
            guard_fused_paths(m)
        elif "inner_dim" in attrs and head_pruned_class(m) is not None:
            m.__class__ = head_pruned_class(m)  # a torchvision Swin attention whose heads were pruned
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


def narrow_to_shapes(model: nn.Module, modules: dict, shapes: dict) -> nn.Module:
    """Narrow the dense `model` in place to the module attributes of a `model_payload`
    (`modules`) and the tensor shapes `shapes` ({state_dict key: list of ints}), without loading
    weights: the new parameters and buffers are uninitialised, for a loader (a sharded
    checkpoint) to fill. Returns the model."""
    model = unwrap_model(model)
    _shrink(model, modules, {k: torch.empty(tuple(v), device="meta") for k, v in shapes.items()})
    return model


def describe_mismatch(model: nn.Module, state: dict) -> str:
    """One line on how a state_dict differs from a model's: keys missing from it, keys the model
    lacks, tensors of another shape (at most one example each)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(own)} tensors are missing (e.g. {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} of the file's {len(state)} tensors are not in the model (e.g. {unexpected[0]!r})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} have another shape (e.g. {k!r}: {tuple(state[k].shape)} in the file, "
                     f"{tuple(own[k].shape)} in the model)")
    return "; ".join(parts) or "the tensors do not load"


def load_pruned(path, model: Optional[nn.Module] = None, map_location="cpu") -> nn.Module:
    """Rebuild a model saved by `save_pruned`.

    model: a dense instance of the same architecture to shrink in place (e.g. when the file
    has no "arch"); otherwise the model is built with `epi_fast.models.build_model` from the
    saved arch. The saved channel counts need not be known in advance. Files written by
    epi_fast 0.1 load too. Raises FileNotFoundError for a missing file, and ValueError (one
    line that says what is wrong) for an empty, truncated or foreign file (`TorchFileError`), a
    file of another format, or a model that does not match it.
    """
    payload = _read(path, map_location)
    if model is None:
        arch = payload.get("arch")
        if not arch:
            raise ValueError(f"{path} records no architecture: pass a dense instance as model=")
        if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or not isinstance(arch.get("kwargs", {}), dict):
            raise ValueError(f"{path} is damaged: its 'arch' entry is {arch!r}")
        from ..models import build_model

        model = build_model(arch["name"], **arch.get("kwargs", {}))
    return restore_payload(payload, model)


def restore_payload(payload: dict, model: nn.Module) -> nn.Module:
    """Narrow the dense `model` in place to the shapes of a `model_payload` and load its weights
    (what `load_pruned` does with a file). Returns the model; ValueError if they do not fit."""
    model = unwrap_model(model)
    state = payload["state_dict"]
    _shrink(model, payload["modules"], state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise ValueError(f"the saved weights do not fit the rebuilt model: {describe_mismatch(model, state)}") from None
    return model
