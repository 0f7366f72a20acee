"""A user's own COCO-format detection folder: the loader and a writer.

Two layouts are read (docs/DETECTION.md):

- one set: ``ROOT/annotations.json`` with the images under ``ROOT/images/``
  (`load_coco_folder(ROOT)`); what `save_coco_folder` writes;
- splits: ``ROOT/annotations/instances_SPLIT.json`` (COCO's own naming) with the images under
  ``ROOT/images/SPLIT/``, ``ROOT/SPLIT/`` or ``ROOT/images/`` (the first that exists), or
  ``ROOT/SPLIT/annotations.json`` with ``ROOT/SPLIT/images/`` (one set per split folder)
  (`load_coco_folder(ROOT, split="train")`; `coco_splits(ROOT)` lists them).

An annotation file holds ``images`` (id, file_name relative to the image folder, width,
height), ``annotations`` (id, image_id, category_id, bbox [x, y, w, h] in pixels, optional
iscrowd) and ``categories`` (id, name). Category ids map to contiguous labels 1..K in
ascending id order (`category_ids[k - 1]` is label k's id), so that the train and val files of
one folder give the same labels whenever they list the same categories. Crowd annotations
(iscrowd = 1) mark regions, not objects: they are left out of the targets, as torchvision's
detection references do, and counted in `crowd_ignored`.

The whole file is checked before a data set is returned: every problem is a `CocoFormatError`
(a ValueError) of one line naming the file and the image or annotation id.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._io import is_temporary_of, write_bytes, write_json
from .._version import __version__
from .data import DetectionDataset

__all__ = ["CocoDetectionDataset", "CocoFormatError", "load_coco_folder", "save_coco_folder", "coco_splits",
           "ANNOTATIONS_FILE", "IMAGES_DIR", "EXPORT_MARKER"]

ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
# Written first into a folder that save_coco_folder fills; what overwrite=True looks for.
EXPORT_MARKER = ".epi_fast_coco_export"
_MARKER_FORMAT = "epi_fast.coco_export/1"
_SPLIT_FILE = re.compile(r"instances_(.+)\.json")
_EXPORT_IMAGE = re.compile(r"\d{6,}\.png")


class CocoFormatError(ValueError):
    """A COCO-format folder or annotation file that cannot be used as it is."""


class CocoDetectionDataset(DetectionDataset):
    """A COCO-format annotation file and its images, read lazily (one image per item).

    Beside the `DetectionDataset` items and names: `annotation_file`, `image_dir`,
    `image_ids` and `file_names` (in the file's order), `category_ids` (label k is category
    `category_ids[k - 1]`), `label_of_category` (the inverse mapping), `crowd_ignored`.
    """

    def __init__(self, annotation_file: str, image_dir: str, image_ids: Sequence[int], file_names: Sequence[str],
                 sizes: Sequence[Tuple[int, int]], targets, category_ids: Sequence[int], class_names: Sequence[str],
                 crowd_ignored: int, name: str):
        distinct = set(sizes)
        super().__init__(targets, class_names, next(iter(distinct)) if len(distinct) == 1 else None, name)
        self.annotation_file = annotation_file
        self.image_dir = image_dir
        self.image_ids = tuple(image_ids)
        self.file_names = tuple(file_names)
        self.sizes = tuple(sizes)  # (height, width) as the annotations declare them
        self.category_ids = tuple(category_ids)
        self.label_of_category = {c: k + 1 for k, c in enumerate(self.category_ids)}
        self.crowd_ignored = int(crowd_ignored)

    def image_path(self, i: int) -> str:
        return os.path.join(self.image_dir, self.file_names[self._index(i)])

    def image(self, i: int) -> torch.Tensor:
        from PIL import Image

        j = self._index(i)
        path = self.image_path(j)
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise CocoFormatError(f"{self.annotation_file}: image {self.image_ids[j]}: {path} is not a readable "
                                  f"image ({type(e).__name__}: {e})") from None
        height, width = self.sizes[j]
        if rgb.shape[:2] != (height, width):
            raise CocoFormatError(f"{self.annotation_file}: image {self.image_ids[j]}: {path} is {rgb.shape[1]}x"
                                  f"{rgb.shape[0]} pixels, but the annotations say {width}x{height}")
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


# -- finding the files --------------------------------------------------------------------------

def coco_splits(path: str) -> List[str]:
    """The split names a folder holds (sorted): ``annotations/instances_SPLIT.json`` files and
    ``SPLIT/annotations.json`` folders."""
    path = os.fspath(path)
    found = set()
    ann_dir = os.path.join(path, "annotations")
    if os.path.isdir(ann_dir):
        for entry in os.listdir(ann_dir):
            m = _SPLIT_FILE.fullmatch(entry)
            if m and os.path.isfile(os.path.join(ann_dir, entry)):
                found.add(m.group(1))
    if os.path.isdir(path):
        for entry in os.listdir(path):
            if entry != "annotations" and os.path.isfile(os.path.join(path, entry, ANNOTATIONS_FILE)):
                found.add(entry)
    return sorted(found)


def _locate(path: str, split: Optional[str]) -> Tuple[str, str]:
    """(annotation file, image folder) of a folder and split, or a one-line error."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"COCO folder {path} does not exist")
    if not os.path.isdir(path):
        raise CocoFormatError(f"{path} is not a folder; a COCO-format data set is a folder holding "
                              f"{ANNOTATIONS_FILE} and {IMAGES_DIR}/ (or annotations/instances_SPLIT.json)")
    if split is None:
        ann = os.path.join(path, ANNOTATIONS_FILE)
        if os.path.isfile(ann):
            return ann, os.path.join(path, IMAGES_DIR)
        splits = coco_splits(path)
        if splits:
            raise CocoFormatError(f"{path} has no {ANNOTATIONS_FILE} but holds the splits {', '.join(splits)}: "
                                  f"name one (split=...)")
        raise FileNotFoundError(f"{path} holds no COCO annotations: expected {ANNOTATIONS_FILE} with {IMAGES_DIR}/, "
                                f"or annotations/instances_SPLIT.json")
    if not isinstance(split, str) or not split or os.sep in split or split in (".", ".."):
        raise CocoFormatError(f"split must be a plain folder or file name such as 'train', got {split!r}")
    instances = os.path.join(path, "annotations", f"instances_{split}.json")
    folder_ann = os.path.join(path, split, ANNOTATIONS_FILE)
    if os.path.isfile(instances) and os.path.isfile(folder_ann):
        raise CocoFormatError(f"{path} holds split {split!r} twice ({instances} and {folder_ann}); keep one")
    if os.path.isfile(folder_ann):
        return folder_ann, os.path.join(path, split, IMAGES_DIR)
    if os.path.isfile(instances):
        candidates = [os.path.join(path, IMAGES_DIR, split), os.path.join(path, split), os.path.join(path, IMAGES_DIR)]
        for folder in candidates:
            if os.path.isdir(folder):
                return instances, folder
        raise CocoFormatError(f"{instances}: no image folder for split {split!r}; expected one of "
                              f"{', '.join(candidates)}")
    splits = coco_splits(path)
    raise FileNotFoundError(f"{path} has no split {split!r} (annotations/instances_{split}.json or "
                            f"{split}/{ANNOTATIONS_FILE}); it holds {', '.join(splits) if splits else 'no splits'}")


# -- checking the annotation file ---------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _whole(v) -> Optional[int]:
    """An integer, or a float that holds one (some exporters write 640.0), else None."""
    if _is_int(v):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _read_json(file: str):
    with open(file, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise CocoFormatError(f"{file} is empty")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{file} is not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{file} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def _lists(file: str, data) -> Tuple[list, list, list]:
    if not isinstance(data, dict):
        raise CocoFormatError(f"{file} must hold a JSON object with 'images', 'annotations' and 'categories', "
                              f"got a {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise CocoFormatError(f"{file} has no {' / '.join(repr(k) for k in missing)} key "
                              f"(a COCO file holds 'images', 'annotations' and 'categories')")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{file}: {key!r} must be a list, got a {type(data[key]).__name__}")
    for key in ("categories", "images", "annotations"):
        if not data[key]:
            raise CocoFormatError(f"{file} has no {key} (its {key!r} list is empty)")
    return data["images"], data["annotations"], data["categories"]


def _entry(file: str, kind: str, k: int, item, keys: Sequence[str]):
    """The id of list entry k, after checking it is an object with `keys` and an integer id."""
    if not isinstance(item, dict):
        raise CocoFormatError(f"{file}: {kind} entry {k} must be an object, got a {type(item).__name__}")
    ident = item.get("id")
    where = f"{kind} {ident}" if _is_int(ident) else f"{kind} entry {k}"
    missing = [key for key in keys if key not in item]
    if missing:
        raise CocoFormatError(f"{file}: {where} has no {' / '.join(repr(m) for m in missing)} key")
    if not _is_int(ident):
        raise CocoFormatError(f"{file}: {kind} entry {k} has id {ident!r}; ids must be integers")
    return int(ident)


def _categories(file: str, categories: list) -> Tuple[List[int], List[str]]:
    names: Dict[int, str] = {}
    for k, c in enumerate(categories):
        cid = _entry(file, "category", k, c, ("id", "name"))
        if cid in names:
            raise CocoFormatError(f"{file}: category id {cid} appears twice")
        if not isinstance(c["name"], str):
            raise CocoFormatError(f"{file}: category {cid} has name {c['name']!r}; names must be strings")
        names[cid] = c["name"]
    ids = sorted(names)
    return ids, [names[c] for c in ids]


def _images(file: str, images: list, image_dir: str, verify: bool):
    out = []
    seen = set()
    for k, im in enumerate(images):
        iid = _entry(file, "image", k, im, ("id", "file_name", "width", "height"))
        if iid in seen:
            raise CocoFormatError(f"{file}: image id {iid} appears twice")
        seen.add(iid)
        width, height = _whole(im["width"]), _whole(im["height"])
        if width is None or height is None or width < 1 or height < 1:
            raise CocoFormatError(f"{file}: image {iid} has width {im['width']!r} and height {im['height']!r}; "
                                  f"both must be positive integers")
        name = im["file_name"]
        norm = os.path.normpath(name) if isinstance(name, str) and name else ""
        if not norm or os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
            raise CocoFormatError(f"{file}: image {iid} has file_name {name!r}; it must be a path inside "
                                  f"the image folder {image_dir}")
        full = os.path.join(image_dir, norm)
        if not os.path.isfile(full):
            raise CocoFormatError(f"{file}: image {iid}: the image file {full} does not exist")
        if verify:
            _verify_image(file, iid, full, width, height)
        out.append((iid, norm, width, height))
    return out


def _verify_image(file: str, iid: int, full: str, width: int, height: int) -> None:
    # PIL reads only the header here, so checking every image costs little.
    from PIL import Image

    try:
        with Image.open(full) as im:
            size = im.size
    except (OSError, ValueError) as e:
        raise CocoFormatError(f"{file}: image {iid}: {full} is not a readable image "
                              f"({type(e).__name__}: {e})") from None
    if size != (width, height):
        raise CocoFormatError(f"{file}: image {iid}: {full} is {size[0]}x{size[1]} pixels, but the annotations "
                              f"say {width}x{height}")


def _box(file: str, aid: int, iid: int, bbox, width: int, height: int) -> Tuple[float, float, float, float]:
    where = f"{file}: annotation {aid} (image {iid})"
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bbox):
        raise CocoFormatError(f"{where}: bbox must be four numbers [x, y, width, height], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise CocoFormatError(f"{where}: bbox {bbox!r} holds a non-finite number")
    if w <= 0 or h <= 0:
        raise CocoFormatError(f"{where}: bbox {bbox!r} has a non-positive width or height")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise CocoFormatError(f"{where}: bbox {bbox!r} (x, y, width, height) lies outside the {width}x{height} image")
    return x, y, x + w, y + h


def _id_list(ids: Sequence[int], shown: int = 12) -> str:
    text = ", ".join(map(str, ids[:shown]))
    return text + (f", ... ({len(ids)} in all)" if len(ids) > shown else "")


def load_coco_folder(path: str, split: Optional[str] = None, verify_images: bool = True) -> CocoDetectionDataset:
    """Read a COCO-format folder (layouts in the module text) into a `CocoDetectionDataset`.

    Every entry of the annotation file is checked, every image file must exist, and with
    `verify_images` (default) every image's header must be readable and match the declared
    width and height, all before the data set is returned. Problems raise `CocoFormatError`
    (a ValueError) naming the file and the image or annotation id; a folder or split that is
    not there raises FileNotFoundError.
    """
    path = os.fspath(path)
    file, image_dir = _locate(path, split)
    images, annotations, categories = _lists(file, _read_json(file))
    category_ids, class_names = _categories(file, categories)
    label_of = {c: k + 1 for k, c in enumerate(category_ids)}
    entries = _images(file, images, image_dir, verify_images)
    index_of = {iid: k for k, (iid, _, _, _) in enumerate(entries)}
    boxes: List[List[Tuple[float, float, float, float]]] = [[] for _ in entries]
    labels: List[List[int]] = [[] for _ in entries]
    seen = set()
    crowd = 0
    for k, a in enumerate(annotations):
        aid = _entry(file, "annotation", k, a, ("id", "image_id", "category_id", "bbox"))
        if aid in seen:
            raise CocoFormatError(f"{file}: annotation id {aid} appears twice")
        seen.add(aid)
        iid, cid = a["image_id"], a["category_id"]
        if not _is_int(iid) or iid not in index_of:
            raise CocoFormatError(f"{file}: annotation {aid} refers to image {iid!r}, which is not in 'images'")
        if not _is_int(cid) or cid not in label_of:
            raise CocoFormatError(f"{file}: annotation {aid} (image {iid}) has category_id {cid!r}, which is not "
                                  f"in 'categories' (ids {_id_list(category_ids)})")
        j = index_of[iid]
        box = _box(file, aid, iid, a["bbox"], entries[j][2], entries[j][3])
        iscrowd = a.get("iscrowd", 0)
        if not _is_int(iscrowd) or iscrowd not in (0, 1):
            raise CocoFormatError(f"{file}: annotation {aid} (image {iid}) has iscrowd {iscrowd!r}; expected 0 or 1")
        if iscrowd == 1:
            crowd += 1
            continue
        boxes[j].append(box)
        labels[j].append(label_of[cid])
    targets = [{"boxes": torch.tensor(b, dtype=torch.float64).reshape(-1, 4).to(torch.float32),
                "labels": torch.tensor(lab, dtype=torch.int64)} for b, lab in zip(boxes, labels)]
    name = os.path.basename(os.path.normpath(path)) + (f"/{split}" if split else "")
    return CocoDetectionDataset(
        file, image_dir, [e[0] for e in entries], [e[1] for e in entries], [(e[3], e[2]) for e in entries],
        targets, category_ids, class_names, crowd, f"coco:{name}")


# -- writing ------------------------------------------------------------------------------------

def _export_marker(path: str) -> bool:
    marker = os.path.join(path, EXPORT_MARKER)
    if not os.path.isfile(marker) or os.path.islink(marker):
        return False
    try:
        with open(marker, "rb") as f:
            data = json.loads(f.read(1 << 16).decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == _MARKER_FORMAT


def _export_files(path: str) -> Tuple[List[str], List[str]]:
    """(files an earlier export wrote, entries it did not write) in folder `path`."""
    ours, foreign = [], []
    top_known = (EXPORT_MARKER, ANNOTATIONS_FILE)
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if entry == IMAGES_DIR and os.path.isdir(full) and not os.path.islink(full):
            for sub in sorted(os.listdir(full)):
                f = os.path.join(full, sub)
                if (_EXPORT_IMAGE.fullmatch(sub) or _image_temporary(sub)) and os.path.isfile(f) \
                        and not os.path.islink(f):
                    ours.append(f)
                else:
                    foreign.append(os.path.join(IMAGES_DIR, sub))
        elif (entry in top_known or any(is_temporary_of(entry, n) for n in top_known)) and os.path.isfile(full) \
                and not os.path.islink(full):
            ours.append(full)
        else:
            foreign.append(entry)
    return ours, foreign


def _image_temporary(entry: str) -> bool:
    """A temporary file that an interrupted atomic write of an exported image leaves."""
    m = re.fullmatch(r"\.(\d{6,}\.png)\.[A-Za-z0-9_]+\.tmp", entry)
    return bool(m) and is_temporary_of(entry, m.group(1))


def _prepare_folder(path: str, overwrite: bool) -> None:
    if not os.path.lexists(path):
        os.makedirs(path)
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise FileExistsError(f"{path} exists and is not a folder; save_coco_folder writes a new or empty folder")
    if not os.listdir(path):
        return
    if not _export_marker(path):
        raise FileExistsError(f"{path} is not empty and was not written by save_coco_folder; "
                              f"choose a new or empty folder")
    if not overwrite:
        raise FileExistsError(f"{path} holds an earlier export; pass overwrite=True to replace it")
    ours, foreign = _export_files(path)
    if foreign:
        raise FileExistsError(f"{path} holds an earlier export and files it did not write "
                              f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); nothing was replaced")
    # The marker goes last, so an interrupted clean-up still reads as the tool's folder.
    marker = os.path.join(path, EXPORT_MARKER)
    for f in ours:
        if f != marker:
            os.unlink(f)
    os.unlink(marker)


def _png(image: torch.Tensor) -> bytes:
    from PIL import Image

    pixels = image.detach().to("cpu", torch.float32).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    if pixels.shape[0] == 3 and torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[0], pixels[2]):
        im = Image.fromarray(pixels[0].numpy(), mode="L")  # grey: a third of the bytes
    elif pixels.shape[0] == 3:
        im = Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), mode="RGB")
    else:
        im = Image.fromarray(pixels[0].numpy(), mode="L")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _checked_targets(dataset: DetectionDataset):
    """Every target, checked against the annotation rules before anything is written."""
    out = []
    for i in range(len(dataset)):
        t = dataset.target(i)
        boxes, labels = t["boxes"], t["labels"]
        if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != (boxes.shape[0],):
            raise ValueError(f"{dataset.name} image {i}: boxes must be [N, 4] with N labels, got "
                             f"{list(boxes.shape)} and {list(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > len(dataset.class_names)):
            raise ValueError(f"{dataset.name} image {i}: labels must be in 1..{len(dataset.class_names)}, got "
                             f"{labels.tolist()}")
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        if boxes.numel() and (not torch.isfinite(boxes).all() or (w <= 0).any() or (h <= 0).any()
                              or (boxes[:, :2] < 0).any()):
            raise ValueError(f"{dataset.name} image {i}: boxes must be finite xyxy with positive size inside the "
                             f"image, got {boxes.tolist()}")
        out.append(t)
    return out


def _inside(inner: str, outer: str) -> bool:
    inner, outer = os.path.realpath(inner), os.path.realpath(outer)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def save_coco_folder(dataset: DetectionDataset, path: str, overwrite: bool = False) -> str:
    """Write `dataset` as a COCO-format folder: ``path/annotations.json`` and
    ``path/images/000001.png``, ... (grey images as 8-bit grey PNG, others RGB), which
    `load_coco_folder(path)` reads back. Returns the annotation file's path.

    `path` must be new or an empty folder; with `overwrite=True`, a folder an earlier call
    wrote (it carries the marker file ``.epi_fast_coco_export``) is replaced, provided it holds
    nothing else. Every file is written atomically; the annotations go last, so an interrupted
    export has no annotation file to be mistaken for a complete one. Pixel values are stored
    as 8 bits: a loaded image is within 1/510 of the saved one; boxes and labels are exact.
    """
    if not isinstance(dataset, DetectionDataset):
        raise TypeError(f"save_coco_folder needs a DetectionDataset, got {type(dataset).__name__}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    path = os.fspath(path)
    if isinstance(dataset, CocoDetectionDataset) and _inside(dataset.image_dir, path):
        raise ValueError(f"{dataset.name} reads its images from {dataset.image_dir}, inside {path}; "
                         f"write it to another folder")
    targets = _checked_targets(dataset)
    category_ids = list(getattr(dataset, "category_ids", range(1, len(dataset.class_names) + 1)))
    _prepare_folder(path, overwrite)
    write_json(os.path.join(path, EXPORT_MARKER), {"format": _MARKER_FORMAT, "epi_fast_version": __version__})
    os.makedirs(os.path.join(path, IMAGES_DIR), exist_ok=True)
    images, annotations = [], []
    for i, target in enumerate(targets):
        image = dataset.image(i)
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"{dataset.name} image {i}: expected [3, H, W] (or [1, H, W]), got {list(image.shape)}")
        height, width = int(image.shape[1]), int(image.shape[2])
        boxes = target["boxes"].to(torch.float64)
        if boxes.numel() and ((boxes[:, 2] > width).any() or (boxes[:, 3] > height).any()):
            raise ValueError(f"{dataset.name} image {i}: a box reaches outside the {width}x{height} image: "
                             f"{boxes.tolist()}")
        file_name = f"{i + 1:06d}.png"
        write_bytes(os.path.join(path, IMAGES_DIR, file_name), _png(image))
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
        for (x0, y0, x1, y1), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            w, h = x1 - x0, y1 - y0
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": category_ids[label - 1], "bbox": [x0, y0, w, h],
                                "area": w * h, "iscrowd": 0})
    ann = os.path.join(path, ANNOTATIONS_FILE)
    write_json(ann, {
        "info": {"description": dataset.name, "epi_fast_version": __version__},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in zip(category_ids, dataset.class_names)],
    })
    return ann
