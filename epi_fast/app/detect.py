"""`epi-fast train --task detection`: a torchvision detector with a ResNet backbone trained from
scratch on the embedded digit canvases (or a COCO-format folder), with EPI watching its
backbone, neck and head channels.

    epi-fast train --task detection --out runs/det                  # SSD on ResNet-18, digit canvases
    epi-fast train --task detection --data my_coco --out runs/mine  # a COCO-format folder

- Data: `epi_fast.detection.digit_detection_splits` (train, val and test canvases drawn from
  disjoint handwritten digits; `DIGIT_OPTIONS` are this job's sizes) or, with `--data PATH`, a
  COCO-format folder (`epi_fast.detection.load_coco_folder`): its `train`, `val` and, if there,
  `test` splits (without `test`, the final mAP is measured on `val`, and summary.json says so);
  a folder holding one set is divided by `--seed` into `COCO_SPLIT` fractions of its images.
- An epoch is one pass over the training images in batches of `--batch-size` (the order drawn
  from `--seed`); the loss is the detector's own (SSD: smooth-L1 box regression plus cross
  entropy with 3:1 hard negative mining; RetinaNet: focal loss plus L1), summed.
- After every epoch the detector runs on the validation images in eval mode and the COCO
  evaluation (torchmetrics / pycocotools, `evaluate_map`) scores it: `val_map50` (mAP@0.5) and
  `val_map` (mAP@[.5:.95]); at the end the test split gives `map50_final` and `map_final`.
- SGD with Nesterov momentum (AdamW with `--optimizer adamw`), no weight decay on norm scales and
  biases, linear warm-up then cosine to zero per step (`training.make_optimizer`,
  `make_scheduler`, as in classification).
- EPI (`EPIPruner`), magnitude criterion by default, window `scaled_window(--epochs)` by default
  (App. E's 50 of 800 epochs, at least 2); the class and box output layers are never pruned. When
  it fires the detector is pruned in place, the optimizer's momentum cut with it, and training
  goes on with the smaller network.

The run directory is the classification job's (`cli._Run`), with `map.png` (mAP against epoch,
the prune marked) beside `epi_curve.png` and the detection keys in summary.json
(`DetectionRun.task_summary`). docs/DETECTION.md has the defaults and their measurements.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Dict, Optional

from .cli import UsageError, _default_threads, _inside, _ratio_key, _Run, _seed_everything, make_pruner

__all__ = ["DIGIT_DATA", "DIGIT_OPTIONS", "COCO_SPLIT", "EVAL_BATCH", "validate_detection",
           "DetectionData", "load_detection_data", "DetectionSetup", "DetectionRun"]

# The name of the embedded data set on the command line (`--data`, the default).
DIGIT_DATA = "digit-canvases"
# The embedded set as this job draws it: `digit_detection_splits`' own defaults (64 x 64
# canvases of one to four digits, 12 to 24 px), with fewer validation images than the library's
# 300 so that the per-epoch evaluation stays a few seconds (docs/DETECTION.md).
DIGIT_OPTIONS: Dict[str, Any] = {"size": 64, "n_train": 1200, "n_val": 200, "n_test": 500}
# A COCO folder without splits: the fractions of its images (in a seeded order) for train, val, test.
COCO_SPLIT = (0.7, 0.15, 0.15)
EVAL_BATCH = 64  # images per forward pass in evaluation


def validate_detection(args) -> None:
    """The checks of `--task detection` that need no data (usage errors)."""
    from ..detection.models import DETECTOR_NAMES

    if args.model not in DETECTOR_NAMES:
        raise UsageError(f"--model {args.model}: --task detection trains one of {', '.join(DETECTOR_NAMES)}")
    if getattr(args, "distributed", None) is not None:
        raise UsageError("--distributed is not supported with --task detection; train it in one process")
    if args.input_size is not None:
        if len(args.input_size) > 2 or (len(args.input_size) == 2 and args.input_size[0] != args.input_size[1]):
            raise UsageError(f"--input-size with --task detection takes one side S (square inputs), got "
                             f"{' '.join(map(str, args.input_size))}")
        if args.input_size[0] < 32:
            raise UsageError(f"--input-size {args.input_size[0]}: a detector's input side must be at least 32 "
                             "(the ResNet's stride)")
    if args.data != DIGIT_DATA:
        if not os.path.isdir(args.data):
            raise UsageError(f"--data {args.data}: no such folder (a COCO-format folder, or {DIGIT_DATA})")
        if _inside(args.out, args.data):
            raise UsageError(f"--out {args.out} is inside --data {args.data}: the run would become part of the data set")


class DetectionData:
    """The three splits of a detection run, the number of classes (with the background) and the
    image side the detector is built for."""

    def __init__(self, name: str, train, val, test, test_split: str, image_size: Optional[int]) -> None:
        self.name = name
        self.train, self.val, self.test = train, val, test
        self.test_split = test_split
        self.num_classes = train.num_classes
        self.class_names = train.class_names
        self.image_size = image_size


def _square_side(dataset) -> Optional[int]:
    size = dataset.image_size
    return size[0] if size is not None and size[0] == size[1] else None


def _seeded_parts(dataset, seed: int):
    """A one-set COCO folder divided into train, val and test by `seed` (`COCO_SPLIT`)."""
    import torch

    from ..detection.data import DetectionSubset

    n = len(dataset)
    if n < 3:
        raise UsageError(f"--data: {dataset.name} holds {n} image(s); dividing it into train, val and test needs at "
                         "least 3 (or give the folder train and val splits)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(COCO_SPLIT[1] * n))
    n_test = max(1, round(COCO_SPLIT[2] * n))
    n_train = n - n_val - n_test
    cuts = (order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:])
    return [DetectionSubset(dataset, sorted(part), f"{dataset.name}[{name}]")
            for part, name in zip(cuts, ("train", "val", "test"))]


def load_detection_data(args) -> DetectionData:
    """The run's splits: the embedded digit canvases, or the COCO-format folder `--data`. A
    folder that is not a readable COCO data set is a usage error naming the problem."""
    from ..detection import CocoFormatError, coco_splits, digit_detection_splits, load_coco_folder

    if args.data == DIGIT_DATA:
        train, val, test = digit_detection_splits(seed=args.seed, **DIGIT_OPTIONS)
        return DetectionData(DIGIT_DATA, train, val, test, "test", DIGIT_OPTIONS["size"])
    try:
        splits = coco_splits(args.data)
        if splits:
            missing = [s for s in ("train", "val") if s not in splits]
            if missing:
                raise UsageError(f"--data {args.data} holds the splits {', '.join(splits)}, but no "
                                 f"{' and no '.join(missing)}: a run trains on train and validates on val")
            parts = [load_coco_folder(args.data, split=s) for s in ("train", "val")]
            test_split = "test" if "test" in splits else "val"
            parts.append(load_coco_folder(args.data, split="test") if test_split == "test" else parts[1])
            for name, part in zip(("val", "test"), parts[1:]):
                if part.category_ids != parts[0].category_ids:
                    raise UsageError(f"--data {args.data}: the {name} split's categories (ids {list(part.category_ids)}) "
                                     f"are not the train split's ({list(parts[0].category_ids)})")
        else:
            whole = load_coco_folder(args.data)
            parts, test_split = _seeded_parts(whole, args.seed), "test"
    except (FileNotFoundError, CocoFormatError) as e:
        raise UsageError(f"--data: {e}") from None
    sides = {_square_side(p) for p in parts}
    side = sides.pop() if len(sides) == 1 else None
    return DetectionData(f"coco:{os.path.basename(os.path.normpath(args.data))}", *parts, test_split, side)


class DetectionSetup:
    """Everything a detection run needs, built before anything is written (as `cli._Setup`)."""

    def __init__(self, args, job=None, narrow=None, pruner_state=None) -> None:
        import torch
        from torch.utils.data import DataLoader

        from ..detection import build_detector, detection_collate
        from .training import make_optimizer, make_scheduler

        self.job = job
        torch.set_num_threads(args.threads or _default_threads(args.data, args.task))
        _seed_everything(args.seed)
        self.device = device = torch.device(args.device)
        self.data = data = load_detection_data(args)
        side = args.input_size[0] if args.input_size else data.image_size
        if side is None:
            raise UsageError(f"--data {args.data}: its images are not all one square size; give the detector's input "
                             "side with --input-size S (images are resized to S x S)")
        self.image_size = side
        self.model_kwargs = {"num_classes": data.num_classes, "image_size": side}
        try:
            model = build_detector(args.model, **self.model_kwargs)
        except (TypeError, ValueError) as e:
            raise UsageError(f"--model {args.model}: {e}") from None
        if narrow is not None:
            narrow(model)
        self.model = model.to(device)
        self.generator = torch.Generator().manual_seed(args.seed)
        self.data_generator = self.generator  # fixes the batch order: part of a checkpoint
        self.train_sampler = None
        self.train_loader = DataLoader(data.train, batch_size=args.batch_size, shuffle=True,
                                       drop_last=len(data.train) > args.batch_size, generator=self.generator,
                                       num_workers=args.workers, collate_fn=detection_collate)
        self.val_loader = DataLoader(data.val, batch_size=EVAL_BATCH, num_workers=args.workers,
                                     collate_fn=detection_collate)
        self.test_loader = DataLoader(data.test, batch_size=EVAL_BATCH, num_workers=args.workers,
                                      collate_fn=detection_collate)
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer = make_optimizer(self.model, args.lr, args.momentum, args.weight_decay, args.optimizer)
        self.scheduler = make_scheduler(self.optimizer, args.epochs, self.steps_per_epoch, args.warmup_epochs)
        self.amp_dtype = None
        self.scaler = None
        if args.amp:
            self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
            self.scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
        # A batch tensor: the layout traces the detector from batched images to its head outputs.
        self.example = torch.zeros(1, 3, side, side, device=device)
        self.pruner = make_pruner(args, self.model, self.optimizer, self.example, state=pruner_state)
        self.dense_report = self.pruner.report() if not self.pruner.pruned else None


def _map_pair(result: Dict[str, Any]) -> Dict[str, float]:
    # A measure with no ground truth to count is None (evaluate_map); 0 for a split's overall
    # mAP only when it holds no box at all, which a run's splits never do.
    return {"map50": result["map_50"] if result["map_50"] is not None else 0.0,
            "map": result["map"] if result["map"] is not None else 0.0}


class DetectionRun(_Run):
    """One detection run in its run directory (see `cli._Run`)."""

    def __init__(self, args, setup: DetectionSetup) -> None:
        super().__init__(args, setup)
        self.test_map: Optional[Dict[str, float]] = None

    # -- summary ---------------------------------------------------------------------------

    def task_summary(self) -> Dict[str, Any]:
        s = self.s
        last = self.metrics[-1] if self.metrics else None
        at_prune = next((r for r in self.metrics if r.get("pruned_now")), None)
        return {
            "top1_final": None,  # classification's measure; a detector's is mAP
            "map50_final": None if self.test_map is None else self.test_map["map50"],
            "map_final": None if self.test_map is None else self.test_map["map"],
            "test_split": s.data.test_split,
            "val_map50_final": None if last is None else last["val_map50"],
            "val_map_final": None if last is None else last["val_map"],
            "val_map50_before_prune": None if at_prune is None else at_prune["val_map50_before_prune"],
            "val_map50_after_prune": None if at_prune is None else at_prune["val_map50"],
            "image_size": s.image_size,
            "num_classes": s.data.num_classes,
            "class_names": list(s.data.class_names),
            "train_images": len(s.data.train),
            "val_images": len(s.data.val),
            "test_images": len(s.data.test),
            "steps_per_epoch": s.steps_per_epoch,
        }

    # -- training --------------------------------------------------------------------------

    def evaluate_map(self, model, loader) -> Dict[str, float]:
        from ..detection import evaluate_map

        return _map_pair(evaluate_map(model, loader, self.s.device, self.s.amp_dtype))

    def train(self) -> None:
        super().train()
        self.test_map = self.evaluate_map(self.s.model, self.s.test_loader)

    def _epoch(self, epoch: int) -> None:
        import torch
        from tqdm import tqdm

        from ..policy.decision import late_prune_message

        args, s = self.args, self.s
        model, optimizer, pruner, device, amp_dtype = s.model, s.optimizer, s.pruner, s.device, s.amp_dtype
        t_epoch = time.perf_counter()
        model.train()
        sums: Dict[str, Any] = {}
        bar = tqdm(total=s.steps_per_epoch, desc=f"epoch {epoch}/{args.epochs}", leave=False, file=sys.stderr,
                   disable=args.no_progress, dynamic_ncols=True, unit="step")
        try:
            for images, targets in s.train_loader:
                images = [im.to(device) for im in images]
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    losses = model(images, targets)
                loss = sum(v.float() for v in losses.values())
                self._step(loss)
                for key, value in losses.items():  # device-side sums: no host sync per step
                    sums[key] = sums.get(key, 0) + value.detach().float()
                bar.update(1)
        finally:
            bar.close()
        steps = s.steps_per_epoch
        parts = {f"loss_{k}": float(v) / steps for k, v in sorted(sums.items())}
        train_loss = sum(parts.values())
        train_loop_seconds = time.perf_counter() - t_epoch
        lr_now = optimizer.param_groups[0]["lr"]
        t_eval = time.perf_counter()
        before = self.evaluate_map(model, s.val_loader)
        pruned_now = pruner.epoch_end()
        val = before
        if pruned_now:
            model = self.after_prune()
            val = self.evaluate_map(model, s.val_loader)
        eval_seconds = time.perf_counter() - t_eval
        epi_now = {_ratio_key(r): (h[epoch] if len(h) > epoch else None) for r, h in pruner.epi_history.items()}
        params = sum(p.numel() for p in model.parameters())
        record: Dict[str, Any] = {
            "epoch": epoch,
            "lr": lr_now,
            "loss": train_loss,
            **parts,
            # In the epoch that prunes, the validation mAPs are the pruned detector's, right after
            # the prune; the dense detector's at the end of that epoch are "..._before_prune".
            "val_map50": val["map50"],
            "val_map": val["map"],
            "epi": epi_now,
            "pruned": pruner.pruned,
            "pruned_now": pruned_now,
            "params": params,
            "train_loop_seconds": train_loop_seconds,
            "eval_seconds": eval_seconds,
            "seconds": time.perf_counter() - t_epoch,
        }
        if pruned_now:
            record.update(val_map50_before_prune=before["map50"], val_map_before_prune=before["map"])
        self.metrics.append(record)
        self.train_seconds = time.perf_counter() - self._t_start
        target = epi_now[_ratio_key(args.ratio)]
        shown = f"val mAP@0.5 {val['map50']:.3f}"
        if pruned_now:
            shown = f"val mAP@0.5 {before['map50']:.3f} -> {val['map50']:.3f} (right after the prune)"
        line = (f"epoch {epoch:3d}/{args.epochs}  loss {train_loss:.4f}  {shown}  mAP {val['map']:.3f}  "
                f"EPI {'-' if target is None else f'{target:.4f}'}  params {params}  {record['seconds']:.0f} s")
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

    # -- the end ---------------------------------------------------------------------------

    def write_task_plots(self) -> None:
        from . import report as rep

        rep.plot_map_curves(self._path("map.png"), self.metrics, self.s.pruner.prune_epoch, self.test_map,
                            test_split=self.s.data.test_split,
                            title=f"{self.args.model} on {self.s.data.name}, ratio {self.args.ratio:g}")

    def final_line(self, summary: Dict[str, Any]) -> str:
        pe = "never" if summary["prune_epoch"] is None else f"after epoch {summary['prune_epoch']} ({summary['prune_reason']})"
        return (f"pruned {pe}; params {summary['params_before']} -> {summary['params_after']}; "
                f"{summary['test_split']} mAP@0.5 {summary['map50_final']:.3f}, mAP@[.5:.95] {summary['map_final']:.3f}; "
                f"{summary['train_seconds']:.1f} s")

