"""Text for the language-model task (`epi-fast train --task lm`): byte tokens, a held-out tail.

- `"pydoc-topics"` (the default): the help texts of Python's standard library module
  `pydoc_data.topics` (the dict `topics`, the text of `help("if")` and the like), its values
  joined with one newline in sorted key order: 79 topics, about 465,000 characters, 466,000
  bytes of UTF-8, shipped with every CPython, so nothing is downloaded.
- A path: a UTF-8 text file of the user's.

The tokens are the bytes of the UTF-8 text (0..255; the models' vocabulary adds one special
token, `epi_fast.models.transformer.END_OF_TEXT`, which the text never holds). The last
`VAL_FRACTION` (10%) of the bytes is the validation split, moved forward to the next character
boundary so that no character is cut in two; the rest is the training split. With the built-in
text that holds out the last topics in key order: the last 8,600 bytes of 'typesmapping', then
'typesmethods', 'typesmodules', 'typesseq', 'typesseq-mutable', 'unary', 'while', 'with' and
'yield' (46,619 bytes; 419,576 for training).

Errors: `FileNotFoundError` for a path that is not there, `ValueError` for anything else that
makes the file unusable (a directory, an empty file, a binary or non-UTF-8 file, a text too
short for the windows); every message is one line that names the file and the problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["BUILTIN_TEXT", "VAL_FRACTION", "TextData", "builtin_text", "read_text_file", "load_text"]

BUILTIN_TEXT = "pydoc-topics"
VAL_FRACTION = 0.1
_MAX_BYTES = 1 << 30  # a text file larger than this is surely not meant for a CPU run


@dataclass
class TextData:
    """The two splits as uint8 token tensors, and where they came from."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    characters: int

    @property
    def num_bytes(self) -> int:
        return int(self.train.numel() + self.val.numel())


def builtin_text() -> str:
    """The text of `pydoc_data.topics.topics`, values in sorted key order joined with newlines."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without its pydoc data
        raise ValueError(f"{BUILTIN_TEXT}: this Python has no pydoc_data.topics; give a text file as --data") from None
    return "\n".join(topics[k] for k in sorted(topics))


def read_text_file(path: str) -> str:
    """The contents of a UTF-8 text file (a leading byte-order mark is dropped)."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a text file")
    try:
        size = os.path.getsize(path)
        if size > _MAX_BYTES:
            raise ValueError(f"{path} is {size / 2**30:.1f} GiB, more than the 1 GiB this task reads")
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ValueError(f"{path} cannot be read: {err.strerror or err}") from None
    if not raw.strip():
        raise ValueError(f"{path} is empty" + (" (only white space)" if raw else " (0 bytes)"))
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"{path} is not a text file: it holds a NUL byte (at offset {nul}), as binary files do")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: byte 0x{raw[err.start]:02x} at offset {err.start} "
                         "is not valid UTF-8 (convert the file, e.g. with iconv -t utf-8)") from None
    return text[1:] if text.startswith("\ufeff") else text


def load_text(spec: str, seq_len: int) -> TextData:
    """`spec` ("pydoc-topics" or a file path) as byte tokens split into training and validation
    text; each split must hold at least one window of `seq_len` + 1 tokens."""
    text = builtin_text() if spec == BUILTIN_TEXT else read_text_file(spec)
    data = text.encode("utf-8")
    n = len(data)
    cut = n - int(n * VAL_FRACTION)
    while cut < n and 0x80 <= data[cut] < 0xC0:  # a UTF-8 continuation byte: not a character start
        cut += 1
    need = seq_len + 1
    if cut < need or n - cut < need:
        raise ValueError(
            f"{spec} is too short for --seq-len {seq_len}: its {n} bytes give {cut} of training text and {n - cut} of "
            f"validation text (the last {VAL_FRACTION:.0%}), and each needs at least one window of {need} bytes; "
            f"give a longer text (at least {need * 10} bytes) or a smaller --seq-len"
        )
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return TextData(name=spec, train=tokens[:cut].clone(), val=tokens[cut:].clone(), characters=len(text))
