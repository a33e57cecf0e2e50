"""Hot loops of the gradient models' steps on the CPU, compiled by numba: BPR's negative
sampling (``first_unseen``) and closed-form gradient with its scatter (``bpr_gradient``), and
SparseAdam's update of the rows a sparse gradient touches (``SparseAdam``).

Why compiled: on a small catalogue a step is a few thousand rows of 65-128 numbers, and in torch
ops it is tens of kernel launches of per-op and memory-pass cost (ml-100k BPR: 2.2-2.8 ms a step
for 0.3 ms of arithmetic; SparseAdam's coalesce: 4.6 ms of a NeuMF step). One loop that reads
each row once does the same work in a fraction of that (bench/results/vs_recbole.md). CUDA,
float64 and (for BPR) sparse tables keep the torch path, which is also the reference these
kernels are tested against (tests/test_mf.py, tests/test_sampling.py, tests/test_kernels.py).

Compiled code is cached beside this file (``cache=True``; numba falls back to a per-user cache
directory when the package is read-only), so only the first process on a machine compiles (about
2 s); a process's first call still costs about 0.5 s of numba's own start-up. No fast-math beyond
reassociation and contraction: a diverging model must still show NaN.
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


@numba.njit(fastmath=REASSOCIATE, **JIT)
def _lazy_adam(rows, values, param, exp_avg, exp_avg_sq, slot, step_size, beta1, beta2, eps):
    """SparseAdam's update of the rows a sparse gradient names, duplicates summed first (as its
    coalesce does). ``slot`` (-1 per table row) marks where a row's sum is kept; left all -1."""
    d = values.shape[1]
    touched = np.empty(len(rows), np.int64)
    summed = np.empty((len(rows), d), np.float32)
    n = 0
    for r in range(len(rows)):
        row = rows[r]
        if slot[row] < 0:
            slot[row] = n
            touched[n] = row
            for f in range(d):
                summed[n, f] = values[r, f]
            n += 1
        else:
            for f in range(d):
                summed[slot[row], f] += values[r, f]
    keep1, keep2 = np.float32(1 - beta1), np.float32(1 - beta2)
    for t in range(n):
        row = touched[t]
        slot[row] = -1
        for f in range(d):
            g = summed[t, f]
            m = exp_avg[row, f] + (g - exp_avg[row, f]) * keep1
            v = exp_avg_sq[row, f] + (g * g - exp_avg_sq[row, f]) * keep2
            exp_avg[row, f] = m
            exp_avg_sq[row, f] = v
            param[row, f] -= np.float32(step_size) * m / (np.sqrt(v) + np.float32(eps))


class SparseAdam(torch.optim.SparseAdam):
    """torch's SparseAdam (same arguments, state and update, so checkpoints move between the two)
    with its update compiled: torch coalesces each step's gradient (a sort and a reduction) and
    updates through sparse tensors, some 20 ops a table; here one pass sums duplicate rows and
    updates each touched row once. For CPU float32 tables (``torch_base`` picks it)."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self._slots = {}  # per table: -1 per row, the kernel's scratch (not state: never saved)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise NotImplementedError("closures are not used by recsearch's training loop")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("SparseAdam does not support dense gradients, please consider Adam instead")
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                step = state["step"]
                step_size = float(group["lr"]) * (1 - beta2**step) ** 0.5 / (1 - beta1**step)
                grad = -p.grad if group["maximize"] else p.grad
                slot = self._slots.setdefault(p, np.full(len(p), -1, np.int64))
                _lazy_adam(grad._indices()[0].numpy(), grad._values().contiguous().numpy(), p.numpy(),
                           state["exp_avg"].numpy(), state["exp_avg_sq"].numpy(), slot, step_size, beta1, beta2,
                           group["eps"])
