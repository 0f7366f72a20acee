"""Mean average precision of a detector, computed by torchmetrics' `MeanAveragePrecision` with
the pycocotools backend (the COCO evaluation itself, not a re-implementation).

`map_50` is mAP at IoU 0.5 (PASCAL VOC's measure, the supplementary's); `map` is COCO's
mAP@[.5:.95], the mean over the ten IoU thresholds 0.50, 0.55, ..., 0.95; both use COCO's
101-point interpolated precision and at most 100 detections per image, averaged over the
classes that have a ground-truth box. A measure without any ground truth to count (no large
objects, say) is None rather than torchmetrics' -1.

The measure is local to the process: in a distributed run nothing is exchanged, so one rank
may evaluate alone (each rank that evaluates scores the images it was given).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import torch

__all__ = ["evaluate_map", "map_from_predictions", "MAP_KEYS"]

# The measures returned, in torchmetrics' names.
MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100")


def _metric():
    try:
        from torchmetrics.detection import MeanAveragePrecision
        import pycocotools  # noqa: F401  (torchmetrics imports it only when computing)
    except ImportError as e:
        raise ImportError(f"mAP needs torchmetrics and pycocotools ({e}); install them with "
                          f"pip install 'epi_fast[detection]'") from None
    # sync_on_compute=False: torchmetrics would otherwise gather every process's images in
    # compute() whenever torch.distributed is initialised, and a run that evaluates on rank 0
    # alone would wait there for the other ranks forever.
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools", sync_on_compute=False)


def _check(kind: str, i: int, d, keys: Sequence[str]) -> Dict[str, torch.Tensor]:
    if not isinstance(d, dict):
        raise TypeError(f"{kind} {i} must be a dict with {', '.join(keys)}, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{kind} {i} has no {', '.join(missing)} (it needs {', '.join(keys)})")
    boxes = torch.as_tensor(d["boxes"]).detach().to("cpu", torch.float32)
    n = boxes.shape[0] if boxes.ndim == 2 else -1
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        if boxes.numel() == 0:
            boxes, n = boxes.reshape(0, 4), 0
        else:
            raise ValueError(f"{kind} {i}: boxes must be [N, 4] xyxy, got shape {list(boxes.shape)}")
    out = {"boxes": boxes}
    for k in keys[1:]:
        v = torch.as_tensor(d[k]).detach().to("cpu")
        if v.shape != (n,):
            raise ValueError(f"{kind} {i}: {k} must have shape [{n}] (one per box), got {list(v.shape)}")
        out[k] = v.to(torch.int64) if k == "labels" else v.to(torch.float32)
    return out


def _result(metric) -> Dict[str, Optional[float]]:
    raw = metric.compute()
    out: Dict[str, Optional[float]] = {}
    for key in MAP_KEYS:
        v = float(raw[key])
        out[key] = None if v < 0 else v  # torchmetrics' -1: nothing to measure
    return out


def map_from_predictions(predictions: Sequence[dict], targets: Sequence[dict]) -> Dict[str, Optional[float]]:
    """mAP of `predictions` (per image: boxes [M, 4] xyxy, scores [M], labels [M]) against
    `targets` (per image: boxes [N, 4] xyxy, labels [N]), one entry per image in both."""
    predictions, targets = list(predictions), list(targets)
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets; give one of each per image")
    if not targets:
        raise ValueError("no images to evaluate")
    metric = _metric()
    metric.update([_check("prediction", i, p, ("boxes", "scores", "labels")) for i, p in enumerate(predictions)],
                  [_check("target", i, t, ("boxes", "labels")) for i, t in enumerate(targets)])
    result = _result(metric)
    result["images"] = len(targets)
    return result


def _batches(loader: Iterable):
    for b, batch in enumerate(loader):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise TypeError(f"batch {b} of the loader must be (images, targets); build the loader with "
                            f"collate_fn=detection_collate")
        images, targets = batch
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, dict) for t in targets):
            raise TypeError(f"batch {b}: targets must be a list of dicts (one per image), got "
                            f"{type(targets).__name__}; build the loader with collate_fn=detection_collate")
        if len(images) != len(targets):
            raise ValueError(f"batch {b} holds {len(images)} images and {len(targets)} targets")
        yield list(images), list(targets)


def evaluate_map(model: torch.nn.Module, loader: Iterable, device="cpu",
                 autocast_dtype: Optional[torch.dtype] = None) -> Dict[str, Optional[float]]:
    """mAP of a torchvision-style detector on `loader`'s batches (`(list of images, list of
    targets)`, as `detection_collate` makes them).

    The model runs in eval mode without gradients (its mode is restored afterwards) and must
    return one dict per image with boxes, scores and labels. `autocast_dtype` (e.g.
    torch.bfloat16) runs it under autocast on `device`'s type. Returns `MAP_KEYS` (fractions
    in [0, 1], or None) and `images`, the number evaluated.
    """
    device = torch.device(device)
    metric = _metric()
    was_training = model.training
    model.eval()
    count = 0
    try:
        with torch.no_grad():
            for images, targets in _batches(loader):
                images = [im.to(device) for im in images]
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    outputs = model(images)
                if not isinstance(outputs, (list, tuple)) or len(outputs) != len(images):
                    raise TypeError(f"the model must return one dict of boxes, scores and labels per image in "
                                    f"eval mode, got {type(outputs).__name__}")
                first = count
                preds = [_check("prediction", first + k, o, ("boxes", "scores", "labels"))
                         for k, o in enumerate(outputs)]
                truth = [_check("target", first + k, t, ("boxes", "labels")) for k, t in enumerate(targets)]
                metric.update(preds, truth)
                count += len(images)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the loader yielded no images to evaluate")
    result = _result(metric)
    result["images"] = count
    return result
