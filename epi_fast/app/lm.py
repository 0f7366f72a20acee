"""`epi-fast train --task lm`: a byte-level LLaMA decoder trained from scratch as a causal
language model, with EPI watching its attention heads and MLP channels.

    epi-fast train --task lm --out runs/lm                  # pydoc_data.topics, llama_tiny
    epi-fast train --task lm --data notes.txt --out runs/notes

- Data (`text_data`): the bytes of the text are the tokens; the last 10% is held out.
- An epoch is `--steps-per-epoch` optimizer steps, each on `--batch-size` windows of
  `--seq-len` + 1 tokens starting at positions drawn uniformly from the training text (seeded
  by `--seed`); the loss is the mean cross entropy of every next-token prediction of the batch.
- After every epoch the validation text is read in consecutive windows of `--seq-len`
  predictions (the last one shorter), so every byte of it but the first is predicted exactly
  once, from at most `--seq-len` bytes of context within the validation text. The perplexity
  per byte token is exp of the mean cross entropy of those predictions; `val_top1` the fraction
  of them whose most likely token is the right byte.
- AdamW (betas 0.9, 0.95; no decay on norm scales and biases), linear warm-up then cosine to
  zero per step, gradients clipped to norm `GRAD_CLIP` (after `pruner.accumulate()`, which
  sees them unclipped).
- EPI (`EPIPruner`) tracks the heads (whole key/value groups) and MLP channels of every layer,
  each kind ranked on its own at the ratio; when it fires the model is pruned in place, the
  optimizer's moments are cut with it, and training goes on with the smaller network.

The run directory is the classification job's (`cli._Run`), with `perplexity.png` beside
`epi_curve.png` and the language-model keys in summary.json (`LMRun.task_summary`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Dict, Optional

from .cli import UsageError, _Run, _default_threads, _ratio_key, _seed_everything, make_pruner

__all__ = ["GRAD_CLIP", "EVAL_BATCH", "validate_lm", "LMSetup", "LMRun", "validation_windows", "evaluate_lm"]

GRAD_CLIP = 1.0
EVAL_BATCH = 32  # validation windows per forward pass


def validate_lm(args) -> None:
    """The checks of `--task lm` that need no data (usage errors)."""
    from ..models import LM_MODEL_NAMES
    from .text_data import BUILTIN_TEXT, read_text_file

    if args.model not in LM_MODEL_NAMES:
        raise UsageError(f"--model {args.model}: --task lm trains one of {', '.join(LM_MODEL_NAMES)}")
    if args.data != BUILTIN_TEXT:
        try:
            read_text_file(args.data)  # read again when the run starts; here only for the one-line error
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--data: {e}") from None


def validation_windows(val, seq_len: int):
    """(inputs, targets) pairs covering the validation tokens: consecutive windows of seq_len
    predictions, the last one shorter; every token but the first is a target exactly once."""
    out = []
    n = int(val.numel())
    for start in range(0, n - 1, seq_len):
        stop = min(start + seq_len, n - 1)
        out.append((val[start:stop], val[start + 1:stop + 1]))
    return out


def evaluate_lm(model, windows, device, amp_dtype=None, batch: int = EVAL_BATCH, job=None) -> Dict[str, float]:
    """Mean cross entropy, perplexity and top-1 of every prediction of `windows`. With `job` (a
    distributed run), each rank evaluates every WORLD_SIZE-th chunk of windows and the sums are
    added over the ranks; every rank runs as many forwards as the rank with the most (FSDP's
    forward is a collective), the missing ones on a stand-in chunk, uncounted."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    full = [w for w in windows if w[0].numel() == windows[0][0].numel()]
    rest = [w for w in windows if w[0].numel() != windows[0][0].numel()]
    chunks = [full[i:i + batch] for i in range(0, len(full), batch)] + [[w] for w in rest]
    stand_ins = 0
    if job is not None:
        from .dist_job import max_over_ranks

        mine = chunks[job.rank::job.world_size]
        stand_ins = max_over_ranks(job, len(mine)) - len(mine)
        chunks = mine
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for chunk in chunks:
            x = torch.stack([w[0] for w in chunk]).to(device=device, dtype=torch.long)
            y = torch.stack([w[1] for w in chunk]).to(device=device, dtype=torch.long)
            logits = model(input_ids=x, use_cache=False).logits.float()
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").double()
            correct += (logits.argmax(-1) == y).sum()
            count += y.numel()
        for _ in range(stand_ins):
            model(input_ids=windows[0][0][None].to(device=device, dtype=torch.long), use_cache=False)
    model.train(was_training)
    if job is not None:
        total_nll, total_correct, count = job.all_sum([float(nll), int(correct), count])
        nll, correct, count = torch.tensor(total_nll, dtype=torch.float64), int(total_correct), int(count)
    loss = float(nll) / max(1, count)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "top1": int(correct) / max(1, count), "predictions": count}


class LMSetup:
    """Everything an lm run needs, built before anything is written (as `cli._Setup`)."""

    def __init__(self, args, job=None, narrow=None, pruner_state=None) -> None:
        import torch

        from ..models import build_model
        from ..models.transformer import BYTE_VOCAB
        from .text_data import load_text
        from .training import make_optimizer, make_scheduler

        self.job = job
        torch.set_num_threads(args.threads or _default_threads(args.data, args.task))
        _seed_everything(args.seed)
        self.device = device = job.device if job is not None else torch.device(args.device)
        try:
            self.data = data = load_text(args.data, args.seq_len)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--data: {e}") from None
        self.vocab_size = BYTE_VOCAB
        self.model_kwargs = {"vocab_size": BYTE_VOCAB, "max_position_embeddings": args.seq_len}
        try:
            model = build_model(args.model, **self.model_kwargs)
        except (KeyError, ValueError) as e:
            raise UsageError(f"--model: {e.args[0] if e.args else e}") from None
        if narrow is not None:
            narrow(model)
        model = model.to(device)
        # Under --distributed every rank draws the same global batch of windows from the same
        # generator and trains on its slice of it (`local_batch`): the data of the one-process run.
        self.train_sampler = None
        self.rows = slice(None)
        if job is not None:
            from .dist_job import per_rank_batch

            b = per_rank_batch(args.batch_size, job.world_size, UsageError)
            self.rows = slice(job.rank * b, (job.rank + 1) * b)
        self.model = job.wrap(model) if job is not None else model
        self.train_tokens = data.train.to(device)
        self.val_windows = validation_windows(data.val, args.seq_len)
        self.generator = torch.Generator().manual_seed(args.seed)
        self.data_generator = self.generator  # fixes the windows drawn: part of a checkpoint
        self.steps_per_epoch = args.steps_per_epoch
        self.optimizer = make_optimizer(self.model, args.lr, args.momentum, args.weight_decay, args.optimizer)
        self.scheduler = make_scheduler(self.optimizer, args.epochs, self.steps_per_epoch, args.warmup_epochs)
        self.amp_dtype = None
        self.scaler = None
        if args.amp:
            self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
            self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        # One window: the structure trace, and FLOPs per token (divided by its tokens).
        self.example = torch.zeros(1, args.seq_len, dtype=torch.long, device=device)
        self.pruner = make_pruner(args, self.model, self.optimizer, self.example, state=pruner_state)
        self.dense_report = self.pruner.report() if not self.pruner.pruned else None

    def batch(self, batch_size: int, seq_len: int):
        """`batch_size` windows of seq_len + 1 tokens at random starts of the training text."""
        import torch

        starts = torch.randint(0, int(self.train_tokens.numel()) - seq_len, (batch_size,), generator=self.generator)
        idx = starts.to(self.train_tokens.device)[:, None] + torch.arange(seq_len + 1, device=self.train_tokens.device)
        return self.train_tokens[idx].long()

    def local_batch(self, batch_size: int, seq_len: int):
        """This rank's rows of the global `batch` (all of them in one process)."""
        return self.batch(batch_size, seq_len)[self.rows]


class LMRun(_Run):
    """One lm run in its run directory (see `cli._Run`)."""

    clip_norm = GRAD_CLIP

    def __init__(self, args, setup: LMSetup) -> None:
        super().__init__(args, setup)
        self.initial: Optional[Dict[str, float]] = None

    # -- summary ---------------------------------------------------------------------------

    def _tokens_per_second(self, after: bool) -> Optional[float]:
        pe = self.s.pruner.prune_epoch
        if after and pe is None:
            return None
        chosen = [r for r in self.metrics if (pe is not None and r["epoch"] > pe) == after]
        seconds = sum(r["train_loop_seconds"] for r in chosen)
        return sum(r["tokens"] for r in chosen) / seconds if chosen and seconds > 0 else None

    def _per_token(self, flops: Optional[int]) -> Optional[float]:
        return None if flops is None else flops / self.args.seq_len

    def task_summary(self) -> Dict[str, Any]:
        args, s = self.args, self.s
        last = self.metrics[-1] if self.metrics else None
        at_prune = next((r for r in self.metrics if r.get("pruned_now")), None)
        out = {
            "top1_final": None if last is None else last["val_top1"],
            "val_perplexity_final": None if last is None else last["val_perplexity"],
            "val_loss_final": None if last is None else last["val_loss"],
            "val_perplexity_initial": None if self.initial is None else self.initial["perplexity"],
            "val_perplexity_before_prune": None if at_prune is None else at_prune["val_perplexity_before_prune"],
            "val_perplexity_after_prune": None if at_prune is None else at_prune["val_perplexity"],
            "tokens_per_second_before": self._tokens_per_second(after=False),
            "tokens_per_second_after": self._tokens_per_second(after=True),
            "seq_len": args.seq_len,
            "steps_per_epoch": args.steps_per_epoch,
            "tokens_per_step": args.batch_size * args.seq_len,
            "vocab_size": s.vocab_size,
            "train_split_tokens": int(s.data.train.numel()),
            "val_split_tokens": int(s.data.val.numel()),
            "val_predictions": sum(int(y.numel()) for _, y in s.val_windows),
            "grad_clip": GRAD_CLIP,
        }
        rep = s.pruner.report() if s.pruner.pruned else s.dense_report
        out["flops_per_token_before"] = self._per_token(rep["flops_before"])
        out["flops_per_token_after"] = self._per_token(rep["flops_after"])
        return out

    # -- training --------------------------------------------------------------------------

    def train(self) -> None:
        s = self.s
        if self.initial is None:  # a resumed run has it from its checkpoint
            self.initial = self.evaluate_lm(s.model)
        super().train()

    def task_checkpoint(self) -> Dict[str, Any]:
        return {"initial": self.initial}

    def load_task_checkpoint(self, ckpt: Dict[str, Any]) -> None:
        self.initial = ckpt.get("initial")

    def _epoch(self, epoch: int) -> None:
        import torch
        import torch.nn.functional as F
        from tqdm import tqdm

        from ..policy.decision import late_prune_message

        args, s = self.args, self.s
        model, optimizer, pruner, device, amp_dtype = s.model, s.optimizer, s.pruner, s.device, s.amp_dtype
        t_epoch = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(total=s.steps_per_epoch, desc=f"epoch {epoch}/{args.epochs}", leave=False, file=sys.stderr,
                   disable=args.no_progress or not self.writes, dynamic_ncols=True, unit="step")
        try:
            for _ in range(s.steps_per_epoch):
                xy = s.local_batch(args.batch_size, args.seq_len)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = model(input_ids=xy[:, :-1], use_cache=False).logits
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), xy[:, 1:].reshape(-1))
                self._step(loss)
                loss_sum += loss.detach().float()
                bar.update(1)
            train_loss = float(loss_sum) / s.steps_per_epoch  # the one host sync of the epoch
            train_loop_seconds = time.perf_counter() - t_epoch
        finally:
            bar.close()
        if self.job is not None:  # each rank's mean over equal slices: their mean is the batch's
            train_loss = self.summed(train_loss)[0] / self.job.world_size
        lr_now = optimizer.param_groups[0]["lr"]
        before = self.evaluate_lm(model)
        pruned_now = pruner.epoch_end()
        val = before
        if pruned_now:
            model = self.after_prune()
            val = self.evaluate_lm(model)
        epi_now = {_ratio_key(r): (h[epoch] if len(h) > epoch else None) for r, h in pruner.epi_history.items()}
        params = sum(p.numel() for p in model.parameters())
        tokens = s.steps_per_epoch * args.batch_size * args.seq_len
        record: Dict[str, Any] = {
            "epoch": epoch,
            "lr": lr_now,
            "loss": train_loss,
            # In the epoch that prunes, the validation figures are the pruned network's, right
            # after the prune; the dense network's at the end of that epoch are "..._before_prune".
            "val_loss": val["loss"],
            "val_perplexity": val["perplexity"],
            "val_top1": val["top1"],
            "epi": epi_now,
            "pruned": pruner.pruned,
            "pruned_now": pruned_now,
            "params": params,
            "tokens": tokens,
            "train_loop_seconds": train_loop_seconds,
            "tokens_per_second": tokens / train_loop_seconds if train_loop_seconds > 0 else None,
            "seconds": time.perf_counter() - t_epoch,
        }
        if pruned_now:
            record.update(val_loss_before_prune=before["loss"], val_perplexity_before_prune=before["perplexity"],
                          val_top1_before_prune=before["top1"])
        self.metrics.append(record)
        self.train_seconds = time.perf_counter() - self._t_start
        target = epi_now[_ratio_key(args.ratio)]
        ppl = f"val ppl {val['perplexity']:.3f}"
        if pruned_now:
            ppl = f"val ppl {before['perplexity']:.3f} -> {val['perplexity']:.3f} (right after the prune)"
        line = (f"epoch {epoch:3d}/{args.epochs}  loss {train_loss:.4f}  {ppl}  "
                f"EPI {'-' if target is None else f'{target:.4f}'}  params {params}  {record['tokens_per_second']:.0f} tok/s")
        if pruned_now:
            line += f"  <- pruned ({pruner.prune_reason})"
        self.say(line)
        if pruned_now:
            late = late_prune_message(pruner.prune_epoch, args.epochs)
            if late:
                self.warnings.append(late)
                self.say(f"epi-fast train: warning: {late}", sys.stderr)
        if not math.isfinite(train_loss):
            raise RuntimeError(f"training diverged at epoch {epoch} (loss is {train_loss}); try a smaller --lr")
        self.end_epoch()

    def evaluate_lm(self, model) -> Dict[str, float]:
        s = self.s
        if self.job is None:
            return evaluate_lm(model, s.val_windows, s.device, s.amp_dtype)
        return evaluate_lm(self.eval_module(model), s.val_windows, s.device, s.amp_dtype, job=self.job)

    # -- the end ---------------------------------------------------------------------------

    def write_task_plots(self) -> None:
        from . import report as rep

        rep.plot_lm_curves(
            self._path("perplexity.png"), self.metrics, self.initial, self.s.pruner.prune_epoch,
            title=f"{self.args.model} on {self.s.data.name if self.args.data == 'pydoc-topics' else os.path.basename(self.args.data)}",
        )

    def final_line(self, summary: Dict[str, Any]) -> str:
        pe = "never" if summary["prune_epoch"] is None else f"after epoch {summary['prune_epoch']} ({summary['prune_reason']})"
        tps = [summary["tokens_per_second_before"], summary["tokens_per_second_after"]]
        speed = " -> ".join("-" if v is None else f"{v:.0f}" for v in tps)
        return (f"pruned {pe}; params {summary['params_before']} -> {summary['params_after']}; "
                f"val perplexity {summary['val_perplexity_final']:.3f}; tokens/s {speed}; {summary['train_seconds']:.1f} s")
