"""epi_fast: decide when to prune a network during training (the Early Pruning Indicator), and prune it fast."""
