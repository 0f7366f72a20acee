"""Experiments that reproduce the paper's protocol at small scale (see docs/REPRODUCTION.md)."""
