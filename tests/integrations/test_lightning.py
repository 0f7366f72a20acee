"""The EPIPruning callback inside a Lightning Trainer: gradient accumulation, clipping and
bf16 mixed precision, an EMA pruned alike, EPI logged, and a pruned run resumed from its
checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")

from epi_fast.integrations.lightning import EPIPruning  # noqa: E402
from epi_fast.models import build_model  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _data(n=128, seed=0):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target[:n])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = build_model("resnet_small", num_classes=10, in_channels=1)
        self.taylor_steps = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)}


def _trainer(tmp_path, callbacks, epochs, **kw):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=pl.loggers.CSVLogger(tmp_path),
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=callbacks, **kw)


@pytest.mark.parametrize("criterion", ["gradient", "l2"])
def test_the_callback_prunes_with_accumulation_clipping_bf16_and_an_ema(criterion, tmp_path):
    module = Net()
    x0 = torch.zeros(1, 1, 8, 8)
    ema = torch.optim.swa_utils.AveragedModel(module.net)
    cb = EPIPruning(0.5, x0, ema=ema, criterion=criterion, window=2, patience=1, deadline_epoch=3)
    calls = []
    original = cb.on_before_optimizer_step

    def counting(trainer, pl_module, optimizer):
        calls.append(trainer.global_step)
        return original(trainer, pl_module, optimizer)

    cb.on_before_optimizer_step = counting
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    trainer = _trainer(tmp_path, [cb, ckpt], 5, accumulate_grad_batches=2, gradient_clip_val=0.5,
                       precision="bf16-mixed")
    before = sum(p.numel() for p in module.parameters())
    trainer.fit(module, _data())
    pruner = cb.pruner
    assert pruner.pruned and pruner.prune_epoch <= 3
    assert len(calls) == 5 * 4  # 8 batches per epoch, accumulated by 2: one call per optimizer step
    if criterion == "gradient":
        assert pruner.report()["prune_reason"] in ("epi", "deadline")
    after = sum(p.numel() for p in module.parameters())
    assert after < before
    # The EMA lost the very same neurons and keeps averaging the pruned module.
    assert [p.shape for p in ema.module.parameters()] == [p.shape for p in module.net.parameters()]
    ema.update_parameters(module.net)
    # The optimizer and the scheduler kept working after the prune.
    opt = trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in module.parameters()}
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(0.05 * 0.9 ** 5)
    logged = trainer.logged_metrics
    assert "epi/prune_epoch" in logged or any(k.startswith("epi/") for k in logged)

    # Resume the pruned run from its last checkpoint with a fresh dense module and EMA.
    fresh = Net()
    ema2 = torch.optim.swa_utils.AveragedModel(fresh.net)
    cb2 = EPIPruning(0.5, x0, ema=ema2, criterion=criterion, window=2, patience=1, deadline_epoch=3)
    trainer2 = _trainer(tmp_path, [cb2], 7, accumulate_grad_batches=2, gradient_clip_val=0.5, precision="bf16-mixed")
    trainer2.fit(fresh, _data(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert cb2.pruner.pruned and cb2.pruner.prune_epoch == pruner.prune_epoch
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in module.parameters()]
    assert [p.shape for p in ema2.module.parameters()] == [p.shape for p in module.net.parameters()]
    assert trainer2.current_epoch == 7
    assert math.isfinite(float(trainer2.logged_metrics["loss"]))


def test_two_ddp_processes_prune_alike_and_keep_training(tmp_path):
    """strategy="ddp" on two CPU processes (gloo), launched by Lightning itself from a script."""
    import json
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "lightning_ddp_run.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, script, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    a, b = ranks
    assert a["prune_epoch"] == b["prune_epoch"] is not None and a["kept"] == b["kept"]
    assert a["shapes"] == b["shapes"] and a["checksum"] == pytest.approx(b["checksum"], rel=1e-6)
    # Every epoch, before and after the prune, trains the module DDP wraps.
    assert a["wrapped"] == b["wrapped"] == [True] * 4 and a["epochs"] == 4
