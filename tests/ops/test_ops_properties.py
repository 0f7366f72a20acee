"""Property tests: random inputs, every implementation against an oracle, plus invariants.

For the ``cpu`` and ``cuda`` implementations the oracle is ``epi_fast.ops.reference``; for
``reference`` itself it is an independent brute force (float64 sums, Python sorting of
(score, index) tuples), which guards the oracle. Hypothesis runs derandomized so failures
reproduce; tensors are generated from a drawn seed (one draw per tensor, not per element) to
keep examples cheap. Tolerances are explained in epi_fast/testing/compare.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import epi_fast.ops.reference as R
from epi_fast.testing import U, assert_bounded, assert_exact, assert_scores_close, taylor_bound

F32 = torch.float32
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def fast(n: int):
    return settings(
        derandomize=True,
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- random tensors -----------------------------------------------------------------------------

TIES = torch.tensor([-1.0, -0.0, 0.0, 0.5, 1.0, 2.0])
SPECIAL = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan])


def values(shape, kind: str, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """float32 values: "normal" (randn * scale), "ties" (a tiny set incl. +-0), "zeros",
    "special" (normal with some zeros, +-0, +-inf and NaN sprinkled in)."""
    if kind == "ties":
        return TIES[torch.randint(len(TIES), shape, generator=gen)]
    if kind == "zeros":
        return torch.zeros(shape)
    x = torch.randn(shape, generator=gen) * scale
    if kind == "special" and x.numel():
        hit = torch.rand(shape, generator=gen) < 0.1
        pick = SPECIAL[torch.randint(len(SPECIAL), shape, generator=gen)]
        x = torch.where(hit, pick, x)
    return x


LAYOUTS = ("contiguous", "transposed", "strided_cols", "strided_rows", "channels_last")


@dataclass
class Spec:
    """A tensor of `shape` stored as `base` and seen through `view` (so that it can be rebuilt on
    any device with the same strides)."""
    base: torch.Tensor
    view: Callable[[torch.Tensor], torch.Tensor]

    def on(self, device, dtype=None) -> torch.Tensor:
        b = self.base if dtype is None else self.base.to(dtype)
        return self.view(b.to(device))


def spec(shape, layout: str, make) -> Spec:
    shape = tuple(shape)
    if layout == "transposed" and len(shape) >= 2:
        return Spec(make((shape[1], shape[0]) + shape[2:]), lambda t: t.transpose(0, 1))
    if layout == "strided_cols" and len(shape) >= 2:
        return Spec(make(shape[:-1] + (2 * shape[-1],)), lambda t: t[..., ::2])
    if layout == "strided_rows":
        return Spec(make((2 * shape[0],) + shape[1:]), lambda t: t[::2])
    if layout == "channels_last" and len(shape) == 4:
        r, c, h, w = shape
        return Spec(make((r, h, w, c)), lambda t: t.permute(0, 3, 1, 2))
    return Spec(make(shape), lambda t: t)


shapes = st.one_of(
    st.tuples(st.integers(0, 9)),                                          # BN-like vectors
    st.tuples(st.integers(0, 9), st.integers(0, 40)),                      # linear, incl. 1-row / 1-col / 0-col
    st.tuples(st.integers(1, 6), st.integers(0, 4), st.integers(1, 3), st.integers(1, 3)),  # conv
    st.tuples(st.just(1), st.integers(1, 300)),                            # one long row
    st.tuples(st.integers(1, 300), st.just(1)),                            # one column
)


@st.composite
def layer_list(draw, max_layers=6, kinds=("normal", "ties", "zeros", "special")):
    n = draw(st.integers(1, max_layers))
    shps = [draw(shapes) for _ in range(n)]
    layouts = [draw(st.sampled_from(LAYOUTS)) for _ in range(n)]
    kind = draw(st.sampled_from(kinds))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    return shps, layouts, kind, scale, seed


def build(layers, count=1):
    """`count` lists of Specs with the same shapes and layouts (e.g. params and grads)."""
    shps, layouts, kind, scale, seed = layers
    gen = torch.Generator().manual_seed(seed)
    return [[spec(s, l, lambda sh: values(sh, kind, gen, scale)) for s, l in zip(shps, layouts)]
            for _ in range(count)]


def row_len(tensors) -> int:
    return max([math.prod(t.shape[1:]) for t in tensors] + [1])


# -- channel_scores -----------------------------------------------------------------------------

def brute_channel_scores(tensors, criterion) -> torch.Tensor:
    out = []
    for t in tensors:
        rows = t.double().reshape(t.shape[0], math.prod(t.shape[1:]))
        if criterion == "l1":
            out.append(rows.abs().sum(1))
        elif criterion == "l2":
            out.append(rows.square().sum(1).sqrt())
        else:
            out.append(rows.reshape(-1).abs())
    return torch.cat(out).float()  # float64 -> float32 rounding of the exact value


def check_channel_scores(impl, specs, criterion, dtype):
    cpu = [s.on("cpu", dtype) for s in specs]
    got = impl.ops.channel_scores([s.on(impl.device, dtype) for s in specs], criterion)
    assert got.device.type == impl.device.type
    if impl.compiled:
        expected = R.channel_scores(cpu, criterion)
    else:
        expected = brute_channel_scores(cpu, criterion)
    assert_scores_close(got, expected, row_len(cpu), f"{impl.name} {criterion} {dtype}")


@fast(60)
@given(layers=layer_list(), criterion=st.sampled_from(["l1", "l2"]), dtype=st.sampled_from(DTYPES))
def test_channel_scores_norms(impl, layers, criterion, dtype):
    (specs,) = build(layers)
    check_channel_scores(impl, specs, criterion, dtype)


abs_shapes = st.one_of(st.tuples(st.integers(0, 50)), st.tuples(st.integers(0, 20), st.just(1), st.just(1), st.just(1)))


@fast(30)
@given(n=st.integers(1, 5), data=st.data(), dtype=st.sampled_from(DTYPES),
       kind=st.sampled_from(["normal", "ties", "special"]), seed=st.integers(0, 2**31 - 1))
def test_channel_scores_abs(impl, n, data, dtype, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    specs = [spec(data.draw(abs_shapes), data.draw(st.sampled_from(["contiguous", "strided_rows"])),
                  lambda sh: values(sh, kind, gen)) for _ in range(n)]
    check_channel_scores(impl, specs, "abs", dtype)


def test_channel_scores_many_tiny_layers(impl):
    # ~2000 layers of 0..4 rows of 0..3 values, as in a wide model's BN/linear list
    gen = torch.Generator().manual_seed(7)
    sizes = torch.randint(0, 5, (2000, 2), generator=gen).tolist()
    tensors = [torch.randn(r, c, generator=gen) for r, c in sizes]
    tensors += [torch.randn(3, generator=gen)]
    for crit in ("l1", "l2"):
        got = impl.ops.channel_scores([t.to(impl.device) for t in tensors], crit)
        expected = R.channel_scores(tensors, crit) if impl.compiled else brute_channel_scores(tensors, crit)
        assert_scores_close(got, expected, 4, f"{impl.name} {crit}")
    gammas = [torch.randn(r, generator=gen) for r, _ in sizes]
    got = impl.ops.channel_scores([g.to(impl.device) for g in gammas], "abs")
    assert_exact(got.cpu(), torch.cat(gammas).abs(), impl.name)


@pytest.mark.parametrize(
    "shape, dtype",
    [
        pytest.param((1024, 256, 4, 4), torch.float32, id="wide-rows-fp32"),
        pytest.param((1024, 256, 4, 4), torch.bfloat16, id="wide-rows-bf16"),
        pytest.param((70000, 60), torch.float32, id="many-rows-fp32"),
        pytest.param((1, 1 << 22), torch.float16, id="one-row-fp16"),
    ],
)
def test_channel_scores_huge_layer(impl, shape, dtype):
    # one ~4M-element weight, once per shape, plus a tiny layer after it
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(shape, generator=gen).to(dtype)
    tiny = torch.randn(2, 3, generator=gen).to(dtype)
    for crit in ("l1", "l2"):
        got = impl.ops.channel_scores([w.to(impl.device), tiny.to(impl.device)], crit)
        expected = R.channel_scores([w, tiny], crit) if impl.compiled else brute_channel_scores([w, tiny], crit)
        assert_scores_close(got, expected, row_len([w]), f"{impl.name} {crit}")


def test_results_do_not_depend_on_thread_count(impl):
    # CONTRACTS: "Results do not depend on the thread count" -> bitwise identical, not just close.
    if impl.device.type != "cpu":
        pytest.skip("thread count applies to the CPU implementations")
    gen = torch.Generator().manual_seed(4)
    tensors = [torch.randn(r, 33, generator=gen) for r in torch.randint(1, 9, (500,), generator=gen).tolist()]
    tensors.append(torch.randn(4096, 1024, generator=gen))
    grads = [torch.randn(t.shape, generator=gen) for t in tensors]
    n = sum(t.shape[0] for t in tensors)
    scores = torch.randint(0, 50, (n,), generator=gen).float()
    sizes = [t.shape[0] for t in tensors]

    def run():
        acc, skipped = torch.zeros(n), torch.zeros(1, dtype=torch.int64)
        impl.ops.taylor_accumulate_(acc, skipped, tensors, grads)
        return [impl.ops.channel_scores(tensors, "l2"), impl.ops.channel_scores(tensors, "l1"),
                impl.ops.taylor_scores(tensors, grads), acc,
                *impl.ops.global_masks(scores, [0.1, 0.5, 0.9], sizes, 1)]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(2, before))
        many = run()
    finally:
        torch.set_num_threads(before)
    for i, (a, b) in enumerate(zip(one, many)):
        assert torch.equal(a, b), f"{impl.name}: result {i} differs between 1 and {max(2, before)} threads"


# -- Taylor -------------------------------------------------------------------------------------

def brute_taylor_raw(params, grads, offsets, num_channels):
    raw = torch.zeros(num_channels, dtype=torch.float64)
    for p, g, o in zip(params, grads, offsets):
        prod = p.double() * g.double()
        raw[o:o + p.shape[0]] += prod.reshape(p.shape[0], math.prod(p.shape[1:])).sum(1)
    return raw


@st.composite
def taylor_case(draw):
    layers = draw(layer_list(kinds=("normal", "ties", "zeros")))
    shps = layers[0]
    rows = [s[0] for s in shps]
    if draw(st.booleans()):
        offsets, num_channels = None, None
        natural = sum(rows)
    else:  # tensors that add into the same channels (BN weight and bias onto their conv)
        width = max(rows) + draw(st.integers(0, 4))
        offsets = [draw(st.integers(0, width - r)) for r in rows]
        num_channels = draw(st.sampled_from([None, width]))
        natural = width if num_channels else max(o + r for o, r in zip(offsets, rows))
    return layers, offsets, num_channels, natural


def default_offsets(params):
    out, acc = [], 0
    for p in params:
        out.append(acc)
        acc += p.shape[0]
    return out


@fast(60)
@given(case=taylor_case(), mode=st.sampled_from(["square", "abs"]), dtype=st.sampled_from(DTYPES))
def test_taylor_scores(impl, case, mode, dtype):
    layers, offsets, num_channels, natural = case
    pspecs, gspecs = build(layers, 2)
    P = [s.on("cpu", dtype) for s in pspecs]
    G = [s.on("cpu", dtype) for s in gspecs]
    got = impl.ops.taylor_scores([s.on(impl.device, dtype) for s in pspecs],
                                 [s.on(impl.device, dtype) for s in gspecs], offsets, num_channels, mode)
    assert got.dtype == F32 and got.shape == (natural,) and got.device.type == impl.device.type
    offs = offsets if offsets is not None else default_offsets(P)
    if impl.compiled:
        expected = R.taylor_scores(P, G, offsets, num_channels, mode)
        bound = taylor_bound(P, G, offs, natural, mode)
    else:
        raw = brute_taylor_raw(P, G, offs, natural)
        expected = raw.square() if mode == "square" else raw.abs()
        bound = taylor_bound(P, G, offs, natural, mode, lanes=1)
    assert_bounded(got, expected, bound, f"{impl.name} taylor {mode} {dtype}")


@fast(30)
@given(case=taylor_case(), mode=st.sampled_from(["square", "abs"]),
       steps=st.lists(st.sampled_from(["ok", "ok", "inf", "-inf", "nan"]), min_size=1, max_size=4),
       inv_scale=st.sampled_from([None, 1.0, 2.0 ** -10, 0.3]), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_taylor_accumulate(impl, case, mode, steps, inv_scale, dtype, seed):
    layers, offsets, num_channels, natural = case
    pspecs, gspecs = build(layers, 2)
    P = [s.on("cpu", dtype) for s in pspecs]
    G = [s.on("cpu", dtype) for s in gspecs]
    offs = offsets if offsets is not None else default_offsets(P)
    gen = torch.Generator().manual_seed(seed)
    acc = torch.rand(natural, generator=gen).to(impl.device)
    skipped = torch.tensor([3], dtype=torch.int64, device=impl.device)
    expected_acc = acc.cpu().double()
    bound = torch.zeros(natural, dtype=torch.float64)
    expected_skipped = 3
    inv = None if inv_scale is None else torch.tensor([inv_scale], dtype=F32)
    inv_value = 1.0 if inv is None else float(inv)
    for step in steps:
        grads = [g.clone() for g in G]
        nonempty = [i for i, g in enumerate(grads) if g.numel()]
        if step != "ok" and nonempty:
            i = nonempty[int(torch.randint(len(nonempty), (), generator=gen))]
            flat = grads[i].view(-1) if grads[i].is_contiguous() else None
            if flat is None:
                grads[i] = grads[i].contiguous()
                flat = grads[i].view(-1)
            flat[int(torch.randint(flat.numel(), (), generator=gen))] = float(step)
        else:
            step = "ok"
        impl.ops.taylor_accumulate_(acc, skipped, [p.to(impl.device) for p in P], [g.to(impl.device) for g in grads],
                                    offsets, mode, None if inv is None else inv.to(impl.device))
        if step == "ok":
            if impl.compiled:
                raw = R.taylor_scores(P, grads, offs, natural, "abs").double() * abs(inv_value)
                b = taylor_bound(P, grads, offs, natural, mode, inv_value)
            else:
                raw = brute_taylor_raw(P, grads, offs, natural).abs() * abs(inv_value)
                b = taylor_bound(P, grads, offs, natural, mode, inv_value, lanes=1)
            expected_acc += raw.square() if mode == "square" else raw
            bound += b + 2 * U * expected_acc.abs()  # plus the rounding of the float32 add
        else:
            expected_skipped += 1
    assert int(skipped) == expected_skipped, f"{impl.name}: skipped {int(skipped)} != {expected_skipped} ({steps})"
    assert skipped.shape == (1,) and skipped.dtype == torch.int64
    assert_bounded(acc, expected_acc, bound, f"{impl.name} accumulate {mode} {dtype} {steps}")


def test_taylor_many_tiny_layers_and_huge_layer(impl):
    gen = torch.Generator().manual_seed(11)
    sizes = torch.randint(1, 4, (2000, 2), generator=gen).tolist()
    P = [torch.randn(r, c, generator=gen) for r, c in sizes] + [torch.randn(512, 128, 8, 8, generator=gen)]
    G = [torch.randn(p.shape, generator=gen) * 1e-2 for p in P]
    offs = default_offsets(P)
    n = offs[-1] + P[-1].shape[0]
    got = impl.ops.taylor_scores([p.to(impl.device) for p in P], [g.to(impl.device) for g in G])
    if impl.compiled:
        expected, bound = R.taylor_scores(P, G), taylor_bound(P, G, offs, n)
    else:
        expected, bound = brute_taylor_raw(P, G, offs, n).square(), taylor_bound(P, G, offs, n, lanes=1)
    assert_bounded(got, expected, bound, impl.name)


# -- group_reduce -------------------------------------------------------------------------------

@st.composite
def group_case(draw):
    n = draw(st.integers(1, 60))
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=20))
    kind = draw(st.sampled_from(["normal", "ties", "special"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return n, sizes, kind, seed


def brute_group_reduce(scores, ptr, idx, reduce):
    s, ptr, idx = scores.tolist(), ptr.tolist(), idx.tolist()
    out = []
    for g in range(len(ptr) - 1):
        xs = [s[i] for i in idx[ptr[g]:ptr[g + 1]]]
        if reduce == "max":
            out.append(math.nan if any(math.isnan(x) for x in xs) else max(xs))
        else:
            tot = math.fsum(xs) if all(math.isfinite(x) for x in xs) else sum(xs)
            out.append(tot / len(xs) if reduce == "mean" else tot)
    return torch.tensor(out, dtype=torch.float64)


@fast(60)
@given(case=group_case(), reduce=st.sampled_from(["sum", "mean", "max"]))
def test_group_reduce(impl, case, reduce):
    n, sizes, kind, seed = case
    gen = torch.Generator().manual_seed(seed)
    scores = values((n,), kind, gen, 10.0)
    ptr = torch.tensor([0] + sizes).cumsum(0)
    idx = torch.randint(n, (sum(sizes),), generator=gen)
    got = impl.ops.group_reduce(scores.to(impl.device), ptr.to(impl.device), idx.to(impl.device), reduce)
    assert got.dtype == F32 and got.shape == (len(sizes),)
    expected = R.group_reduce(scores, ptr, idx, reduce) if impl.compiled else brute_group_reduce(scores, ptr, idx, reduce)
    if reduce == "max":
        torch.testing.assert_close(got.cpu(), expected.float(), rtol=0, atol=0, equal_nan=True)
    else:
        mag = brute_group_reduce(scores.abs(), ptr, idx, "sum").nan_to_num(0.0, 0.0, 0.0)
        length = torch.tensor(sizes, dtype=torch.float64)
        bound = (length + 2) * 2 * U * mag / (length if reduce == "mean" else 1)
        assert_bounded(got, expected, bound, f"{impl.name} {reduce}")


# -- global_masks ---------------------------------------------------------------------------------

def brute_global_masks(scores: list[float], ratios: list[float], sizes, keep):
    """Python sorting of (score, index): the contract written out."""
    n = len(scores)
    key = {i: (scores[i] + 0.0, i) for i in range(n)}  # + 0.0: -0.0 -> +0.0
    protected = set()
    if sizes is not None:
        start = 0
        for s in sizes:
            members = sorted(range(start, start + s), key=key.get, reverse=True)
            protected.update(members[:keep])
            start += s
    removable = sorted((i for i in range(n) if i not in protected), key=key.get)
    masks, thresholds = [], []
    for p in ratios:
        k = math.floor(p * n + 0.5)
        if k > len(removable):
            return None
        removed = removable[:k]
        gone = set(removed)
        masks.append([i not in gone for i in range(n)])
        thresholds.append(max((scores[i] for i in removed), default=-math.inf))
    return torch.tensor(masks, dtype=torch.bool).reshape(len(ratios), n), torch.tensor(thresholds, dtype=F32)


INTERESTING_RATIOS = [0.0, 0.05, 0.1, 0.25, 0.3, 0.35, 0.45, 0.5, 0.65, 0.7, 0.9, 0.95, 0.999]


@st.composite
def masks_case(draw, max_n=300):
    n = draw(st.integers(0, max_n))
    kind = draw(st.sampled_from(["normal", "ties", "ties", "special_no_nan", "few"]))
    seed = draw(st.integers(0, 2**31 - 1))
    ratio = st.one_of(st.sampled_from(INTERESTING_RATIOS), st.floats(0.0, 0.9999))  # < 1 in float32 too
    ratios = draw(st.lists(ratio, min_size=1, max_size=9))
    ratio_form = draw(st.sampled_from(["list", "float32", "float64", "scalar"]))
    if draw(st.booleans()) and n:
        cuts = sorted(draw(st.lists(st.integers(0, n), max_size=12)))
        sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
        keep = draw(st.integers(0, 3))
    else:
        sizes, keep = None, draw(st.sampled_from([0, 1, 5]))
    return n, kind, seed, ratios, ratio_form, sizes, keep


def make_scores(n, kind, gen):
    if kind == "special_no_nan":
        x = values((n,), "special", gen)
        return torch.where(torch.isnan(x), torch.full_like(x, 3.0), x)
    if kind == "few":  # a few distinct random values: ties between non-trivial floats
        pool = torch.randn(3, generator=gen)
        return pool[torch.randint(3, (n,), generator=gen)]
    return values((n,), kind, gen)


def ratio_arg(ratios, form, device="cpu"):
    if form == "float32":
        return torch.tensor(ratios, dtype=F32, device=device)
    if form == "float64":
        return torch.tensor(ratios, dtype=torch.float64)
    if form == "scalar":
        return ratios[0]
    return list(ratios)


def stored(ratios, form):
    """The ratio values the operator must see (a float32 tensor holds rounded values)."""
    if form == "float32":
        return torch.tensor(ratios, dtype=F32).double().tolist()
    return ratios[:1] if form == "scalar" else list(ratios)


@fast(120)
@given(case=masks_case())
def test_global_masks(impl, case):
    n, kind, seed, ratios, form, sizes, keep = case
    gen = torch.Generator().manual_seed(seed)
    scores = make_scores(n, kind, gen)
    ps = stored(ratios, form)
    expected = brute_global_masks(scores.tolist(), ps, sizes, keep)
    call = lambda: impl.ops.global_masks(scores.to(impl.device), ratio_arg(ratios, form), sizes, keep)  # noqa: E731
    if expected is None:  # some k exceeds the unprotected count: both must refuse, naming it
        with pytest.raises(ValueError, match=r"removes \d+ of \d+ channels, but min_keep=\d+ per segment leaves only"):
            call()
        return
    masks, thr = call()
    assert masks.device.type == impl.device.type
    ref = R.global_masks(scores, ratio_arg(ratios, form), sizes, keep) if impl.compiled else expected
    assert_exact(masks, ref[0], f"{impl.name} masks")
    assert_exact(thr, ref[1], f"{impl.name} thresholds")
    # invariants: exactly k removed per ratio; threshold = max removed score; nested masks (the
    # protected set does not depend on the ratio, so a larger k removes a superset: always);
    # kept counts per segment add up to N - k.
    masks, thr = masks.cpu(), thr.cpu()
    ks = [math.floor(p * n + 0.5) for p in ps]
    assert (~masks).sum(1).tolist() == ks
    for j, k in enumerate(ks):
        removed = scores[~masks[j]]
        assert thr[j] == (removed.max() if k else -math.inf)
        if k and k < n and (sizes is None or keep == 0):  # protected channels may score lower
            assert bool((scores[masks[j]] >= thr[j]).all())
    order = sorted(range(len(ks)), key=ks.__getitem__)
    for a, b in zip(order, order[1:]):
        assert bool((masks[b] <= masks[a]).all()), "masks are not nested"
    if sizes is not None:
        counts = impl.ops.layer_counts(masks.to(impl.device), sizes).cpu()
        assert counts.sum(1).tolist() == [n - k for k in ks]
        assert bool((counts >= torch.tensor(sizes).clamp(max=keep)).all()), "min_keep violated"
        # the one-call form gives the same three results
        both = impl.ops.global_masks_counts(scores.to(impl.device), ratio_arg(ratios, form), sizes, keep)
        for got, want, what in zip(both, (masks, thr, counts), ("masks", "thresholds", "counts")):
            assert_exact(got.cpu(), want, f"{impl.name} global_masks_counts {what}")


@fast(20)
@given(n=st.integers(1, 200), nans=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_global_masks_nan_count(impl, n, nans, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, generator=gen)
    where = torch.randperm(n, generator=gen)[:nans]
    scores[where] = math.nan
    count = where.numel()
    with pytest.raises(ValueError, match=rf"scores contain {count} NaN value{'s' if count != 1 else ''};"):
        impl.ops.global_masks(scores.to(impl.device), [0.1, 0.5])


@pytest.mark.parametrize("kind", ["few", "normal"])
def test_global_masks_large(impl, kind):
    # 2^20 scores (radix-select territory on the GPU), many ties, 9 ratios; oracle: numpy lexsort.
    n = 1 << 20
    gen = torch.Generator().manual_seed(5)
    scores = (torch.randint(-50, 50, (n,), generator=gen).float() / 8) if kind == "few" else torch.randn(n, generator=gen)
    scores[::1000] = -0.0
    ratios = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9]
    masks, thr = impl.ops.global_masks(scores.to(impl.device), ratios)
    s = (scores + 0.0).numpy()
    order = np.lexsort((np.arange(n), s))
    for j, p in enumerate(ratios):
        k = math.floor(p * n + 0.5)
        expected = torch.ones(n, dtype=torch.bool)
        expected[torch.from_numpy(order[:k])] = False
        assert_exact(masks[j], expected, f"{impl.name} ratio {p}")
        assert thr[j].item() == (float(s[order[k - 1]]) if k else -math.inf)


def test_global_masks_many_segments(impl):
    # 2000 layers of 1..8 channels, min_keep 2, against the reference (the brute force is slow here)
    gen = torch.Generator().manual_seed(9)
    sizes = torch.randint(0, 9, (2000,), generator=gen).tolist()
    n = sum(sizes)
    scores = torch.randint(0, 20, (n,), generator=gen).float()
    ratios = torch.tensor([0.1, 0.3, 0.5], dtype=F32)
    masks, thr = impl.ops.global_masks(scores.to(impl.device), ratios, sizes, 2)
    if impl.compiled:
        ref_masks, ref_thr = R.global_masks(scores, ratios, sizes, 2)
    else:
        ref_masks, ref_thr = brute_global_masks(scores.tolist(), ratios.double().tolist(), sizes, 2)
    assert_exact(masks, ref_masks, impl.name)
    assert_exact(thr, ref_thr, impl.name)
    counts = impl.ops.layer_counts(masks, sizes).cpu()
    assert bool((counts >= torch.tensor(sizes).clamp(max=2)).all())


# -- layer_counts / mask_overlap ---------------------------------------------------------------

@fast(40)
@given(m=st.integers(1, 4), sizes=st.lists(st.integers(0, 70), min_size=1, max_size=30), seed=st.integers(0, 2**31 - 1),
       layout=st.sampled_from(["contiguous", "strided", "one_row"]))
def test_counts_and_overlap(impl, m, sizes, seed, layout):
    n = sum(sizes)
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(m, 2 * n, generator=gen) < 0.5
    b = torch.rand(m, 2 * n, generator=gen) < 0.3
    view = {"contiguous": lambda t: t[:, :n], "strided": lambda t: t[:, ::2], "one_row": lambda t: t[0, :n]}[layout]
    da, db = view(a.to(impl.device)), view(b.to(impl.device))
    ca, cb = view(a), view(b)
    rows = 1 if layout == "one_row" else m
    counts = impl.ops.layer_counts(da, sizes)
    inter, diff = impl.ops.mask_overlap(da, db, sizes)
    inter_all, diff_all = impl.ops.mask_overlap(da, db)
    if impl.compiled:
        ref_counts = R.layer_counts(ca, sizes)
        ref_inter, ref_diff = R.mask_overlap(ca, cb, sizes)
        ref_inter_all, ref_diff_all = R.mask_overlap(ca, cb)
    else:
        ca2, cb2 = ca.reshape(rows, n).tolist(), cb.reshape(rows, n).tolist()
        bounds = [0] + np.cumsum(sizes).tolist()

        def seg(f, x, y):
            return torch.tensor([[sum(f(x[r][i], y[r][i]) for i in range(bounds[s], bounds[s + 1]))
                                  for s in range(len(sizes))] for r in range(rows)], dtype=torch.int64)
        ref_counts = seg(lambda u, v: u, ca2, cb2)
        ref_inter, ref_diff = seg(lambda u, v: u and v, ca2, cb2), seg(lambda u, v: u != v, ca2, cb2)
        ref_inter_all, ref_diff_all = ref_inter.sum(1, keepdim=True), ref_diff.sum(1, keepdim=True)
    for got, ref, what in [(counts, ref_counts, "counts"), (inter, ref_inter, "intersection"), (diff, ref_diff, "differing"),
                           (inter_all, ref_inter_all, "intersection, one segment"), (diff_all, ref_diff_all, "differing, one segment")]:
        assert got.device.type == impl.device.type
        assert_exact(got, ref, f"{impl.name} {what}")
    assert (counts.sum(1).cpu() == ca.reshape(rows, n).sum(1)).all()
