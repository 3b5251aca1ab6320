"""Accepting numpy arrays (or anything with ``__array__``) wherever a tensor is expected, without importing numpy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from torch import Tensor

if TYPE_CHECKING:
    import numpy as np

    TensorOrArray: TypeAlias = Tensor | np.ndarray
else:
    # numpy stays optional at runtime: annotations only need the name.
    TensorOrArray = Tensor


def to_tensor(value: Any, what: str) -> Tensor:
    """``value`` as a torch tensor: tensors pass through, numpy arrays are wrapped without a copy.

    Raises:
        TypeError: ``value`` is neither a tensor nor an array torch can wrap; the message names ``what``.
    """
    if isinstance(value, Tensor):
        return value
    if not hasattr(value, "__array__"):
        raise TypeError(f"{what} must be a torch.Tensor or a numpy array, got {type(value).__name__}")
    try:
        return torch.as_tensor(value)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise TypeError(f"{what}: cannot convert {type(value).__name__} to a tensor ({exc})") from None
