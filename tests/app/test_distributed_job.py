"""`epi-fast train --distributed ddp|fsdp` on two gloo processes on the CPU, started by torchrun
(or, where a test must reach one rank alone, by hand with torchrun's environment): the run
ends, rank 0 alone writes and prints, every rank prunes after the same epoch with the same kept
counts (under FSDP within an epoch of the one-process run), a run killed before or after the
prune resumes to the uninterrupted result, and bad input stops every rank with one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch.distributed as dist

from epi_fast.app.cli import main
from epi_fast.app.resume import CHECKPOINT
from checkpoint_wait import wait_for_checkpoint

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="gloo is not available")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _job_args(batch_size, epochs):
    return ["--epochs", str(epochs), "--batch-size", str(batch_size), "--window", "2", "--patience", "1",
            "--deadline-epoch", "3", "--track-ratios", "0.3", "--no-progress"]


# Epochs of about a second on two shared cores; the deadline makes the prune certain (after
# epoch 3 at the latest) and early.
ARGS = _job_args(32, 6)
# FSDP gathers and scatters every block's parameters at every step over gloo: batches of 64
# (half the steps) and one epoch less keep its runs short; epoch 5 still follows the epoch after
# the prune.
FSDP_ARGS = _job_args(64, 5)
ARGS_OF = {"ddp": ARGS, "fsdp": FSDP_ARGS}
RUN_FILES = {"summary.json", "metrics.jsonl", "checkpoint.pt", "epi_curve.png", "model.pt"}
TIMING = {"seconds"}
SUMMARY_DIFFERS = {"process", "train_seconds", "arguments", "resumed_after_epochs", "working_directory"}
HANG = 300  # seconds any one launch may take before the test kills it and fails


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def _torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def _descendants(pid):
    """The processes below `pid` (torchrun starts each rank in a session of its own, so killing
    torchrun's process group does not reach them)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(proc):
    """SIGKILL `proc` and every process below it, as a power cut would."""
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run(cmd, cwd, timeout=HANG):
    """Run `cmd`; on a hang kill it with everything it started and fail."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        proc.communicate()
        pytest.fail(f"{cmd} did not end within {timeout} s")
    return proc.returncode, out, err


def _rank_lines(err):
    """stderr without torchrun's own log lines."""
    return [line for line in err.splitlines() if line.startswith("epi-fast")]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks_by_hand(args, cwds):
    """Two ranks started without torchrun, with its environment, each in its own folder, so
    that one rank can be stopped alone (and nothing kills the other for us)."""
    port = str(_free_port())
    procs = []
    for rank, cwd in enumerate(cwds):
        env = _env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-m", "epi_fast", "train", *args], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True))
    return procs


def _finish(procs, timeout=HANG):
    out = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            o, e = p.communicate(timeout=max(1, deadline - time.monotonic()))
            out.append((p.returncode, o, e))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank did not end within {timeout} s")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()
    return out


def _summary(d):
    return json.loads((d / "summary.json").read_text())


def _records(d):
    return [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The uninterrupted 2-process run; each rank started in its own folder with a relative
    --out, so a file written by rank 1 would land in r1/."""
    root = tmp_path_factory.mktemp("ddp")
    for r in (0, 1):
        (root / f"r{r}").mkdir()
    line = " ".join([f"cd {root}/r$LOCAL_RANK &&", "exec", sys.executable, "-m", "epi_fast", "train", "--distributed",
                     "ddp", "--out", "run", *ARGS])
    rc, out, err = _run(_torchrun("--no-python", "sh", "-c", line), cwd=root)
    assert rc == 0, err
    return root, out, err


def test_ddp_run_ends_and_rank0_alone_writes(ddp_run):
    root, out, err = ddp_run
    assert os.listdir(root / "r1") == []  # rank 1 wrote nothing, not even a folder
    run = root / "r0" / "run"
    assert set(os.listdir(run)) == RUN_FILES
    s = _summary(run)
    assert s["status"] == "completed" and s["epochs_completed"] == 6
    assert s["distributed"]["kind"] == "ddp" and s["distributed"]["world_size"] == 2
    assert s["distributed"]["backend"] == "gloo" and s["distributed"]["per_rank_batch"] == 16
    assert s["batch_size"] == 32
    # One line per epoch on stdout: rank 1 printed nothing.
    for epoch in range(1, 7):
        assert sum(line.startswith(f"epoch   {epoch}/6") for line in out.splitlines()) == 1, out
    assert out.count("results in run") == 1
    assert _rank_lines(err) == []
    assert [r["epoch"] for r in _records(run)] == list(range(1, 7))


def test_every_rank_prunes_after_the_same_epoch(ddp_run):
    root, _, _ = ddp_run
    s = _summary(root / "r0" / "run")
    assert s["prune_epoch"] is not None and 2 <= s["prune_epoch"] <= 3
    ranks = s["distributed"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["prune_epoch"] for r in ranks} == {s["prune_epoch"]}
    assert {r["prune_reason"] for r in ranks} == {s["prune_reason"]}
    assert {r["params"] for r in ranks} == {s["params_after"]} and s["params_after"] < s["params_before"]
    assert all(r["kept_counts_as_rank0"] and r["epi_as_rank0"] for r in ranks)
    pruned = [r for r in _records(root / "r0" / "run") if r["pruned_now"]]
    assert [r["epoch"] for r in pruned] == [s["prune_epoch"]]
    # Training went on after the prune (a fresh DDP around the pruned module).
    assert _records(root / "r0" / "run")[-1]["test_top1"] > 0.8


def test_distributed_without_torchrun_is_a_usage_error(tmp_path, capsys, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert main(["train", "--distributed", "ddp", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torchrun" in err[0] and "RANK" in err[0]
    assert not (tmp_path / "x").exists()


def test_torchrun_environment_needs_distributed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--distributed" in err[0] and "WORLD_SIZE=2" in err[0]
    monkeypatch.setenv("RANK", "1")  # the same error on rank 1, printed by rank 0 only
    assert main(["train", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, words", [
    (["--batch-size", "33"], "must divide among the 2 processes"),
    (["--device", "cuda:1"], "--device"),
])
def test_bad_distributed_arguments(tmp_path, capsys, monkeypatch, args, words):
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "1")):
        monkeypatch.setenv(key, value)
    # Refused before joining the process group (nothing listens on port 1).
    assert main(["train", "--distributed", "ddp", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "x").exists()


def test_cuda_ranks_join_with_nccl_on_the_gpu_of_their_local_rank(monkeypatch):
    """`--device cuda` takes NCCL, each rank on the GPU of its LOCAL_RANK, and the job's own
    collectives move CUDA tensors. Checked without a GPU: CUDA's queries and
    init_process_group are stand-ins that record what the job asked for (scripts/gpu_check.sh
    runs the real thing on a GPU machine)."""
    import datetime
    import warnings

    import torch

    from epi_fast.app.cli import UsageError
    from epi_fast.app.dist_job import start_job

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    for key, value in (("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "1")):
        monkeypatch.setenv(key, value)
    with warnings.catch_warnings():  # a rank other than 0 silences its warnings
        job = start_job("fsdp", "cuda", 60.0, UsageError)
        gpu = torch.device("cuda", 1)
        assert (job.backend, job.device, job.rank, job.local_rank) == ("nccl", gpu, 3, 1)
        assert calls == [("set_device", gpu), ("nccl", {"timeout": datetime.timedelta(seconds=60), "device_id": gpu})]
        assert job._comm_device() == gpu
        monkeypatch.setenv("LOCAL_RANK", "2")  # a third rank on a machine with two GPUs
        with pytest.raises(UsageError, match="LOCAL_RANK 2 has no GPU of its own"):
            start_job("fsdp", "cuda", 60.0, UsageError)
    assert len(calls) == 2


def test_bad_timeout_is_a_usage_error(tmp_path, capsys):
    assert main(["train", "--distributed", "ddp", "--dist-timeout", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--dist-timeout" in capsys.readouterr().err


def test_resume_of_a_distributed_run_needs_torchrun_of_its_size(ddp_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(ddp_run[0] / "r0" / "run", run)
    s = _summary(run)
    s["status"] = "interrupted"  # as if stopped with Ctrl-C
    (run / "summary.json").write_text(json.dumps(s))
    before = {p: (run / p).read_bytes() for p in os.listdir(run)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "torchrun --nproc-per-node 2" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "started on 2 processes, torchrun started 3" in err
    assert {p: (run / p).read_bytes() for p in os.listdir(run)} == before


def test_out_refused_on_rank0_stops_every_rank(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("not a run")
    results = _finish(_ranks_by_hand(["--distributed", "ddp", "--out", str(out), *ARGS], [tmp_path, tmp_path]), timeout=120)
    (rc0, _, err0), (rc1, _, err1) = results
    assert rc0 == 2 and rc1 == 2
    assert len(_rank_lines(err0)) == 1 and "already exists" in err0
    assert _rank_lines(err1) == []  # rank 0 said it
    assert os.listdir(out) == ["mine.txt"]


def test_a_rank_that_dies_stops_the_others(tmp_path):
    """Rank 1 is killed (SIGKILL) after the first epoch: rank 0 fails at its next collective,
    records the failure in the run directory and exits 1 with one line, without anything
    killing it."""
    out = tmp_path / "run"
    args = ["--distributed", "ddp", "--out", str(out), "--epochs", "30", "--no-progress", "--dist-timeout", "60"]
    procs = _ranks_by_hand(args, [tmp_path, tmp_path])
    try:
        deadline = time.monotonic() + HANG
        while not (out / CHECKPOINT).exists():
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.05)
        procs[1].kill()
        t0 = time.monotonic()
        _, err0 = procs[0].communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert procs[0].returncode == 1, err0
    lines = _rank_lines(err0)
    assert len(lines) == 1 and "lost contact with the other ranks" in lines[0], err0
    assert waited < 60
    s = _summary(out)
    assert s["status"] == "failed" and "lost contact" in s["error"]


# -- resume ------------------------------------------------------------------------------------

def _stopped_torchrun(out, epoch, kind="ddp"):
    """torchrun's run, killed (SIGKILL, torchrun and both ranks) once checkpoint.pt records
    `epoch`; returns the epochs it holds then."""
    import torch

    proc = subprocess.Popen(_torchrun("-m", "epi_fast", "train", "--distributed", kind, "--out", str(out), *ARGS_OF[kind]),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for_checkpoint(proc, out / CHECKPOINT, epoch, HANG)
        ranks = _descendants(proc.pid)
        _kill_tree(proc)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while any(os.path.exists(f"/proc/{pid}") for pid in ranks):
            assert time.monotonic() < deadline, "a killed rank is still running"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
            proc.wait()
        proc.stderr.close()
    return torch.load(out / CHECKPOINT, weights_only=True)["epochs_completed"]


def _resumes_to(baseline, out, got, kind):
    """Resume the killed run `out` (stopped after `got` epochs) under torchrun; it ends as the
    uninterrupted run `baseline` did: the same summary, metrics and files."""
    if kind == "fsdp":
        # The sharded checkpoint that checkpoint.pt names was complete before it was named.
        assert (out / f"checkpoint-{got}.dcp" / ".metadata").is_file()
    rc, _, err = _run(_torchrun("-m", "epi_fast", "train", "--resume", str(out), "--no-progress"), cwd=out.parent)
    assert rc == 0, err
    a, b = _summary(out), _summary(baseline)
    assert a["status"] == "completed" and a["resumed_after_epochs"] == [got]
    for key in set(a) | set(b):
        if key not in SUMMARY_DIFFERS:
            assert a.get(key) == b.get(key), key
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in _records(out)] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in _records(baseline)]
    assert set(os.listdir(out)) - RUN_FILES == ({f"checkpoint-{a['epochs_completed']}.dcp"} if kind == "fsdp" else set())
    assert RUN_FILES <= set(os.listdir(out))


def _stop_before_or_after(baseline, out, when, kind):
    """The run killed after its first epoch (before the prune) or after the epoch that followed
    the prune; returns the epochs its checkpoint holds."""
    s = _summary(baseline)
    prune_epoch = s["prune_epoch"]
    got = _stopped_torchrun(out, 1 if when == "before" else prune_epoch + 1, kind)
    assert (got < prune_epoch) if when == "before" else (prune_epoch < got < s["epochs_completed"]), got
    assert _summary(out)["status"] == "running"
    return got


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_killed_ddp_run_resumes_to_the_uninterrupted_result(ddp_run, tmp_path, when):
    baseline = ddp_run[0] / "r0" / "run"
    out = tmp_path / "run"
    got = _stop_before_or_after(baseline, out, when, "ddp")
    _resumes_to(baseline, out, got, "ddp")


@pytest.mark.slow
def test_two_processes_prune_within_an_epoch_of_one(tmp_path):
    """The default digits job: the same global batch and seed on 1 and on 2 processes. The ranks'
    batches put together are the 1-process batches (GlobalBatchShare); per-rank BatchNorm
    statistics and the reduction order are what still differs."""
    rc, _, err = _run([sys.executable, "-m", "epi_fast", "train", "--out", str(tmp_path / "one"), "--no-progress"],
                      cwd=tmp_path)
    assert rc == 0, err
    rc, _, err = _run(_torchrun("-m", "epi_fast", "train", "--distributed", "ddp", "--out", str(tmp_path / "two"),
                                "--no-progress"), cwd=tmp_path)
    assert rc == 0, err
    one, two = _summary(tmp_path / "one"), _summary(tmp_path / "two")
    assert one["prune_reason"] == two["prune_reason"] == "epi"
    assert abs(one["prune_epoch"] - two["prune_epoch"]) <= 1
    assert two["top1_final"] > 0.95


# -- the sharded checkpoint of --distributed fsdp ------------------------------------------------

def _shards_worker(rank, init_file, out_dir):
    """Rank `rank` of two: a pruned resnet_small sharded per block, one SGD step, its sharded
    checkpoint written; then a dense model narrowed to the recorded shapes, sharded alike and
    loaded from it. Saves what both hold, gathered, for the test to compare."""
    import torch
    import torch.nn.functional as F
    from types import SimpleNamespace

    import epi_fast
    from epi_fast.app.dist_job import DistJob, full_state_dict, shard_blocks
    from epi_fast.app.shards import architecture_payload, load_shards, save_shards
    from epi_fast.models import build_model
    from epi_fast.surgery.serialize import narrow_to_shapes

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        job = DistJob("fsdp", rank, 2, rank, "gloo", torch.device("cpu"), 60.0)
        torch.manual_seed(0)
        model = build_model("resnet_small", num_classes=10, in_channels=1)
        epi_fast.prune(model, 0.5, torch.zeros(1, 1, 8, 8))
        arch = architecture_payload(model, {"name": "resnet_small", "kwargs": {"num_classes": 10, "in_channels": 1}})
        shard_blocks(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(rank)
        F.cross_entropy(model(torch.randn(8, 1, 8, 8, generator=g)), torch.randint(0, 10, (8,), generator=g)).backward()
        opt.step()
        run = SimpleNamespace(job=job, s=SimpleNamespace(model=model, optimizer=opt), epochs_completed=3, outdir=out_dir)
        name = save_shards(run)
        before = full_state_dict(model)
        momentum = {k: v["momentum_buffer"].full_tensor() for k, v in
                    zip(model.state_dict(), opt.state.values())} if opt.state else {}

        fresh = build_model("resnet_small", num_classes=10, in_channels=1)
        narrow_to_shapes(fresh, arch["modules"], arch["shapes"])
        shard_blocks(fresh)
        fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
        load_shards(SimpleNamespace(s=SimpleNamespace(model=fresh, optimizer=fresh_opt), outdir=out_dir), name)
        after = full_state_dict(fresh)
        fresh_momentum = [v["momentum_buffer"].full_tensor() for v in fresh_opt.state.values()]
        if rank == 0:
            torch.save({"name": name, "before": before, "after": after, "momentum": list(momentum.values()),
                        "fresh_momentum": fresh_momentum, "shapes": arch["shapes"]}, os.path.join(out_dir, "result.pt"))
    finally:
        dist.destroy_process_group()


def test_sharded_checkpoint_rebuilds_the_pruned_shapes(tmp_path):
    import torch
    import torch.multiprocessing as mp

    from epi_fast.app.rundir import check_out, is_shard_dir

    out = tmp_path / "run"
    out.mkdir()
    mp.spawn(_shards_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    r = torch.load(out / "result.pt", weights_only=True)
    assert r["name"] == "checkpoint-3.dcp"
    files = sorted(os.listdir(out / r["name"]))
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per rank
    assert [e for e in os.listdir(out) if e.startswith(".")] == []  # the temporary folder was renamed
    assert set(r["before"]) == set(r["after"]) == set(r["shapes"])
    for k, v in r["before"].items():
        assert list(v.shape) == r["shapes"][k]
        assert torch.equal(v, r["after"][k]), k
    assert len(r["momentum"]) == len(r["fresh_momentum"]) > 0
    for a, b in zip(r["momentum"], r["fresh_momentum"]):
        assert torch.equal(a, b)
    # The folder is the tool's own: --overwrite may replace a run directory that holds it, and
    # a folder with anything else inside is not.
    os.unlink(out / "result.pt")
    (out / "summary.json").write_text(json.dumps({"format": "epi_fast.summary/1", "status": "completed"}))
    assert is_shard_dir(str(out), r["name"])
    check_out(str(out), overwrite=True)
    (out / r["name"] / "notes.txt").write_text("mine")
    assert not is_shard_dir(str(out), r["name"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_lm_on_two_processes_trains_on_the_one_process_data(tmp_path, kind):
    """--task lm draws every global batch from the one generator on every rank and trains each
    rank on its rows: the 2-process run sees the 1-process run's data, so it decides alike and
    ends within float rounding of it (DDP averaging the gradients, or FSDP reduce-scattering
    them and pruning the sharded decoder)."""
    lm = ["--task", "lm", "--model", "llama_micro", "--seq-len", "32", "--steps-per-epoch", "30", "--batch-size", "8",
          "--epochs", "5", "--window", "2", "--patience", "1", "--deadline-epoch", "3", "--track-ratios", "0.3",
          "--threads", "1", "--no-progress"]
    rc, _, err = _run([sys.executable, "-m", "epi_fast", "train", "--out", str(tmp_path / "one"), *lm], cwd=tmp_path)
    assert rc == 0, err
    rc, _, err = _run(_torchrun("-m", "epi_fast", "train", "--distributed", kind, "--out", str(tmp_path / "two"), *lm),
                      cwd=tmp_path)
    assert rc == 0, err
    one, two = _summary(tmp_path / "one"), _summary(tmp_path / "two")
    assert two["distributed"]["per_rank_batch"] == 4
    assert one["prune_epoch"] == two["prune_epoch"] is not None
    assert one["kept_counts"] == two["kept_counts"]
    for r, values in one["epi_tracked"].items():
        assert [v is None for v in two["epi_tracked"][r]] == [v is None for v in values]
        assert [v for v in two["epi_tracked"][r] if v is not None] == pytest.approx([v for v in values if v is not None],
                                                                                    rel=1e-9)
    assert two["val_perplexity_final"] == pytest.approx(one["val_perplexity_final"], rel=1e-4)
    assert all(r["kept_counts_as_rank0"] for r in two["distributed"]["ranks"])


# -- --distributed fsdp: the main job --------------------------------------------------------------

@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    """The uninterrupted 2-process FSDP run (two/) and the 1-process run of the same arguments
    (one/): the same global batch and seed."""
    root = tmp_path_factory.mktemp("fsdp")
    rc, out, err = _run(_torchrun("-m", "epi_fast", "train", "--distributed", "fsdp", "--out", str(root / "two"),
                                  *FSDP_ARGS), cwd=root)
    assert rc == 0, err
    # In this process: the job is the same, without a second start of Python and torch.
    assert main(["train", "--out", str(root / "one"), *FSDP_ARGS]) == 0
    return root, out, err


def test_fsdp_run_prunes_within_an_epoch_of_one_process_alike_on_every_rank(fsdp_runs):
    root, out, err = fsdp_runs
    run = root / "two"
    s, one = _summary(run), _summary(root / "one")
    assert s["status"] == "completed" and s["epochs_completed"] == 5
    d = s["distributed"]
    assert (d["kind"], d["world_size"], d["backend"], d["per_rank_batch"]) == ("fsdp", 2, "gloo", 32)
    assert s["prune_epoch"] is not None and abs(s["prune_epoch"] - one["prune_epoch"]) <= 1
    ranks = d["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert {r["prune_epoch"] for r in ranks} == {s["prune_epoch"]}
    assert {r["prune_reason"] for r in ranks} == {s["prune_reason"]}
    assert {r["params"] for r in ranks} == {s["params_after"]} and s["params_after"] < s["params_before"]
    assert all(r["kept_counts_as_rank0"] and r["epi_as_rank0"] for r in ranks)
    records = _records(run)
    assert [r["epoch"] for r in records] == list(range(1, 6))
    assert [r["epoch"] for r in records if r["pruned_now"]] == [s["prune_epoch"]]
    assert records[-1]["test_top1"] > 0.8  # the resharded model trained on
    # Rank 0 alone printed; the run directory holds the last epoch's sharded checkpoint alone.
    for epoch in range(1, 6):
        assert sum(line.startswith(f"epoch   {epoch}/5") for line in out.splitlines()) == 1, out
    assert _rank_lines(err) == []
    assert set(os.listdir(run)) == RUN_FILES | {"checkpoint-5.dcp"}


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_killed_fsdp_run_resumes_to_the_uninterrupted_result(fsdp_runs, tmp_path, when):
    """Killed (torchrun and both ranks, SIGKILL) after the first epoch or after the epoch that
    followed the prune, resumed from the sharded checkpoint: the same decisions, metrics and
    final model as the run that was not stopped."""
    baseline = fsdp_runs[0] / "two"
    out = tmp_path / "run"
    got = _stop_before_or_after(baseline, out, when, "fsdp")
    _resumes_to(baseline, out, got, "fsdp")
