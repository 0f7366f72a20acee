"""How pruner_v1_<criterion>.pt were made: EPIPruner of epi_fast 0.1 (commit a41d946), three
epochs of tests/policy/test_pruner.py's loop, then its model, optimizer and pruner states.

    git archive a41d946 epi_fast | tar -x -C /tmp/v01 && cp epi_fast/_C*.so epi_fast/_build_info.json /tmp/v01/epi_fast/ && mkdir /tmp/v01tests
    git show a41d946:tests/test_pruner.py > /tmp/v01tests/test_pruner.py
    PYTHONPATH=/tmp/v01:/tmp/v01tests python tests/policy/data/make_v1_states.py tests/policy/data
"""

import sys

import torch

from test_pruner import make, run_epochs

if __name__ == "__main__":
    import epi_fast

    assert epi_fast.__version__ == "0.1.0", epi_fast.__file__
    torch.set_num_threads(1)  # as test_pruner.py's tests run
    for criterion in ("magnitude", "gradient"):
        model, opt, pruner = make(criterion=criterion, track_ratios=(0.3,), deadline_epoch=7, tau=0.99, reduce="sum")
        run_epochs(model, opt, pruner, 1, 3)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()},
                   f"{sys.argv[1]}/pruner_v1_{criterion}.pt")
