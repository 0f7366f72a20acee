"""The COCO-format folder loader and writer: round trip, the layouts read, the label mapping,
every bad input's one-line error, and what the writer refuses to replace."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from PIL import Image

from epi_fast.detection import (CocoFormatError, coco_splits, load_coco_folder, make_digit_canvases,
                                save_coco_folder)
from epi_fast.detection.coco import ANNOTATIONS_FILE, EXPORT_MARKER


@pytest.fixture(scope="module")
def digits():
    return make_digit_canvases(6, seed=9)


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("coco") / "set")
    save_coco_folder(digits, path)
    return path


def _copy(src: str, dst) -> str:
    dst = str(dst)
    shutil.copytree(src, dst)
    return dst


def _edit(folder: str, change) -> str:
    ann = os.path.join(folder, ANNOTATIONS_FILE)
    with open(ann) as f:
        data = json.load(f)
    change(data)
    with open(ann, "w") as f:
        json.dump(data, f)
    return ann


def test_round_trip(digits, exported):
    ds = load_coco_folder(exported)
    assert len(ds) == len(digits) and ds.num_classes == 11 and ds.class_names == digits.class_names
    assert ds.category_ids == tuple(range(1, 11)) and ds.image_size == (64, 64) and ds.crowd_ignored == 0
    for i in range(len(ds)):
        a, t = digits[i]
        b, u = ds[i]
        assert torch.equal(t["boxes"], u["boxes"]) and torch.equal(t["labels"], u["labels"])
        assert b.dtype == torch.float32 and b.shape == a.shape
        assert float((a - b).abs().max()) <= 0.5 / 255 + 1e-6  # 8-bit PNG
    # Saving what was loaded gives the same file content (ids, boxes, categories).
    again = os.path.join(os.path.dirname(exported), "again")
    save_coco_folder(ds, again)
    with open(os.path.join(exported, ANNOTATIONS_FILE)) as f1, open(os.path.join(again, ANNOTATIONS_FILE)) as f2:
        first, second = json.load(f1), json.load(f2)
    for key in ("images", "annotations", "categories"):
        assert first[key] == second[key]


def test_category_ids_map_to_contiguous_labels_and_crowds_are_left_out(exported, tmp_path):
    folder = _copy(exported, tmp_path / "c")
    ids = [3, 7, 12, 20, 21, 22, 30, 31, 40, 99]

    def change(data):
        data["categories"] = [{"id": c, "name": f"c{c}"} for c in reversed(ids)]  # order in the file: any
        for a in data["annotations"]:
            a["category_id"] = ids[a["category_id"] - 1]
        data["annotations"][0]["iscrowd"] = 1
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2]  # an image without boxes

    _edit(folder, change)
    ds = load_coco_folder(folder)
    original = load_coco_folder(exported)
    assert ds.category_ids == tuple(ids) and ds.class_names == tuple(f"c{c}" for c in ids)
    assert ds.label_of_category[12] == 3 and ds.crowd_ignored == 1
    assert torch.equal(ds.target(0)["labels"], original.target(0)["labels"][1:])
    assert ds.target(1)["boxes"].shape == (0, 4) and ds.target(1)["labels"].shape == (0,)
    assert torch.equal(ds.target(2)["labels"], original.target(2)["labels"])
    # The writer keeps the category ids, so the mapping survives a round trip.
    out = str(tmp_path / "out")
    save_coco_folder(ds, out)
    assert load_coco_folder(out).category_ids == tuple(ids)


def test_split_layouts(digits, exported, tmp_path):
    # One export per split folder.
    root = tmp_path / "splits"
    save_coco_folder(digits, str(root / "train"))
    save_coco_folder(make_digit_canvases(3, seed=1), str(root / "val"))
    assert coco_splits(str(root)) == ["train", "val"]
    assert len(load_coco_folder(str(root), split="val")) == 3
    with pytest.raises(CocoFormatError, match="holds the splits train, val: name one"):
        load_coco_folder(str(root))
    with pytest.raises(FileNotFoundError, match="no split 'test'"):
        load_coco_folder(str(root), split="test")
    # COCO's own naming: annotations/instances_SPLIT.json, images in SPLIT/ or images/SPLIT/.
    coco = tmp_path / "coco"
    os.makedirs(coco / "annotations")
    shutil.copy(os.path.join(exported, ANNOTATIONS_FILE), coco / "annotations" / "instances_train2017.json")
    shutil.copytree(os.path.join(exported, "images"), coco / "train2017")
    shutil.copy(os.path.join(exported, ANNOTATIONS_FILE), coco / "annotations" / "instances_val2017.json")
    shutil.copytree(os.path.join(exported, "images"), coco / "images" / "val2017")
    assert coco_splits(str(coco)) == ["train2017", "val2017"]
    train = load_coco_folder(str(coco), split="train2017")
    val = load_coco_folder(str(coco), split="val2017")
    assert train.image_dir == str(coco / "train2017") and val.image_dir == str(coco / "images" / "val2017")
    assert torch.equal(train.target(3)["boxes"], digits.target(3)["boxes"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_coco_folder(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="holds no COCO annotations"):
        load_coco_folder(str(coco / "train2017"))


def _set(path):
    """A change that sets data[path[0]][path[1]]...[path[-2]] = path[-1]."""
    *keys, value = path

    def change(data):
        node = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return change


BAD = {
    # name: (change to the JSON or raw bytes, fragments of the message)
    "empty file": (b"", ["is empty"]),
    "blank file": (b"  \n", ["is empty"]),
    "not json": (b"{'images': ", ["is not valid JSON", "line 1"]),
    "a list": (b"[]", ["must hold a JSON object"]),
    "no annotations key": (lambda d: d.pop("annotations"), ["no 'annotations' key"]),
    "no categories key": (lambda d: d.pop("categories"), ["no 'categories' key"]),
    "annotation-less": (_set(("annotations", [])), ["has no annotations"]),
    "no images": (_set(("images", [])), ["has no images"]),
    "images not a list": (_set(("images", {})), ["'images' must be a list"]),
    "box past the right edge": (_set(("annotations", 0, "bbox", [60, 2, 10, 5])),
                                ["annotation 1 (image 1)", "lies outside the 64x64 image"]),
    "box above the top": (_set(("annotations", 1, "bbox", [3, -1, 10, 5])), ["annotation 2", "lies outside"]),
    "zero width": (_set(("annotations", 0, "bbox", [3, 3, 0, 5])), ["annotation 1", "non-positive width"]),
    "negative height": (_set(("annotations", 0, "bbox", [3, 3, 4, -5])), ["annotation 1", "non-positive"]),
    "bbox of three": (_set(("annotations", 0, "bbox", [3, 3, 4])), ["annotation 1", "four numbers"]),
    "bbox with text": (_set(("annotations", 0, "bbox", [3, "a", 4, 4])), ["annotation 1", "four numbers"]),
    "unknown category": (_set(("annotations", 2, "category_id", 99)),
                         ["annotation 3", "category_id 99", "not in 'categories'"]),
    "unknown image": (_set(("annotations", 0, "image_id", 77)), ["annotation 1", "image 77", "not in 'images'"]),
    "annotation without bbox": (lambda d: d["annotations"][0].pop("bbox"), ["annotation 1", "no 'bbox' key"]),
    "annotation without id": (lambda d: d["annotations"][0].pop("id"), ["annotation entry 0", "no 'id' key"]),
    "duplicate annotation id": (_set(("annotations", 1, "id", 1)), ["annotation id 1 appears twice"]),
    "image without width": (lambda d: d["images"][1].pop("width"), ["image 2", "no 'width' key"]),
    "duplicate image id": (_set(("images", 1, "id", 1)), ["image id 1 appears twice"]),
    "missing image file": (_set(("images", 2, "file_name", "gone.png")), ["image 3", "gone.png", "does not exist"]),
    "file outside the folder": (_set(("images", 0, "file_name", "../annotations.json")),
                                ["image 1", "must be a path inside"]),
    "size not as declared": (_set(("images", 0, "width", 65)), ["image 1", "is 64x64 pixels", "say 65x64"]),
    "duplicate category": (_set(("categories", 1, "id", 1)), ["category id 1 appears twice"]),
    "iscrowd 2": (_set(("annotations", 0, "iscrowd", 2)), ["annotation 1", "iscrowd 2"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_line(case, exported, tmp_path):
    change, fragments = BAD[case]
    folder = _copy(exported, tmp_path / "bad")
    ann = os.path.join(folder, ANNOTATIONS_FILE)
    if isinstance(change, bytes):
        with open(ann, "wb") as f:
            f.write(change)
    else:
        _edit(folder, change)
    with pytest.raises(CocoFormatError) as e:
        load_coco_folder(folder)
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in msg
    assert ann in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg


def test_unreadable_image_is_named(exported, tmp_path):
    folder = _copy(exported, tmp_path / "broken")
    with open(os.path.join(folder, "images", "000002.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(CocoFormatError, match=r"image 2: .*000002.png is not a readable image"):
        load_coco_folder(folder)
    ds = load_coco_folder(folder, verify_images=False)  # found when the image is read
    with pytest.raises(CocoFormatError, match=r"image 2: .*000002.png is not a readable image"):
        ds[1]
    assert ds[0][0].shape == (3, 64, 64)


def test_rgb_images_are_read_as_rgb(tmp_path):
    folder = tmp_path / "rgb"
    os.makedirs(folder / "images")
    pixels = torch.arange(5 * 7 * 3, dtype=torch.uint8).reshape(5, 7, 3)
    Image.fromarray(pixels.numpy(), mode="RGB").save(folder / "images" / "a.png")
    with open(folder / ANNOTATIONS_FILE, "w") as f:
        json.dump({"images": [{"id": 4, "file_name": "a.png", "width": 7, "height": 5}],
                   "annotations": [{"id": 1, "image_id": 4, "category_id": 2, "bbox": [0.5, 1.25, 6.5, 3.75]}],
                   "categories": [{"id": 2, "name": "thing"}]}, f)
    ds = load_coco_folder(str(folder))
    image, target = ds[0]
    assert torch.equal(image, pixels.permute(2, 0, 1).float() / 255)
    assert target["boxes"].tolist() == [[0.5, 1.25, 7.0, 5.0]] and target["labels"].tolist() == [1]
    assert ds.num_classes == 2 and ds.image_size == (5, 7) and ds.image_ids == (4,)


def test_writer_refuses_what_it_did_not_write(digits, tmp_path):
    foreign = tmp_path / "foreign"
    os.makedirs(foreign)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not written by save_coco_folder"):
        save_coco_folder(digits, str(foreign), overwrite=True)
    assert os.listdir(foreign) == ["notes.txt"]
    plain_file = tmp_path / "file"
    plain_file.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        save_coco_folder(digits, str(plain_file))

    out = str(tmp_path / "export")
    save_coco_folder(digits, out)
    assert sorted(os.listdir(out)) == sorted([EXPORT_MARKER, ANNOTATIONS_FILE, "images"])
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        save_coco_folder(digits, out)
    smaller = make_digit_canvases(2, seed=1)
    save_coco_folder(smaller, out, overwrite=True)
    assert sorted(os.listdir(os.path.join(out, "images"))) == ["000001.png", "000002.png"]
    assert len(load_coco_folder(out)) == 2
    (tmp_path / "export" / "images" / "extra.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"files it did not write \(images/extra.jpg\)"):
        save_coco_folder(digits, out, overwrite=True)
    assert len(load_coco_folder(out)) == 2  # untouched
    with pytest.raises(ValueError, match="write it to another folder"):
        save_coco_folder(load_coco_folder(out), out, overwrite=True)
    with pytest.raises(TypeError, match="needs a DetectionDataset"):
        save_coco_folder([1, 2], str(tmp_path / "list"))
    empty = tmp_path / "empty"
    os.makedirs(empty)
    save_coco_folder(smaller, str(empty))
    assert len(load_coco_folder(str(empty))) == 2
