"""`epi-fast train --task lm` end to end on a tiny decoder: files, keys, perplexity, the prune,
--data FILE and its one-line errors, the saved model."""

import json
import math
import os

import pytest
import torch

pytest.importorskip("transformers")

from epi_fast.app.cli import main  # noqa: E402
from epi_fast.app.lm import validation_windows  # noqa: E402
from epi_fast.app.text_data import load_text  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = ["--task", "lm", "--model", "llama_micro", "--seq-len", "32", "--steps-per-epoch", "10", "--batch-size", "8",
        "--window", "2", "--patience", "1", "--no-progress"]
CONTRACT_KEYS = ("ratio", "criterion", "window", "tau", "patience", "prune_epoch", "prune_reason", "epi", "epi_tracked",
                 "params_before", "params_after", "flops_before", "flops_after", "top1_final", "train_seconds",
                 "skipped_steps", "status")
LM_KEYS = ("task", "val_perplexity_final", "tokens_per_second_before", "tokens_per_second_after",
           "val_perplexity_initial", "val_perplexity_before_prune", "val_perplexity_after_prune",
           "flops_per_token_before", "flops_per_token_after", "seq_len", "steps_per_epoch", "val_predictions")


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _train(out, *extra):
    return main(["train", "--out", str(out), *TINY, *extra])


def _text(n_sentences=400):
    words = ["the", "pruned", "network", "keeps", "its", "heads", "while", "channels", "settle", "early", "and", "late"]
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(n_sentences):
        idx = torch.randint(0, len(words), (8,), generator=g).tolist()
        lines.append(" ".join(words[i] for i in idx).capitalize() + ".")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "run"
    assert _train(out, "--epochs", "4", "--deadline-epoch", "3", "--track-ratios", "0.3", "--seed", "1") == 0
    return out


def test_run_directory_and_summary(run):
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "epi_curve.png", "metrics.jsonl", "model.pt", "perplexity.png", "summary.json"]
    s = json.loads((run / "summary.json").read_text())
    for key in CONTRACT_KEYS + LM_KEYS:
        assert key in s, key
    assert s["task"] == "lm" and s["status"] == "completed" and s["optimizer"] == "adamw"
    assert s["prune_reason"] in ("epi", "deadline") and 2 <= s["prune_epoch"] <= 3
    assert s["epi"][:2] == [None, None] and s["epi"][2] is not None and set(s["epi_tracked"]) == {"0.5", "0.3"}
    # Heads and MLP channels went: fewer parameters and FLOPs per token.
    assert 0 < s["params_after"] < s["params_before"]
    assert 0 < s["flops_per_token_after"] < s["flops_per_token_before"]
    assert s["flops_per_token_before"] == s["flops_before"] / 32
    # Perplexity per byte token: finite, below the uniform 256-way guess, and learnt.
    assert math.isfinite(s["val_perplexity_final"]) and s["val_perplexity_final"] < 256
    assert s["val_perplexity_final"] < s["val_perplexity_initial"]
    assert s["val_perplexity_before_prune"] < s["val_perplexity_initial"]
    assert 0.0 <= s["top1_final"] <= 1.0
    assert s["tokens_per_second_before"] > 0 and s["tokens_per_second_after"] > 0
    # Every byte of the validation text but the first is predicted once.
    assert s["val_predictions"] == s["val_split_tokens"] - 1
    assert s["arguments"]["task"] == "lm" and s["arguments"]["seq_len"] == 32


def test_metrics_perplexity_falls_before_the_prune(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    s = json.loads((run / "summary.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    dense = [r.get("val_perplexity_before_prune", r["val_perplexity"]) for r in records if r["epoch"] <= s["prune_epoch"]]
    assert [s["val_perplexity_initial"]] + dense == sorted([s["val_perplexity_initial"]] + dense, reverse=True)
    pruned = [r for r in records if r["pruned_now"]]
    assert len(pruned) == 1 and pruned[0]["epoch"] == s["prune_epoch"]
    assert pruned[0]["val_perplexity"] == s["val_perplexity_after_prune"]
    assert records[-1]["val_perplexity"] == s["val_perplexity_final"] and records[-1]["params"] == s["params_after"]
    for r in records:
        assert r["tokens"] == 10 * 8 * 32 and r["tokens_per_second"] > 0
    assert (run / "perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_pt_loads_back_pruned_and_generates(run):
    from epi_fast import load_pruned
    from epi_fast.models import build_model

    s = json.loads((run / "summary.json").read_text())
    torch.load(run / "model.pt", weights_only=True)
    model = load_pruned(str(run / "model.pt")).eval()
    assert sum(p.numel() for p in model.parameters()) == s["params_after"]
    dense = build_model("llama_micro", vocab_size=257, max_position_embeddings=32)
    kv = [layer.self_attn.k_proj.out_features for layer in model.model.layers]
    inter = [layer.mlp.up_proj.out_features for layer in model.model.layers]
    assert sum(kv) < sum(layer.self_attn.k_proj.out_features for layer in dense.model.layers)
    assert sum(inter) < sum(layer.mlp.up_proj.out_features for layer in dense.model.layers)
    x = torch.tensor([list(b"def f")])
    with torch.no_grad():
        assert model(x).logits.shape == (1, 5, 257)
        out = model.generate(x, max_new_tokens=4, do_sample=False, pad_token_id=256)
    assert out.shape == (1, 9)


def test_data_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(_text(), encoding="utf-8")
    out = tmp_path / "run"
    assert _train(out, "--data", str(path), "--epochs", "2", "--window", "1", "--patience", "0", "--deadline-epoch", "2") == 0
    s = json.loads((out / "summary.json").read_text())
    n = len(path.read_bytes())
    assert s["data"] == str(path) and s["train_split_tokens"] + s["val_split_tokens"] == n
    assert s["val_split_tokens"] == int(n * 0.1)  # ASCII: no character boundary to move to
    assert s["prune_epoch"] is not None and s["params_after"] < s["params_before"]
    assert s["val_perplexity_final"] < 256


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b"   \n\n", "is empty"),
        (b"PK\x03\x04\x00\x00binary", "NUL byte"),
        ("caf\u00e9 au lait ".encode("latin-1") * 100, "not UTF-8"),
        (b"short text\n", "too short"),
        ("dir", "is a directory"),
    ],
)
def test_bad_data_is_a_one_line_usage_error(tmp_path, capsys, content, needle):
    path = tmp_path / "data.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert _train(tmp_path / "out", "--data", str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "--data" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "resnet_small"], "--task lm trains one of"),
        (["--momentum", "0.9"], "--momentum is SGD's"),
        (["--input-size", "8"], "--input-size is an option of --task classify"),
        (["--seq-len", "0"], "--seq-len"),
    ],
)
def test_lm_usage_errors(tmp_path, capsys, args, needle):
    assert _train(tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--seq-len", "64"], "--seq-len is an option of --task lm"),
        (["--steps-per-epoch", "5"], "--steps-per-epoch is an option of --task lm"),
        (["--model", "llama_tiny"], "is a language model: use it with --task lm"),
    ],
)
def test_lm_options_with_classify_are_refused(tmp_path, capsys, args, needle):
    assert main(["train", "--out", str(tmp_path / "out"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert not (tmp_path / "out").exists()


def test_builtin_text_split_and_validation_windows():
    data = load_text("pydoc-topics", 128)
    assert data.characters > 400_000 and data.num_bytes >= data.characters
    assert data.val.numel() == pytest.approx(0.1 * data.num_bytes, abs=4)
    assert not 0x80 <= int(data.val[0]) < 0xC0  # the split starts at a character
    windows = validation_windows(data.val, 128)
    assert all(x.numel() == y.numel() <= 128 for x, y in windows)
    targets = torch.cat([y for _, y in windows])
    assert torch.equal(targets, data.val[1:])  # every byte but the first, once, in order
    assert torch.equal(torch.cat([x for x, _ in windows]), data.val[:-1])
