"""The two hot loops of a BPR step on the CPU, compiled by numba: negative sampling's rejection
and the closed-form gradient with its scatter into the tables' dense gradients.

Why compiled: on a small catalogue a step is a few thousand rows of 65 numbers, and in torch
ops it is some 60 kernel launches of per-op and memory-pass cost (ml-100k: 2.2-2.8 ms a step
for 0.3 ms of arithmetic). One loop that reads each row once and adds into the gradient in place
does the same work in a fraction of that (measured: bench/results/vs_recbole.md). CUDA, float64
and sparse (large) tables keep the torch path, which is also the reference these kernels are
tested against (tests/test_mf.py, tests/test_sampling.py).

Compiled code is cached beside this file (``cache=True``; numba falls back to a per-user cache
directory when the package is read-only), so only the first process on a machine compiles.
No fast-math beyond reassociation and contraction: a diverging model must still show NaN.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

JIT = dict(cache=True, nogil=True, boundscheck=False)
REASSOCIATE = {"reassoc", "contract", "nsz", "arcp"}  # lets the row loops vectorise; keeps NaN and inf


def applies(*tables: torch.nn.Embedding) -> bool:
    """Whether the compiled BPR gradient serves these tables: on the CPU, float32, with dense
    gradients (a sparse table's rows go to its sparse optimiser through the torch path)."""
    return all(not t.sparse and t.weight.device.type == "cpu" and t.weight.dtype == torch.float32 for t in tables)


@numba.njit(**JIT)
def first_unseen(users, draws, seen, n_items):
    """For each user r and slot j, the first of ``draws[r, j]`` that ``seen`` (the dense
    users x items table, flattened) does not mark, else the first draw (``NegativeSampler``)."""
    b, k, tries = draws.shape
    picks = np.empty((b, k), np.int64)
    for r in range(b):
        row = users[r] * n_items
        for j in range(k):
            picks[r, j] = draws[r, j, 0]
            for t in range(tries):
                if not seen[row + draws[r, j, t]]:
                    picks[r, j] = draws[r, j, t]
                    break
    return picks


@numba.njit(fastmath=REASSOCIATE, **JIT)
def _bpr_gradient(user_rows, item_rows, users, candidates, l2, user_grad, item_grad):
    b, c = candidates.shape
    d, k = user_rows.shape[1] - 1, c - 1
    shrink = np.float32(2.0 * l2 / b)
    slope = np.float32(1.0 / (b * k))  # dL/dx_j = σ(x_j) / (b k)
    user_grad[:] = 0
    item_grad[:] = 0
    data_loss = squares = np.float32(0.0)
    scores = np.empty(c, np.float32)
    ds = np.empty(c, np.float32)
    for r in range(b):
        u = users[r]
        p = user_rows[u]
        for j in range(c):
            q = item_rows[candidates[r, j]]
            s = q[d]
            for f in range(d):
                s += p[f] * q[f]
            scores[j] = s
        ds[0] = 0
        for j in range(1, c):
            x = scores[j] - scores[0]
            data_loss += max(x, np.float32(0.0)) + np.log1p(np.exp(-abs(x)))  # softplus(x), stable
            ds[j] = slope / (np.float32(1.0) + np.exp(-x))
            ds[0] -= ds[j]
        gu = user_grad[u]
        for f in range(d + 1):  # b_u: only the shrink
            squares += p[f] * p[f]
            gu[f] += shrink * p[f]
        for j in range(c):
            q = item_rows[candidates[r, j]]
            gi = item_grad[candidates[r, j]]
            for f in range(d):
                gu[f] += ds[j] * q[f]
                gi[f] += ds[j] * p[f] + shrink * q[f]
            gi[d] += ds[j] + shrink * q[d]
            for f in range(d + 1):
                squares += q[f] * q[f]
    return data_loss / (b * k) + l2 * squares / b


def bpr_gradient(user: torch.Tensor, item: torch.Tensor, users: torch.Tensor, candidates: torch.Tensor,
                 l2: float) -> torch.Tensor:
    """``mf.pairwise_gradient`` and ``mf.set_gradient`` in one pass: sets the dense ``.grad`` of
    the weights ``user`` and ``item`` (reused across steps) and returns the batch's loss."""
    for weight in (user, item):
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
    loss = _bpr_gradient(user.detach().numpy(), item.detach().numpy(), users.numpy(), candidates.numpy(), l2,
                         user.grad.numpy(), item.grad.numpy())
    return torch.tensor(loss)
