"""The supplementary's App. E at small scale: EPI on object detection against a grid search.

    python -m experiments.appe --smoke      # < 2 min, for the test suite
    python -m experiments.appe --quick      # a few minutes
    python -m experiments.appe --full       # docs/DETECTION_APPE.md (resumable units)

App. E prunes SSD300 (ResNet-34) on PASCAL VOC with the magnitude criterion at 9% and 40%,
EPI's window scaled to the schedule (r = 50 of 800 epochs) and tau = 0.983, and compares
EPI's prune epoch with a grid search over prune epochs. Here: `ssd_resnet18` on the embedded
digit canvases (`epi_fast.detection`), the same ratios, criterion and tau, the window
`scaled_window(T)`; per seed one dense run watched by the shipped `StructureTracker` (both
ratios), its full training state kept after every epoch; every pruned run is a branch that
restores epoch e, prunes with the tracker's scores of that epoch (optimizer state carried
over) and trains to T. The grid's best epoch is chosen on validation mAP@0.5 and reported
on test; the dense detector is the upper bound. One unit = one seed, written atomically;
a rerun skips finished units, so the run resumes.
"""

from .cli import main

__all__ = ["main"]
