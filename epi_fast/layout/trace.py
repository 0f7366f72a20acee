"""Tracing a model once: Torch-Pruning's dependency graph, and which layers feed its outputs.

Three things are settled here, before any group is built:

- the model runs on `example_inputs` (a forward pass that fails is reported as that, not as a
  tracing failure);
- every tensor the model returns (tuples, lists, dicts, Hugging Face output objects) is known,
  so that the layers whose output channels reach one of them are never pruned: a returned
  tensor that the model also consumes inside (an embedding returned beside the logits) counts
  as an output as much as a final one;
- an interruption (Ctrl-C, or the command line's SIGTERM) while tracing stays an interruption.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterable, List, Optional

import torch
import torch.nn as nn

from .mappings import Graph, UnsupportedPattern

__all__ = ["PRUNABLE", "BATCHNORM", "Trace", "trace_model", "unwrap_model", "resolve_ignored", "call_model", "run_once",
           "check_token_inputs"]

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)
BATCHNORM = nn.modules.batchnorm._BatchNorm


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module that holds the parameters: DDP/DataParallel `.module`, torch.compile's
    `_orig_mod`."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def resolve_ignored(model: nn.Module, ignored_layers: Iterable) -> List[nn.Module]:
    """`ignored_layers` (modules or qualified names) as modules of `model`."""
    by_name = dict(model.named_modules())
    owned = {id(m) for m in by_name.values()}
    out = []
    for item in ignored_layers or ():
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(f"ignored_layers names {item!r}, which is not a module of the model")
            out.append(by_name[item])
        elif isinstance(item, nn.Module):
            if id(item) not in owned:
                raise ValueError(f"ignored_layers holds a {type(item).__name__} that is not part of the model")
            out.append(item)
        else:
            raise TypeError(f"ignored_layers entries must be modules or names, got {type(item).__name__}")
    return out


def check_inputs(example_inputs: Any) -> None:
    """TypeError unless example_inputs is a tensor, a tuple/list or a dict."""
    if not isinstance(example_inputs, (torch.Tensor, tuple, list, dict)):
        raise TypeError(
            f"example_inputs must be a tensor, a tuple of positional inputs or a dict of keyword inputs, "
            f"got {type(example_inputs).__name__}"
        )


def call_model(model: nn.Module, example_inputs: Any):
    """model(x) for a tensor, model(*x) for a tuple or list, model(**x) for a dict."""
    check_inputs(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return model(example_inputs)
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    return model(*example_inputs)


def output_tensors(out: Any) -> List[torch.Tensor]:
    """Every tensor in a model's output: nested tuples, lists and mappings (Hugging Face's
    ModelOutput is an OrderedDict), and dataclass-like objects that offer `to_tuple()`."""
    found: List[torch.Tensor] = []
    stack = [out]
    while stack:
        o = stack.pop()
        if isinstance(o, torch.Tensor):
            found.append(o)
        elif isinstance(o, dict):
            stack.extend(reversed(list(o.values())))
        elif isinstance(o, (list, tuple)):
            stack.extend(reversed(o))
        elif hasattr(o, "to_tuple"):
            stack.append(o.to_tuple())
    return found


class _ForwardFailed(Exception):
    """The model raised on example_inputs (carries the original error)."""


@dataclass
class Trace:
    """The model traced once. dg: Torch-Pruning's DependencyGraph; outputs: the conv/linear
    layers whose output channels reach a returned tensor without passing through another
    conv/linear layer."""

    model: nn.Module
    dg: Any
    outputs: List[nn.Module]


def trace_model(model: nn.Module, example_inputs: Any, observe: Optional[ContextManager] = None,
                call: Optional[Callable[[nn.Module, Any], Any]] = None) -> Trace:
    """Trace `model` on `example_inputs` without changing it (training flags are restored).

    observe: a context manager entered around the trace's one forward call and nothing else
    (Torch-Pruning has put the model in eval mode; autograd is on), e.g.
    `epi_fast.targets.flops.FlopProbe`, to count the FLOPs of that same pass.
    call: what the trace runs instead of `call_model(model, example_inputs)`, as
    ``call(model, example_inputs)``: a part of the model's forward whose outputs are what the
    layers must keep (a detector's head outputs, before its boxes are decoded)."""
    check_inputs(example_inputs)
    call = call_model if call is None else call
    captured: List[torch.Tensor] = []

    def forward(m, inputs):
        # Given to Torch-Pruning as forward_fn, so that its own retry (model(*x), then model(x),
        # inside a bare except that also swallows Ctrl-C) never runs.
        try:
            with observe if observe is not None else nullcontext():
                return call(m, inputs)
        except Exception as err:
            raise _ForwardFailed(err) from err

    def keep_outputs(out):
        captured.extend(t for t in output_tensors(out) if t.grad_fn is not None)
        return captured

    # tp's trace switches the model to eval mode and leaves it there; every flag is restored so
    # that building a layout has no side effect on training.
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.enable_grad():
            dg = Graph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=forward, output_transform=keep_outputs,
                verbose=False,
            )
    except _ForwardFailed as err:
        cause = err.__cause__
        first = " ".join(str(cause).split()) or type(cause).__name__
        raise ValueError(
            f"{type(model).__name__} cannot run on example_inputs ({_describe(example_inputs)}): "
            f"{type(cause).__name__}: {first}"
        ) from cause
    except UnsupportedPattern:
        raise
    except Exception as err:
        raise ValueError(
            f"cannot trace {type(model).__name__} with Torch-Pruning's dependency graph: "
            f"{type(err).__name__}: {err}"
        ) from err
    finally:
        for m, mode in modes:
            m.training = mode
    if not captured:
        raise ValueError(
            f"{type(model).__name__} returned no tensor that depends on its parameters for "
            f"example_inputs ({_describe(example_inputs)}); nothing can be traced"
        )
    return Trace(model, dg, _output_layers(dg, captured))


def run_once(model: nn.Module, example_inputs: Any, observe: Optional[ContextManager] = None):
    """One forward pass as the trace runs it (eval mode, autograd on, every training flag
    restored after), inside `observe`; a model that fails on example_inputs is a ValueError."""
    check_inputs(example_inputs)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.enable_grad(), observe if observe is not None else nullcontext():
            return call_model(model, example_inputs)
    except Exception as cause:
        first = " ".join(str(cause).split()) or type(cause).__name__
        raise ValueError(
            f"{type(model).__name__} cannot run on example_inputs ({_describe(example_inputs)}): "
            f"{type(cause).__name__}: {first[:300]}"
        ) from cause
    finally:
        for m, mode in modes:
            m.training = mode


def check_token_inputs(model: nn.Module, example_inputs: Any) -> None:
    """A language model (one whose `get_input_embeddings()` is an nn.Embedding) takes token
    ids: a ValueError for floating-point inputs or ids outside its vocabulary."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except Exception:  # noqa: BLE001  (a model without input embeddings may raise here)
        emb = None
    if not isinstance(emb, nn.Embedding):
        return
    ids = example_inputs
    if isinstance(ids, dict):
        ids = ids.get("input_ids")
    elif isinstance(ids, (tuple, list)):
        ids = ids[0] if ids else None
    if not isinstance(ids, torch.Tensor):
        return
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(
            f"example_inputs of {type(model).__name__}, a language model, must be token ids (an integer tensor "
            f"of shape [batch, length]), got a {str(ids.dtype).replace('torch.', '')} tensor of shape {tuple(ids.shape)}"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= emb.num_embeddings):
        raise ValueError(
            f"example_inputs of {type(model).__name__} hold token ids from {int(ids.min())} to {int(ids.max())}, "
            f"outside its vocabulary of {emb.num_embeddings}"
        )


def _describe(example_inputs: Any) -> str:
    if isinstance(example_inputs, torch.Tensor):
        return f"a tensor of shape {tuple(example_inputs.shape)}"
    if isinstance(example_inputs, dict):
        return "keyword inputs " + ", ".join(
            f"{k}={tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}" for k, v in example_inputs.items()
        )
    return "positional inputs " + ", ".join(
        str(tuple(v.shape)) if isinstance(v, torch.Tensor) else type(v).__name__ for v in example_inputs
    )


def _output_layers(dg, outputs: List[torch.Tensor]) -> List[nn.Module]:
    """Conv/linear layers whose output channels reach a returned tensor without passing through
    another conv/linear layer: walked backwards from each returned tensor's node."""
    by_grad_fn = {node.grad_fn: node for node in dg.module2node.values() if node.grad_fn is not None}
    # Sinks of the graph (nodes nothing consumes) are outputs too, whatever the capture saw.
    stack = [by_grad_fn[t.grad_fn] for t in outputs if t.grad_fn in by_grad_fn]
    stack += [node for node in dg.module2node.values() if not node.outputs]
    found: dict = {}
    seen: set = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, PRUNABLE):
            found[id(node.module)] = node.module
            continue
        stack.extend(node.inputs)
    return list(found.values())
