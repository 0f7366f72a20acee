"""The paper's "when to prune" protocol at small scale: oracle / init / pre-def / EPI.

    python -m experiments.protocol --smoke            # < 60 s, for the test suite
    python -m experiments.protocol --quick            # < 5 min on 2 CPU cores
    python -m experiments.protocol --full             # the reproduction (docs/REPRODUCTION.md)
    python -m experiments.protocol --full --data /path/to/cifar-10-batches-py   # real data

The full run's protocol (MNIST-1D and digits, validation splits, pre-def = deadline = T / 3,
paired t intervals and sign-flip tests) is fixed in config.py and docs/REPRODUCTION.md.

How it works (grid search as it is done in practice). For every (setting, seed, criterion)
the dense network is trained ONCE for T epochs, watched by the shipped
`epi_fast.policy.tracker.StructureTracker` over every ratio of the unit (the part of
`EPIPruner` that watches): `tracker.accumulate()` after every backward, `tracker.epoch_end()`
after every epoch gives the scores, the masks and structures of every ratio and the EPI
values of the tracker's `IndicatorBank`; `tracker.initial` is the t = 0 record (weight
criteria: the initial weights; the gradient criterion: the first optimizer step's Taylor
scores at the initial weights). After every epoch t (and at t = 0, the untrained network) the
protocol stores the whole training state (model, optimizer, LR-schedule position, RNG of the
data order and of torch) and the ranked scores, and feeds the tracker's masks to an
`EarlyBirdIndicator` per ratio and the scores to the rank correlations (App. D).
Every pruned run is then a *branch*: the stored state of epoch e is restored, the network is
pruned with `epi_fast.surgery.prune` at the ratio with the tracker's scores of epoch e
(optimizer carried over), and trained to T on the same schedule (epi_fast.app.training: the
main job's seeding, optimizer, schedule and steps per epoch). The dense trajectory up to
EPI's prune epoch is the EPI-guided run's trajectory, so EPI's run is the branch at that epoch.

Policies (per ratio):
  oracle   the candidate epoch with the best validation top-1 (per seed), its test top-1
  init     branch at e = 0
  predef   branch at a pre-defined epoch fixed before training (T // 3 in the full run)
  epi      branch at EPI's prune epoch, `epi_fast.policy.decision.prune_epoch_for(fired,
           deadline)`: the firing epoch (window 5, patience 5, the criterion's tau: 0.983
           magnitude / 0.944 gradient), or the deadline (the pre-defined epoch in the full run) if it had not fired
           by then, as EPIPruner(deadline_epoch=...) does; the table marks those.

Every unit of work writes one JSON file under <out>/units/ (atomically); a rerun skips the
units whose file exists with the same configuration, so an interrupted run resumes, and a
changed configuration reruns its units. `--aggregate-only` rebuilds the tables and figures
from the unit files (epi_fast 0.1's included); `--dry-run` lists what would run.

Modules: config (modes, recipe, unit configs), data (settings), training (epoch, evaluation),
dense (the tracked dense run), branches (the pruned branches, one unit), timing (the timing
pass), analysis (policies, drops, paired comparisons, costs), stats (t intervals, sign-flip tests), tables, figures, runner (jobs, workers, results),
cli, compare (old-vs-new unit comparison).
"""

from .cli import main

__all__ = ["main"]
