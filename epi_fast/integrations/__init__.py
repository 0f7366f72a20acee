"""Callbacks for training frameworks: `epi_fast.integrations.transformers.EPIPruningCallback`
(Hugging Face Trainer). Each module imports its framework; this package imports none."""

__all__: list = []
