"""Two CPU processes under Lightning's strategy="ddp" with the EPIPruning callback; each rank
writes what it pruned to OUT/rank<r>.json (run by tests/integrations/test_lightning.py)."""

import json
import os
import sys
import warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore")
import lightning.pytorch as pl  # noqa: E402

from epi_fast.integrations.lightning import EPIPruning  # noqa: E402
from epi_fast.models import build_model  # noqa: E402


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = build_model("resnet_small", num_classes=10, in_channels=1)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class _Watch(pl.Callback):
    """At each epoch's start: is the DDP wrapper around the module that is trained now?"""

    def __init__(self):
        self.wrapped = []

    def on_train_epoch_start(self, trainer, pl_module):
        ddp = trainer.strategy.model
        ids = {id(p) for p in pl_module.parameters()}
        self.wrapped.append(isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
                            and {id(p) for p in ddp.module.parameters()} == ids)


def main(out):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:256], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target[:256])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    module = Net()
    cb = EPIPruning(0.5, torch.zeros(1, 1, 8, 8), criterion="gradient", window=2, patience=1, deadline_epoch=2)
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[cb, watch := _Watch()])
    trainer.fit(module, loader)
    rank = trainer.global_rank
    params = [p.detach() for p in module.parameters()]
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({
            "prune_epoch": cb.pruner.prune_epoch, "reason": cb.pruner.prune_reason, "kept": cb.pruner.kept_counts,
            "shapes": [list(p.shape) for p in params], "checksum": float(sum(p.double().sum() for p in params)),
            "wrapped": watch.wrapped,
            "epochs": trainer.current_epoch,
        }, f)


if __name__ == "__main__":
    main(sys.argv[1])
