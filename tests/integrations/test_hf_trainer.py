"""EPIPruningCallback inside Hugging Face's Trainer: a small LLaMA-shaped model fine-tuned on
local text (the standard library's pydoc topics) is pruned at an epoch's end by EPI's rule,
with the Trainer's optimizer and scheduler carried on, and keeps training."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from epi_fast.integrations.transformers import EPIPruningCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


class _Windows(torch.utils.data.Dataset):
    """Byte windows of real English text, as a causal LM's inputs and labels."""

    def __init__(self, n=48, length=24):
        from pydoc_data.topics import topics

        data = torch.tensor(list("".join(topics[k] for k in sorted(topics))[:20000].encode("utf-8")), dtype=torch.long)
        g = torch.Generator().manual_seed(0)
        starts = torch.randint(0, len(data) - length, (n,), generator=g)
        self.items = [data[s:s + length] for s in starts.tolist()]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {"input_ids": self.items[i], "labels": self.items[i]}


def _model():
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("criterion", ["l2", "gradient"])
def test_the_trainer_prunes_when_epi_fires_and_keeps_training(criterion, tmp_path):
    model = _model()
    ds = _Windows()
    x = ds[0]["input_ids"][None]
    before = sum(p.numel() for p in model.parameters())
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=6, per_device_train_batch_size=8, learning_rate=3e-3,
        lr_scheduler_type="cosine", logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        max_grad_norm=1.0, disable_tqdm=True, seed=0,
    )
    cb = EPIPruningCallback(0.5, x, criterion=criterion, window=2, patience=1, tau=0.5, deadline_epoch=4)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    trainer.train()
    pruner = cb.pruner
    assert pruner.pruned and pruner.prune_reason in ("epi", "deadline") and pruner.prune_epoch <= 4
    after = sum(p.numel() for p in model.parameters())
    assert after < before
    # The Trainer's own optimizer holds the pruned parameters, with state of their shape.
    inner = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    held = {id(p) for g in inner.param_groups for p in g["params"]}
    assert all(id(p) in held for p in model.parameters())
    q = model.model.layers[0].self_attn.q_proj.weight
    assert inner.state[q]["exp_avg"].shape == q.shape
    logs = trainer.state.log_history
    pruned_at = next(i for i, e in enumerate(logs) if e.get("epi_pruned"))
    assert logs[pruned_at]["params_after"] == after < logs[pruned_at]["params_before"] == before
    losses_after = [e["loss"] for e in logs[pruned_at + 1:] if "loss" in e]
    assert len(losses_after) >= 6 and all(math.isfinite(v) for v in losses_after)
    # The learning rate still follows the cosine schedule after the prune.
    lrs = [e["learning_rate"] for e in logs[pruned_at + 1:] if "learning_rate" in e]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[0]
    assert any(k.startswith("epi/") for e in logs for k in e)
    with torch.no_grad():
        assert model.generate(x[:, :5], max_new_tokens=4, do_sample=False).shape == (1, 9)
