"""EPIPruner on models sharded with FSDP2 (`fully_shard`): two gloo processes on the CPU.

Every check compares the sharded run with one process working on the gathered weights: the
scores (magnitude and Taylor, conv channels, attention heads and MLP channels, a head's rows
cut by a shard boundary), the prune (the gathered parameters equal a single-process prune of
the same gathered weights with the same mask), the optimizer state on the surviving entries
(SGD momentum, AdamW's moments), and that training goes on (the loss keeps falling). The ranks
run in processes started here ("spawn", not torchrun) with a hang timeout.
"""

from __future__ import annotations

import os
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from epi_fast.testing import run_ranks

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="gloo is not available")

WORLD = 2
X0 = torch.zeros(1, 1, 8, 8)
TOKENS0 = torch.zeros(1, 8, dtype=torch.int64)
# A LLaMA-style decoder whose key/value groups straddle the shard boundary: k_proj has 3 groups
# of 4 rows (12 rows, 6 per rank), q_proj 3 groups of 8 rows (24 rows, 12 per rank); the
# vocabulary of 257 rows splits 129 / 128.
LLAMA = dict(hidden_size=24, num_attention_heads=6, num_key_value_heads=3, intermediate_size=44)


# -- helpers that run inside the ranks ---------------------------------------------------------


def _init(rank, world, init_file, timeout_s=60):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _dense_copy(model, name, **kwargs):
    """A single-process model holding the gathered weights (and this rank's buffers)."""
    from epi_fast.models import build_model

    dense = build_model(name, **kwargs)
    dense.load_state_dict({k: _full(v).detach().clone() for k, v in model.state_dict().items()})
    return dense


def _dense_optimizer(model, opt, dense, make):
    """`make(params)` over the dense copy, holding the gathered state of `opt`."""
    dense_opt = make(dense.parameters())
    dense_params = dict(dense.named_parameters())
    for name, p in model.named_parameters():
        if opt.state.get(p):
            dense_opt.state[dense_params[name]] = {k: _full(v).detach().clone() for k, v in opt.state[p].items()}
    return dense_opt


def _feed(dense, model):
    """The gathered parameters and gradients of `model` into `dense` (for the Taylor oracle)."""
    dense_params = dict(dense.named_parameters())
    for name, p in model.named_parameters():
        q = dense_params[name]
        q.data.copy_(_full(p.detach()))
        q.grad = None if p.grad is None else _full(p.grad).clone()


def _rel_err(a, b):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _compare_prune(pruner, opt, dense, dense_opt, example):
    """The single-process prune of the gathered weights with the pruner's mask, against the
    gathered sharded result: parameters, optimizer state (and its sharding)."""
    from torch.distributed.tensor import DTensor, Shard

    from epi_fast.layout import group_layout
    from epi_fast.surgery import prune_with_masks

    prune_with_masks(dense, group_layout(dense, example), pruner.keep_mask, dense_opt)
    dense_params = dict(dense.named_parameters())
    out = {"params_equal": True, "state_equal": True, "state_sharded": True, "all_dtensor": True, "shapes": {},
           "state_keys": set(), "held": True}
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    for name, q in pruner.module.named_parameters():
        out["shapes"][name] = tuple(q.shape)
        out["all_dtensor"] &= isinstance(q, DTensor) and tuple(q.placements) == (Shard(0),)
        out["held"] &= id(q) in held
        ref = dense_params[name]
        out["params_equal"] &= tuple(q.shape) == tuple(ref.shape) and torch.equal(_full(q.detach()), ref.detach())
        mine, theirs = opt.state.get(q, {}), dense_opt.state.get(ref, {})
        out["state_equal"] &= set(mine) == set(theirs)
        for key, value in mine.items():
            out["state_keys"].add(key)
            expected = theirs[key]
            if isinstance(value, DTensor):
                out["state_sharded"] &= value.to_local().shape == q.to_local().shape and value.placements == q.placements
            out["state_equal"] &= torch.equal(_full(value).reshape(expected.shape), expected)
    return out


def _fsdp_summary(settings):
    return [(s.name, s.reshard_after_forward, repr(s.mp_policy), repr(s.offload_policy), s.forward_methods)
            for s in settings]


class _Rank:
    """A rank's body `fn(rank, world, init_file, out_dir, *args)` (a module-level function, so
    that the spawned process can import it); what it returns, or its traceback when it fails,
    is saved as rank<r>.<tag>.pt in out_dir, and a failure exits non-zero."""

    def __init__(self, fn, tag):
        self.fn = fn
        self.tag = tag

    def __call__(self, rank, world, init_file, out_dir, *args):
        path = os.path.join(out_dir, f"rank{rank}.{self.tag}.pt")
        try:
            torch.save(self.fn(rank, world, init_file, out_dir, *args), path)
        except BaseException:
            torch.save({"error": traceback.format_exc()}, path)
            raise
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def _load(path):
    return torch.load(path, weights_only=False)


# -- the CNN: SGD with momentum, the magnitude criterion, Taylor checked on the side ----------


def _net():
    from epi_fast.models.small import ResNetSmall

    class Net(ResNetSmall):
        def logits(self, x):  # a method besides forward that runs the model (register_fsdp_forward_method)
            return self.forward(x)

    return Net(num_classes=10, in_channels=1)


def _shard_cnn(model, mp_policy):
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    fully_shard(model.stem, reshard_after_forward=False, mp_policy=mp_policy)
    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    register_fsdp_forward_method(model, "logits")


def _cnn(rank, world, init_file):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from epi_fast.criteria import Magnitude, get_criterion
    from epi_fast.criteria.sharded import ShardedScorer
    from epi_fast.distributed import fsdp_settings, local_rows
    from epi_fast.layout import group_layout
    from epi_fast.policy import EPIPruner

    _init(rank, world, init_file)
    torch.manual_seed(0)
    model = _net()
    mp_policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
    _shard_cnn(model, mp_policy)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(1))
    make_opt = lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9)  # noqa: E731
    opt = make_opt(model.parameters())
    settings = _fsdp_summary(fsdp_settings(model))
    pruner = EPIPruner(model, opt, 0.5, X0, window=2, patience=1, deadline_epoch=3)
    taylor = EPIPruner(model, opt, 0.5, X0, criterion="gradient")
    result = {"settings": settings, "errors": _refusals(model, opt)}

    # Local rows as DTensor itself places them.
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    rows_ok = True
    for _, p in model.named_parameters():
        local, start = local_rows(p)
        shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
        rows_ok &= tuple(local.shape) == tuple(shape) and (local.shape[0] == 0 or start == offset[0])
    result["rows_ok"] = rows_ok

    g = torch.Generator().manual_seed(10 + rank)
    data = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(4)]
    dense_ref = _dense_copy(model, "resnet_small", num_classes=10, in_channels=1)
    ref_acc = get_criterion("gradient").accumulator(group_layout(dense_ref, X0))
    losses, net = [], model
    for epoch in range(1, 7):
        total = 0.0
        for x, y in data:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            pruner.accumulate()
            if epoch == 1:
                taylor.accumulate()
                _feed(dense_ref, net)
                ref_acc.step()
            opt.step()
            total += loss.item()
        losses.append(total / len(data))
        if epoch == 1:
            result["taylor_err"] = _rel_err(taylor.tracker.accumulator.scores("sum"), ref_acc.scores("sum"))
            dense = _dense_copy(net, "resnet_small", num_classes=10, in_channels=1)
            dense_layout = group_layout(dense, X0)
            errs = {}
            for kind in ("auto", "bn", "l1", "l2"):
                crit = Magnitude(kind)
                mine = ShardedScorer(pruner.tracker.layout, crit, "mean", model, pruner._sync).weight_scores()
                errs[kind] = _rel_err(mine, crit.group_scores(dense_layout, "mean"))
            result["magnitude_err"] = errs
        if pruner.pruned:
            pruner.epoch_end()
            continue
        dense = _dense_copy(net, "resnet_small", num_classes=10, in_channels=1)
        dense_opt = _dense_optimizer(net, opt, dense, make_opt)
        if pruner.epoch_end():
            result["pruned_at"] = epoch
            result.update(_compare_prune(pruner, opt, dense, dense_opt, X0))
            result["channels_before"] = pruner.report()["channels_before"]
            net = pruner.module
            result["new_settings"] = _fsdp_summary(fsdp_settings(net))
            before = len(seen)
            net(X0)
            result["user_hook_kept"] = len(seen) == before + 1
            method = net.__dict__.get("logits")
            result["forward_method"] = (getattr(method, "__self__", None) is net,
                                        float((net.logits(X0) - net(X0)).abs().max()))
            result["old_model_untouched"] = all(tuple(p.shape) == s for p, s in zip(
                model.parameters(), [tuple(q.shape) for q in dense_ref.parameters()]))
    result.update(losses=losses, prune_epoch=pruner.prune_epoch, reason=pruner.prune_reason, epi=pruner.epi_history,
                  kept=pruner.kept_counts, report=pruner.report())
    return result


def _refusals(model, opt):
    """What EPIPruner refuses about a sharded model, before anything changes."""
    from torch.distributed.fsdp import fully_shard

    from epi_fast.criteria import Criterion
    from epi_fast.models import build_model
    from epi_fast.policy import EPIPruner

    class Mine(Criterion):
        name = "mine"

        def group_scores(self, layout, reduce=None):
            raise AssertionError("never called")

    out = {}
    for key, call in {
        "custom_criterion": lambda: EPIPruner(model, opt, 0.5, X0, criterion=Mine()),
        "reshard_fn_type": lambda: EPIPruner(model, opt, 0.5, X0, reshard_fn=5),
    }.items():
        try:
            call()
            out[key] = None
        except (TypeError, ValueError) as exc:
            out[key] = f"{type(exc).__name__}: {exc}"
    partly = build_model("resnet_small", num_classes=10, in_channels=1)
    for block in partly.layers:
        fully_shard(block)  # the stem and the head are left out of FSDP
    try:
        EPIPruner(partly, torch.optim.SGD(partly.parameters(), lr=0.1), 0.5, X0)
        out["unsharded_param"] = None
    except ValueError as exc:
        out["unsharded_param"] = f"ValueError: {exc}"
    return out


# -- the LLaMA-style decoder: AdamW, the Taylor criterion, heads and MLP channels -------------


def _shard_llama(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)


def _llama(rank, world, init_file):
    from epi_fast.criteria import Magnitude, get_criterion
    from epi_fast.criteria.sharded import ShardedScorer
    from epi_fast.layout import group_layout
    from epi_fast.models import build_model
    from epi_fast.policy import EPIPruner

    _init(rank, world, init_file)
    torch.manual_seed(0)
    model = build_model("llama_micro", **LLAMA)
    _shard_llama(model)
    make_opt = lambda params: torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)  # noqa: E731
    opt = make_opt(model.parameters())
    resharded = []

    def reshard(module):  # the user's own wrapping, called on every rank with the pruned plain module
        resharded.append(type(module).__name__)
        _shard_llama(module)

    pruner = EPIPruner(model, opt, 0.5, TOKENS0, criterion="gradient", window=2, patience=1, deadline_epoch=3,
                       reshard_fn=reshard)
    result = {"resharded": resharded}
    g = torch.Generator().manual_seed(20 + rank)
    data = [torch.randint(0, 256, (4, 16), generator=g) for _ in range(3)]
    dense_ref = _dense_copy(model, "llama_micro", **LLAMA)
    ref_acc = get_criterion("gradient").accumulator(group_layout(dense_ref, TOKENS0))
    losses, net = [], model
    for epoch in range(1, 7):
        total = 0.0
        for x in data:
            loss = net(x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            pruner.accumulate()
            if epoch == 1:
                _feed(dense_ref, net)
                ref_acc.step()
            opt.step()
            total += loss.item()
        losses.append(total / len(data))
        if epoch == 1:
            result["taylor_err"] = _rel_err(pruner.tracker.accumulator.scores("sum"), ref_acc.scores("sum"))
            dense = _dense_copy(net, "llama_micro", **LLAMA)
            dense_layout = group_layout(dense, TOKENS0)
            errs = {}
            for kind in ("auto", "l1", "l2"):
                crit = Magnitude(kind)
                mine = ShardedScorer(pruner.tracker.layout, crit, "mean", model, pruner._sync).weight_scores()
                errs[kind] = _rel_err(mine, crit.group_scores(dense_layout, "mean"))
            result["magnitude_err"] = errs
        if pruner.pruned:
            pruner.epoch_end()
            continue
        dense = _dense_copy(net, "llama_micro", **LLAMA)
        dense_opt = _dense_optimizer(net, opt, dense, make_opt)
        if pruner.epoch_end():
            result["pruned_at"] = epoch
            result.update(_compare_prune(pruner, opt, dense, dense_opt, TOKENS0))
            result["channels_before"] = pruner.report()["channels_before"]
            net = pruner.module
            attn = net.model.layers[0].self_attn
            result["attn"] = (attn.num_key_value_heads, attn.num_heads, attn.k_proj.out_features)
    result.update(losses=losses, prune_epoch=pruner.prune_epoch, reason=pruner.prune_reason, epi=pruner.epi_history,
                  kept=pruner.kept_counts)
    return result


def _all(rank, world, init_file, out_dir):
    """The CNN, then the decoder (saved as rank<r>.pt), then a rank that raises, each with a
    process group of its own: one start of the processes for all, their imports being most of
    the time this takes."""
    out = {"cnn": _cnn(rank, world, init_file)}
    dist.destroy_process_group()
    out["llama"] = _llama(rank, world, init_file + ".llama")
    dist.destroy_process_group()
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    return _failing(rank, world, init_file + ".failing", out_dir, "exit")


_all_ranks = _Rank(_all, "failing")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    codes = run_ranks(_all_ranks, WORLD, timeout=400, args=(str(tmp),), init_file=str(tmp / "init"))
    ends = [_load(tmp / f"rank{r}.failing.pt") for r in range(WORLD)]
    for r in range(WORLD):
        assert (tmp / f"rank{r}.pt").exists(), f"rank {r} failed:\n{ends[r].get('error')}"
    assert codes[0][0] == 0 and "error" not in ends[0], ends[0].get("error")
    assert codes[1][0] != 0 and "rank 1 fails on purpose" in ends[1]["error"], ends[1]
    out = [_load(tmp / f"rank{r}.pt") for r in range(WORLD)]
    out[0]["failing"] = ends[0]
    return out


@pytest.mark.parametrize("model", ["cnn", "llama"])
def test_every_rank_prunes_at_the_same_epoch_to_the_same_shapes(results, model):
    r0, r1 = results[0][model], results[1][model]
    assert r0["prune_epoch"] == r1["prune_epoch"] == r0["pruned_at"] == r1["pruned_at"]
    assert r0["prune_epoch"] is not None and r0["prune_epoch"] <= 3
    assert r0["reason"] == r1["reason"]
    assert r0["epi"] == r1["epi"]
    assert r0["kept"] == r1["kept"]
    assert r0["shapes"] == r1["shapes"]
    assert sum(r0["kept"].values()) < sum(r0["channels_before"])  # something was pruned


@pytest.mark.parametrize("model", ["cnn", "llama"])
def test_scores_equal_one_process_on_the_gathered_weights(results, model):
    for r in results:
        res = r[model]
        assert res["taylor_err"] < 1e-5, res["taylor_err"]
        for kind, err in res["magnitude_err"].items():
            assert err < 1e-5, (kind, err)


@pytest.mark.parametrize("model", ["cnn", "llama"])
def test_pruned_model_and_optimizer_equal_one_process_prune_of_the_gathered_weights(results, model):
    for r in results:
        res = r[model]
        assert res["all_dtensor"], "the pruned model is sharded again (DTensor, Shard(0))"
        assert res["held"], "the optimizer holds the new sharded parameters"
        assert res["params_equal"]
        assert res["state_equal"]
        assert res["state_sharded"]
    keys = results[0][model]["state_keys"]
    assert keys == ({"momentum_buffer"} if model == "cnn" else {"step", "exp_avg", "exp_avg_sq"})


@pytest.mark.parametrize("model", ["cnn", "llama"])
def test_loss_keeps_falling_after_the_prune(results, model):
    for r in results:
        res = r[model]
        after = res["losses"][res["prune_epoch"]:]
        assert len(after) >= 3 and after[-1] < after[0], res["losses"]


def test_reshard_fn_shards_the_pruned_plain_module(results):
    for r in results:
        assert r["llama"]["resharded"] == ["LlamaForCausalLM"]  # once, on the plain (not FSDP) class


def test_attention_keeps_whole_key_value_groups(results):
    kv, heads, k_rows = results[0]["llama"]["attn"]
    assert heads == 2 * kv and k_rows == 4 * kv


def test_sharded_again_as_found_hooks_and_old_model_kept(results):
    for r in results:
        res = r["cnn"]
        assert res["new_settings"] == res["settings"]
        assert res["user_hook_kept"] and res["old_model_untouched"]
        assert res["forward_method"] == (True, 0.0)
        assert res["rows_ok"]


def test_fsdp_settings_are_read_as_given(results):
    """`epi_fast.distributed.fsdp._read_state` reads FSDP2's private state: this fails if torch
    changes what it keeps."""
    settings = {name: (reshard, mp) for name, reshard, mp, _, _ in results[0]["cnn"]["settings"]}
    methods = {name: m for name, _, _, _, m in results[0]["cnn"]["settings"]}
    assert methods[""] == ("logits",) and methods["stem"] == ()
    assert settings["stem"][0] is False
    assert "param_dtype=torch.float32" in settings["stem"][1] and "cast_forward_inputs=False" in settings["stem"][1]
    assert settings["layers.0"][0] is None and settings[""][0] is None
    assert set(settings) == {"", "stem", "layers.0", "layers.1", "layers.2"}


def test_report_needs_no_collective_and_counts_the_dense_model(results):
    rep = results[0]["cnn"]["report"]
    assert rep["params_after"] < rep["params_before"]
    assert rep["fsdp"]["world_size"] == WORLD and rep["fsdp"]["gathered_bytes"] == 4 * rep["params_before"]


def test_refusals_name_the_problem(results):
    errors = results[0]["cnn"]["errors"]
    assert errors["custom_criterion"].startswith("ValueError") and "Magnitude and Taylor" in errors["custom_criterion"]
    assert errors["reshard_fn_type"].startswith("TypeError") and "reshard_fn" in errors["reshard_fn_type"]
    assert errors["unsharded_param"].startswith("ValueError: stem.0.0.weight is not sharded")


def test_reshard_fn_without_fsdp_is_refused():
    from epi_fast.models import build_model
    from epi_fast.policy import EPIPruner

    model = build_model("resnet_small", num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="reshard_fn applies to a model sharded"):
        EPIPruner(model, torch.optim.SGD(model.parameters(), lr=0.1), 0.5, X0, reshard_fn=lambda m: m)


# -- a rank that raises: the others fail with a clear error, not hang -------------------------


def _failing(rank, world, init_file, out_dir, mode):
    """Rank 1 raises after its last training step of epoch 1, before `epoch_end()`; rank 0
    reaches the epoch-end collective and must fail there. mode "exit": rank 1's process ends;
    "hang": rank 1 stays alive and never joins (the process group's timeout, 10 s, bounds the
    wait); "ddp": as "exit" with a DDP-wrapped model."""
    from epi_fast.distributed import CollectiveError
    from epi_fast.models import build_model
    from epi_fast.policy import EPIPruner

    _init(rank, world, init_file, timeout_s=10)
    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=10, in_channels=1)
    if mode == "ddp":
        net = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        net = fully_shard(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    pruner = EPIPruner(net, opt, 0.5, X0)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    F.cross_entropy(net(x), y).backward()
    opt.step()
    if rank == 1:
        # Rank 1 raises once rank 0 is past every earlier collective (a process that exits while
        # a peer still reads its last message of the training step would fail the peer there).
        _wait_for(init_file + (".done" if mode == "hang" else ".entering"))
        raise RuntimeError("rank 1 fails on purpose")
    open(init_file + ".entering", "w").close()
    start = time.monotonic()
    try:
        pruner.epoch_end()
        return {"error": "epoch_end returned although rank 1 never joined"}
    except CollectiveError as exc:
        return {"message": str(exc), "seconds": time.monotonic() - start}
    finally:
        open(init_file + ".done", "w").close()


def _wait_for(path, limit=90):
    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)


_failing_alone = _Rank(_failing, "failing")


def _run_failing(tmp_path, mode):
    codes = run_ranks(_failing_alone, WORLD, timeout=120, args=(str(tmp_path), mode), init_file=str(tmp_path / "init"))
    res = [_load(tmp_path / f"rank{r}.failing.pt") for r in range(WORLD)]
    assert codes[1][0] != 0 and "rank 1 fails on purpose" in res[1]["error"], res[1]
    assert codes[0][0] == 0 and "error" not in res[0], res[0].get("error")
    return res[0]


def _check_failure(res, collective):
    assert collective in res["message"], res["message"]
    assert "another rank probably failed" in res["message"] and "\n" not in res["message"]
    assert res["seconds"] < 60


def test_a_rank_that_raises_makes_the_others_fail_with_a_clear_error(results):
    # The last part of the run above: rank 1 raised after its training steps and exited.
    _check_failure(results[0]["failing"], "epoch-end all-reduce of the channel scores of epoch 1 failed on rank 0 of 2")


@pytest.mark.slow
def test_a_rank_that_hangs_is_bounded_by_the_process_group_timeout(tmp_path):
    res = _run_failing(tmp_path, "hang")
    _check_failure(res, "epoch-end all-reduce of the channel scores of epoch 1")
    assert res["seconds"] > 5  # it waited for the timeout (10 s), not for a closed connection


@pytest.mark.slow
def test_a_rank_that_raises_under_ddp_makes_the_others_fail(tmp_path):
    res = _run_failing(tmp_path, "ddp")
    _check_failure(res, "broadcast of the structures at the end of epoch 1 failed on rank 0 of 2")
