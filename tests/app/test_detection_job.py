"""`epi-fast train --task detection` end to end on tiny data: the run directory and the
summary's keys, the mAP curve, the saved pruned detector, a COCO-format folder, a run stopped
at a checkpoint after the prune (and, marked slow, one killed before it) resumed to the
uninterrupted result, --amp, the default window, and the one-line usage errors.

The embedded set at the job's sizes trains for minutes; here it is shrunk (`DIGIT_OPTIONS`
patched in this process); the run in a child process reads a small COCO folder instead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

pytest.importorskip("torchmetrics")
pytest.importorskip("pycocotools")

from epi_fast.app import detect  # noqa: E402
from epi_fast.app.cli import build_parser, main  # noqa: E402
from epi_fast.app.resume import CHECKPOINT  # noqa: E402
from epi_fast.app.rundir import RUN_FILES  # noqa: E402
from epi_fast.app.training import fill_defaults  # noqa: E402
from epi_fast.detection import build_detector, head_output_layers, make_digit_canvases, save_coco_folder  # noqa: E402
from checkpoint_wait import wait_for_checkpoint  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 32 x 32 canvases of one or two small digits: an epoch of a few tenths of a second.
TINY_DIGITS = {"size": 32, "n_train": 32, "n_val": 8, "n_test": 8, "max_digits": 2, "scale": (1.5, 2.5)}
COMMON = ["--task", "detection", "--batch-size", "8", "--window", "2", "--patience", "1", "--threads", "1",
          "--no-progress"]
CONTRACT_KEYS = ("ratio", "criterion", "window", "tau", "patience", "prune_epoch", "prune_reason", "epi", "epi_tracked",
                 "params_before", "params_after", "flops_before", "flops_after", "top1_final", "train_seconds",
                 "skipped_steps", "status", "task")
DETECTION_KEYS = ("map50_final", "map_final", "test_split", "val_map50_final", "val_map_final",
                  "val_map50_before_prune", "val_map50_after_prune", "image_size", "num_classes", "train_images",
                  "val_images", "test_images")
TIMING = {"seconds", "train_loop_seconds", "eval_seconds"}
SUMMARY_DIFFERS = {"process", "train_seconds", "arguments", "resumed_after_epochs"}


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _records(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


DIGITS_RUN = [*COMMON, "--epochs", "3", "--deadline-epoch", "2", "--track-ratios", "0.2"]


@pytest.fixture
def tiny_digits(monkeypatch):
    monkeypatch.setattr(detect, "DIGIT_OPTIONS", TINY_DIGITS)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The embedded canvases (shrunk), pruned at the deadline or by EPI."""
    out = tmp_path_factory.mktemp("det") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(detect, "DIGIT_OPTIONS", TINY_DIGITS)
    try:
        assert main(["train", "--out", str(out), *DIGITS_RUN]) == 0
    finally:
        mp.undo()
    return out


def test_run_directory_summary_and_metrics(digits_run):
    run = digits_run
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "epi_curve.png", "map.png", "metrics.jsonl", "model.pt",
                                       "summary.json"]
    assert set(os.listdir(run)) <= set(RUN_FILES)
    s = json.loads((run / "summary.json").read_text())
    for key in CONTRACT_KEYS + DETECTION_KEYS:
        assert key in s, key
    assert s["task"] == "detection" and s["status"] == "completed" and s["model"] == "ssd_resnet18"
    assert s["data"] == "digit-canvases" and s["criterion"] == "magnitude" and s["threads"] == 1
    assert s["prune_reason"] in ("epi", "deadline") and s["prune_epoch"] == 2
    assert len(s["epi"]) == 4 and s["epi"][:2] == [None, None] and set(s["epi_tracked"]) == {"0.4", "0.2"}
    assert 0 < s["params_after"] < s["params_before"] and 0 < s["flops_after"] < s["flops_before"]
    for key in ("map50_final", "map_final", "val_map50_final", "val_map_final"):
        assert 0.0 <= s[key] <= 1.0, key
    assert s["map_final"] <= s["map50_final"]  # mAP@[.5:.95] averages thresholds at and above 0.5
    assert s["top1_final"] is None and s["test_split"] == "test"
    assert (s["image_size"], s["num_classes"], s["train_images"], s["val_images"], s["test_images"]) == (32, 11, 32, 8, 8)
    assert s["steps_per_epoch"] == 4 and s["class_names"] == [str(d) for d in range(10)]
    records = _records(run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"loss", "loss_bbox_regression", "loss_classification", "val_map50", "val_map", "epi", "params",
                "pruned", "pruned_now"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss_bbox_regression"] + r["loss_classification"])
    at = [r for r in records if r["pruned_now"]]
    assert len(at) == 1 and at[0]["epoch"] == s["prune_epoch"] and "val_map50_before_prune" in at[0]
    assert s["val_map50_after_prune"] == at[0]["val_map50"]
    assert records[-1]["params"] == s["params_after"] < records[0]["params"]
    for name in ("map.png", "epi_curve.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_pt_loads_back_as_the_pruned_detector(digits_run):
    from epi_fast import load_pruned

    s = json.loads((digits_run / "summary.json").read_text())
    payload = torch.load(digits_run / "model.pt", weights_only=True)
    assert payload["arch"] == {"name": "ssd_resnet18", "kwargs": {"num_classes": 11, "image_size": 32}}
    model = load_pruned(str(digits_run / "model.pt"), model=build_detector(**{"name": "ssd_resnet18",
                                                                              **payload["arch"]["kwargs"]}))
    assert sum(p.numel() for p in model.parameters()) == s["params_after"]
    dense = build_detector("ssd_resnet18", num_classes=11, image_size=32)
    # The class and box output layers keep their widths and read narrower maps.
    assert [m.out_channels for m in head_output_layers(model)] == [m.out_channels for m in head_output_layers(dense)]
    assert sum(m.in_channels for m in head_output_layers(model)) < sum(m.in_channels for m in head_output_layers(dense))
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}


def test_default_window_and_deadline_follow_the_schedule():
    def filled(*argv):
        ns = build_parser().parse_args(["train", "--out", "x", *argv])
        fill_defaults(ns)
        return ns

    ns = filled("--task", "detection")
    assert (ns.model, ns.data, ns.ratio, ns.optimizer) == ("ssd_resnet18", "digit-canvases", 0.4, "sgd")
    assert ns.window == 2  # scaled_window(5): at least 2
    assert filled("--task", "detection", "--epochs", "160").window == 10  # 160 * 50 / 800
    assert filled("--task", "detection", "--window", "3").window == 3
    assert filled("--epochs", "160").window == 5 and filled().ratio == 0.5  # classification keeps its own
    # The deadline: 60% of the schedule, so the pruned detector trains 40% of it; explicit wins.
    assert ns.deadline_epoch == 3
    assert filled("--task", "detection", "--epochs", "20").deadline_epoch == 12
    assert filled("--task", "detection", "--epochs", "1").deadline_epoch == 1
    assert filled("--task", "detection", "--deadline-epoch", "5").deadline_epoch == 5
    assert filled().deadline_epoch is None  # classification has no default deadline


# -- stopped and resumed ---------------------------------------------------------------------------

def _assert_same_run(resumed, baseline, stopped_after):
    a, b = json.loads((resumed / "summary.json").read_text()), json.loads((baseline / "summary.json").read_text())
    assert a["status"] == "completed" and a["resumed_after_epochs"] == [stopped_after]
    for key in set(a) | set(b):
        if key not in SUMMARY_DIFFERS:
            assert a.get(key) == b.get(key), key
    strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]  # noqa: E731
    assert strip(_records(resumed)) == strip(_records(baseline))
    assert sorted(os.listdir(resumed)) == sorted(os.listdir(baseline))
    ma, mb = torch.load(resumed / "model.pt", weights_only=True), torch.load(baseline / "model.pt", weights_only=True)
    assert ma["modules"] == mb["modules"] and all(torch.equal(ma["state_dict"][k], v) for k, v in mb["state_dict"].items())


def test_stopped_after_the_prune_resumes_to_the_uninterrupted_result(tmp_path, digits_run, tiny_digits, monkeypatch,
                                                                       capsys):
    """Ctrl-C right after the checkpoint of the epoch that pruned (the pruned detector, its
    optimizer and the pruner's state are in it); the resume narrows a dense detector to it and
    trains the last epoch."""
    stop_after = json.loads((digits_run / "summary.json").read_text())["prune_epoch"]
    assert stop_after == 2
    real = detect.DetectionRun.end_epoch

    def end_epoch(self):
        real(self)
        if self.epochs_completed == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(detect.DetectionRun, "end_epoch", end_epoch)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *DIGITS_RUN]) == 130
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(detect.DetectionRun, "end_epoch", real)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert f"after epoch {stop_after} of 3" in capsys.readouterr().err
    _assert_same_run(out, digits_run, stop_after)


def _coco_folder(root, splits=("train", "val")):
    for k, split in enumerate(splits):
        n = 24 if split == "train" else 8
        save_coco_folder(make_digit_canvases(n, seed=10 + k, size=32, max_digits=2, scale=(1.5, 2.5)), root / split)
    return root


COCO_RUN = [*COMMON, "--epochs", "3", "--deadline-epoch", "2"]


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("coco")
    data = _coco_folder(base / "data")
    out = base / "run"
    assert main(["train", "--out", str(out), "--data", str(data), *COCO_RUN]) == 0
    return data, out


def test_coco_folder_run(coco_run):
    data, run = coco_run
    s = json.loads((run / "summary.json").read_text())
    assert s["data"] == "coco:data" and s["status"] == "completed"
    # No test split: the final mAP is the val split's, and the summary says so.
    assert s["test_split"] == "val" and s["test_images"] == s["val_images"] == 8 and s["train_images"] == 24
    assert s["map50_final"] == pytest.approx(s["val_map50_final"])  # the same split, the same final detector
    assert s["prune_epoch"] is not None and s["params_after"] < s["params_before"]
    assert (run / "map.png").is_file() and s["arguments"]["data"] == str(data)


def test_one_set_coco_folder_is_divided_by_the_seed(tmp_path):
    save_coco_folder(make_digit_canvases(20, seed=3, size=32, max_digits=2, scale=(1.5, 2.5)), tmp_path / "one")
    ns = build_parser().parse_args(["train", "--task", "detection", "--data", str(tmp_path / "one"), "--out", "x"])
    fill_defaults(ns)
    a, b = detect.load_detection_data(ns), detect.load_detection_data(ns)
    assert [len(p) for p in (a.train, a.val, a.test)] == [14, 3, 3]
    parts = [set(p.indices) for p in (a.train, a.val, a.test)]
    assert set().union(*parts) == set(range(20)) and sum(map(len, parts)) == 20
    assert [p.indices for p in (a.train, a.val, a.test)] == [p.indices for p in (b.train, b.val, b.test)]
    assert a.image_size == 32 and a.num_classes == 11
    image, target = a.val[0]
    assert image.shape == (3, 32, 32) and torch.equal(target["labels"], a.val.dataset.target(a.val.indices[0])["labels"])


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.mark.slow
def test_killed_before_the_prune_resumes_to_the_uninterrupted_result(tmp_path, coco_run):
    """SIGKILL of a run in a child process after its first checkpoint, then --resume."""
    data, baseline = coco_run
    prune_epoch = json.loads((baseline / "summary.json").read_text())["prune_epoch"]
    assert prune_epoch == 2
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "epi_fast", "train", "--out", str(out), "--data", str(data),
                             *COCO_RUN], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(proc, out / CHECKPOINT, 1, 300)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    got = torch.load(out / CHECKPOINT, weights_only=True)["epochs_completed"]
    assert got < prune_epoch, got
    assert json.loads((out / "summary.json").read_text())["status"] == "running"
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    _assert_same_run(out, baseline, got)


@pytest.mark.slow
def test_amp(tmp_path, tiny_digits):
    """bfloat16 autocast on the CPU (slow here: this CPU has no native bfloat16 arithmetic)."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *COMMON, "--epochs", "2", "--deadline-epoch", "1", "--window", "1",
                 "--amp"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["amp"] is True and s["prune_epoch"] == 1 and s["params_after"] < s["params_before"]
    assert 0.0 <= s["map50_final"] <= 1.0 and all(r["loss"] == r["loss"] for r in _records(out))


# -- usage errors --------------------------------------------------------------------------------

def _bad_coco(root, kind):
    if kind == "missing":
        return root / "nowhere"
    if kind == "empty annotations":
        (root / "images").mkdir(parents=True)
        (root / "annotations.json").write_text("")
        return root
    if kind == "no val split":
        save_coco_folder(make_digit_canvases(4, seed=0, size=32, max_digits=1), root / "train")
        return root
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--seq-len", "32"], "--seq-len is an option of --task lm"),
        (["--steps-per-epoch", "5"], "--steps-per-epoch is an option of --task lm"),
        (["--data-format", "digits"], "--data-format is an option of --task classify"),
        (["--model", "resnet_small"], "--task detection trains one of ssd_resnet18"),
        (["--input-size", "64", "48"], "takes one side S"),
        (["--input-size", "16"], "at least 32"),
        (["--distributed", "ddp"], "--distributed is not supported with --task detection"),
        (["--momentum", "0.9", "--optimizer", "adamw"], "--momentum is SGD's"),
    ],
)
def test_detection_usage_errors(tmp_path, capsys, args, needle):
    assert main(["train", "--out", str(tmp_path / "out"), "--task", "detection", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, needle", [("missing", "no such folder"), ("empty annotations", "is empty"),
                                          ("no val split", "but no val")])
def test_bad_coco_folder_is_a_one_line_usage_error(tmp_path, capsys, kind, needle):
    data = _bad_coco(tmp_path / "data", kind)
    assert main(["train", "--out", str(tmp_path / "out"), "--task", "detection", "--data", str(data),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "--data" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_detectors_with_other_tasks_are_refused(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "out"), "--model", "ssd_resnet18", "--no-progress"]) == 2
    assert "is a detector: use it with --task detection" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "out"), "--task", "lm", "--model", "ssd_resnet18"]) == 2
    assert "--task lm trains one of" in capsys.readouterr().err
