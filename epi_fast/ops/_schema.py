"""Whether an argument is already what an operator's schema takes, for the wrappers.

The compiled operators check their arguments themselves, with the reference's messages (see
``_checks``). What they never see is what the schema refuses or misreads before they run: a list
holding a non-tensor (refused with a RuntimeError that names no element), a ratio given as a
float, a tensor or a bool (a bool would read as 1.0), segment sizes given as ``[]`` (read as
"no segments") or adding up past int64, an offset of 2.5. A wrapper asks these predicates first;
when every argument is in schema form it calls the operator once, and otherwise it runs the
reference's checks of that operator (which convert the argument or raise the reference's error)
and then calls it once.

The list predicates are C functions of ``_C``: about 1 ns an item, where the same test in Python
costs 15-30 ns an item (2-5 us a call on a ResNet-50's 161 tensors, against ~25 us for the
whole operator call). Under torch.compile they report False, so that Dynamo traces the Python
checks instead of a call it cannot see into.
"""

from __future__ import annotations

import torch

from ._ext import _C

_compiling = torch.compiler.is_compiling
_tensor_list, _int_list, _float_list = _C._tensor_list, _C._int_list, _C._float_list
Tensor = torch.Tensor


def tensor_lists(*values) -> bool:
    """Each value is a non-empty list or tuple of tensors (Tensor[]; an empty one gives the
    dispatcher no device to choose a kernel by)."""
    if _compiling():
        return False
    for v in values:
        if not _tensor_list(v):
            return False
    return True


def float_list(value) -> bool:
    """A list or tuple of floats (float[]; ints and bools go through the checks)."""
    return not _compiling() and _float_list(value)


def int_list(value, nonempty: bool = False) -> bool:
    """A list or tuple of ints that int64 holds, adding up within int64 (int[]); with `nonempty`,
    at least one (an empty int[] means "none" to the operators)."""
    return not _compiling() and _int_list(value) and (not nonempty or len(value) > 0)
