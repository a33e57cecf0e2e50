"""Smaller serving states: tensors stored in fp16 or int8, sparse matrices for pruned weights.

An encoded tensor is a dict naming its codec, so a ``weights.pt`` still describes itself and
is still read with ``torch.load(weights_only=True)``; ``decode`` turns every such dict back
into a float32 (or int64) tensor when the model loads. A compressed model therefore computes
exactly as an fp32 one holding the rounded weights: the variants shrink what is stored and
shipped to each replica, not the replica's memory. (Computing in fp16 instead was no faster
on the 2-core Xeon this was built on: 2.5 ms against 2.2 ms for a batch of 32 users times
EASE's 1682 x 1682 matrix.)

    fp32   floating tensors as they are (what ``Recommender.save`` writes)
    fp16   every floating tensor rounded to half precision
    int8   every floating matrix quantised per row, symmetric: q = round(x / s), s = max|row| / 127,
           one float32 scale per row; vectors (biases, means) stay float32
    csc    a matrix pruned to a few entries per column (``topk_columns``), stored sparse

Every precision stores index tensors (int64) as int32 when their values fit, which loses nothing.
"""

from __future__ import annotations

from typing import Any

import torch

PRECISIONS = ("fp32", "fp16", "int8")
CODEC = "codec"  # the key that marks an encoded tensor
INT32_MAX = 2**31 - 1


def encode(state: Any, precision: str) -> Any:
    """``state`` (nested dicts, lists, tensors, plain values) with its tensors stored in ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return _map(state, lambda tensor: _encode_tensor(tensor, precision))


def decode(state: Any) -> Any:
    """Every encoded tensor of ``state`` back to float32 (int64 for indices); the rest as is."""
    if isinstance(state, dict):
        decoded = {key: decode(value) for key, value in state.items()}
        return _decode_tensor(decoded) if CODEC in decoded else decoded
    if isinstance(state, (list, tuple)):
        return type(state)(decode(value) for value in state)
    return state


def topk_columns(matrix: torch.Tensor, k: int) -> dict[str, Any]:
    """``matrix`` with only the ``k`` largest-magnitude entries of each column kept (ties: the
    lower row), as a ``csc`` encoding; ``decode`` gives the dense pruned matrix back."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top-k must be a positive integer, got {k!r}")
    n_rows, n_columns = matrix.shape
    k = min(k, n_rows)
    columns = matrix.T  # one row per column of the matrix
    kept = torch.topk(columns.abs(), k, dim=1, sorted=False).indices.sort(dim=1).values
    values = columns.gather(1, kept)
    nonzero = values != 0
    indptr = torch.zeros(n_columns + 1, dtype=torch.long)
    torch.cumsum(nonzero.sum(1), 0, out=indptr[1:])
    return {CODEC: "csc", "rows": n_rows, "indptr": indptr, "indices": kept[nonzero], "values": values[nonzero]}


def _map(state: Any, convert) -> Any:
    if isinstance(state, torch.Tensor):
        return convert(state)
    if isinstance(state, dict):  # an encoding already there (a pruned matrix) has its parts encoded
        return {key: _map(value, convert) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_map(value, convert) for value in state)
    return state


def _encode_tensor(tensor: torch.Tensor, precision: str) -> Any:
    if tensor.dtype == torch.int64 and tensor.numel() and -INT32_MAX <= int(tensor.min()) <= int(tensor.max()) <= INT32_MAX:
        return {CODEC: "int32", "data": tensor.to(torch.int32)}
    if not tensor.is_floating_point() or precision == "fp32":
        return tensor
    if precision == "fp16":
        return {CODEC: "fp16", "data": tensor.to(torch.float16)}
    if tensor.dim() < 2:
        return tensor
    rows = tensor.float().reshape(len(tensor), -1)
    scale = rows.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    quantised = torch.round(rows / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return {CODEC: "int8", "data": quantised.reshape(tensor.shape), "scale": scale}


def _decode_tensor(encoded: dict[str, Any]) -> torch.Tensor:
    codec = encoded[CODEC]
    if codec in ("fp16", "int32"):
        return encoded["data"].to(torch.float32 if codec == "fp16" else torch.int64)
    if codec == "int8":
        data = encoded["data"]
        return (data.reshape(len(data), -1).float() * encoded["scale"][:, None]).reshape(data.shape)
    if codec == "csc":
        indptr = encoded["indptr"]
        dense = torch.zeros(int(encoded["rows"]), len(indptr) - 1, device=indptr.device)
        columns = torch.repeat_interleave(torch.arange(len(indptr) - 1, device=indptr.device), indptr.diff())
        dense[encoded["indices"], columns] = encoded["values"].float()
        return dense
    raise ValueError(f"unknown tensor encoding {codec!r} in the weights: written by a newer recsearch?")
