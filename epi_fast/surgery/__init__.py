"""Physical channel removal, the optimizer carried over, and pruned models on disk."""

from .counting import count_ops
from .removal import prune, prune_with_masks
from .pretrained import load_pretrained
from .serialize import FORMAT, load_pruned, save_pruned

__all__ = ["prune", "prune_with_masks", "count_ops", "save_pruned", "load_pruned", "load_pretrained", "FORMAT"]
