"""Ray's Arrow tensor columns: how decoded frames and latents travel through Ray Data blocks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def frames_column(frames: list[np.ndarray]) -> pa.Array:
    """A column of uint8 [T,H,W,3] tensors; always variable-shaped so blocks from different tasks unify."""
    from ray.data.extensions import ArrowVariableShapedTensorArray

    return ArrowVariableShapedTensorArray.from_numpy(np.array(frames + [None], dtype=object)[:-1])


def tensor_column(values: np.ndarray) -> pa.Array:
    """A fixed-shape tensor column [n, ...] (latents, text embeddings, generator clips)."""
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(np.ascontiguousarray(values))
