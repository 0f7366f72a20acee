"""Callbacks for training frameworks (Lightning, Hugging Face). Empty in this release."""

__all__: list = []
