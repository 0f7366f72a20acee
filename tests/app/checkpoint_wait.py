"""Shared by the tests that stop a running `epi-fast train` at an epoch's checkpoint."""

import os
import time

import torch


def wait_for_checkpoint(proc, path, epoch, timeout):
    """Returns once the run `proc` has written `path` (checkpoint.pt) with at least `epoch`
    epochs completed; fails if the run ends first or `timeout` seconds pass. The file is read
    again only when its mtime changes (it is replaced atomically, so a read sees a whole file)."""
    deadline, seen = time.monotonic() + timeout, None
    while True:
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before it was stopped: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting for the checkpoint"
        try:
            mtime = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime is not None and mtime != seen:
            seen = mtime
            if torch.load(path, weights_only=True)["epochs_completed"] >= epoch:
                return
        time.sleep(0.01)
