"""The optimizer survives the prune: one step on the pruned model equals, on the surviving
entries, the step of the dense model whose pruned channels are inert (see test_surgery).

Why this holds: an inert channel contributes exactly zero to the forward pass (also in training
mode: a BN with gamma = beta = 0 outputs 0 whatever its batch statistics), so the surviving
entries get the same gradients; SGD (momentum, Nesterov, weight decay) and Adam/AdamW (with
amsgrad) update every entry from its own value, gradient and state only.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from epi_fast.layout import group_layout
from epi_fast.models import build_model
from epi_fast.surgery import prune_with_masks
from test_surgery import make_inert, masks_for, pruned_channels, randomize

# Adam's eps is raised from 1e-8: some BN biases here have a true gradient of 0 that float32
# computes as +-1e-9 noise in different orders in the two models, and Adam would normalise
# that noise into lr-sized steps that differ between them.
OPTIMIZERS = {
    "sgd": lambda groups: torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda groups: torch.optim.Adam(groups, lr=1e-2, amsgrad=True, eps=1e-3),
    "adamw": lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.05, eps=1e-3),
}


def param_groups(model):
    """Two groups with different hyper-parameters (no weight decay on BN), as in real recipes."""
    bn = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters(recurse=False)]
    ids = {id(p) for p in bn}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest}, {"params": bn, "weight_decay": 0.0, "lr": 0.02}]


def kept_index(layout, keep, dense):
    """For each parameter name: per-dim index of the surviving entries."""
    removed = pruned_channels(layout, keep)
    modules = dict(dense.named_modules())

    def kept(name, kind, size):
        gone = removed.get((name, kind))
        mask = torch.ones(size, dtype=torch.bool)
        if gone is not None:
            mask[gone] = False
        return mask.nonzero().flatten()

    out = {}
    for name, m in modules.items():
        if isinstance(m, nn.BatchNorm2d):
            idx = kept(name, "bn", m.num_features)
            out[f"{name}.weight"] = out[f"{name}.bias"] = (idx,)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            rows = kept(name, "out", m.weight.shape[0])
            depthwise = isinstance(m, nn.Conv2d) and m.groups > 1
            cols = torch.arange(m.weight.shape[1]) if depthwise else kept(name, "in", m.weight.shape[1])
            out[f"{name}.weight"] = (rows, cols)
            out[f"{name}.bias"] = (rows,)
    return out


def select(t, idx):
    for dim, i in enumerate(idx):
        t = t.index_select(dim, i)
    return t


def train_steps(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("model_name", ["resnet_small", "mobilenet_small", "densenet_small"])
def test_step_after_prune_equals_masked_dense_step(model_name, opt_name):
    torch.manual_seed(0)
    model = randomize(build_model(model_name, in_channels=1)).train()
    opt = OPTIMIZERS[opt_name](param_groups(model))
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(4)]
    train_steps(model, opt, batches[:3])  # state from earlier steps

    layout = group_layout(model, batches[0][0])
    _, keep = masks_for(layout, 0.5, seed=1)
    dense = make_inert(copy.deepcopy(model), pruned_channels(layout, keep))
    dense_opt = OPTIMIZERS[opt_name](param_groups(dense))
    dense_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict shares tensors (step)
    index = kept_index(layout, keep, dense)
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]

    prune_with_masks(model, layout, keep, optimizer=opt)

    # The optimizer holds exactly the new parameters, with its hyper-parameters.
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == hyper
    held = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in held} == {id(p) for p in model.parameters()} and len(held) == len(set(map(id, held)))
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())

    train_steps(model, opt, batches[3:])
    train_steps(dense, dense_opt, batches[3:])

    dense_params = dict(dense.named_parameters())
    for name, p in model.named_parameters():
        q = dense_params[name]
        torch.testing.assert_close(p.detach(), select(q.detach(), index[name]), rtol=1e-5, atol=1e-6, msg=name)
        state, dense_state = opt.state[p], dense_opt.state[q]
        assert state.keys() == dense_state.keys(), name
        for key, value in state.items():
            want = dense_state[key]
            if want.shape == q.shape:
                want = select(want, index[name])
            torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6, msg=f"{name} {key}")


def test_gradients_are_sliced_with_the_parameters():
    torch.manual_seed(0)
    model = randomize(build_model("resnet_small"))
    x = torch.randn(2, 3, 8, 8)
    model(x).sum().backward()
    layout = group_layout(model, x)
    _, keep = masks_for(layout, 0.4)
    index = kept_index(layout, keep, copy.deepcopy(model))
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    prune_with_masks(model, layout, keep)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape
        assert torch.equal(p.grad, select(grads[name], index[name])), name


def test_frozen_parameters_stay_frozen_and_need_not_be_in_the_optimizer():
    model = build_model("resnet_small")
    model.stem[0][0].weight.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 8, 8)
    layout = group_layout(model, x)
    keep = masks_for(layout, 0.5)[1]
    prune_with_masks(model, layout, keep, optimizer=opt)
    assert not model.stem[0][0].weight.requires_grad
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])


def test_state_of_unexpected_shape_is_refused_before_pruning():
    model = build_model("resnet_small")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 8, 8)
    opt.state[model.stem[0][0].weight]["factor"] = torch.zeros(3, 2)
    layout = group_layout(model, x)
    before = [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="cannot remap optimizer state 'factor'"):
        prune_with_masks(model, layout, masks_for(layout, 0.5)[1], optimizer=opt)
    assert [p.shape for p in model.parameters()] == before
