"""Hot loops of the gradient models' steps on the CPU, compiled by numba: BPR's negative
sampling (``first_unseen``) and closed-form gradient with its scatter (``bpr_gradient``),
SparseAdam's update of the rows a sparse gradient touches (``SparseAdam``), and the passes
between NCF's matrix products in its hand-written step (``ncf.NeuMFNetwork.pair_gradient``:
ReLU with dropout and their backward, the output layer with its loss, sums over a user's pairs).

Why compiled: on a small catalogue a step is a few thousand rows of 65-128 numbers, and in torch
ops it is tens of kernel launches of per-op and memory-pass cost (ml-100k BPR: 2.2-2.8 ms a step
for 0.3 ms of arithmetic; SparseAdam's coalesce: 4.6 ms of a NeuMF step). One loop that reads
each row once does the same work in a fraction of that (bench/results/vs_recbole.md). CUDA,
float64 and (for BPR) sparse tables keep the torch path, which is also the reference these
kernels are tested against (tests/test_mf.py, tests/test_sampling.py, tests/test_kernels.py,
tests/test_ncf.py). The NCF kernels take float32 or float64 arrays alike (numba compiles each).

Compiled code is cached beside this file (``cache=True``; numba falls back to a per-user cache
directory when the package is read-only), so only the first process on a machine compiles (about
6 s for all of them: 1.1 s for BPR's, 4.5 s for the sampler's, SparseAdam's and NCF's, measured on
ml-100k's first epochs); a process's first call still costs about 0.5 s of numba's own start-up.
No fast-math beyond reassociation and contraction: a diverging model must still show NaN.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

JIT = dict(cache=True, nogil=True, boundscheck=False)
REASSOCIATE = {"reassoc", "contract", "nsz", "arcp"}  # lets the row loops vectorise; keeps NaN and inf
# error_model="numpy" where a kernel divides: IEEE division, as torch's, without the zero check
# that Python's semantics put in the loop and that stops it vectorising


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


@numba.njit(fastmath=REASSOCIATE, error_model="numpy", **JIT)
def _lazy_adam(rows, values, param, exp_avg, exp_avg_sq, slot, step_size, beta1, beta2, eps):
    """SparseAdam's update of the rows a sparse gradient names, duplicates summed first (as its
    coalesce does). ``slot`` (-1 per table row) marks where a row's sum is kept; left all -1."""
    d = values.shape[1]
    touched = np.empty(len(rows), np.int64)
    summed = np.empty((len(rows), d), np.float32)
    n = 0
    for r in range(len(rows)):
        row = rows[r]
        s = slot[row]  # read once: the row loops below then vectorise (numba's arrays may alias)
        source = values[r]
        if s < 0:
            slot[row] = n
            touched[n] = row
            target = summed[n]
            for f in range(d):
                target[f] = source[f]
            n += 1
        else:
            target = summed[s]
            for f in range(d):
                target[f] += source[f]
    keep1, keep2 = np.float32(1 - beta1), np.float32(1 - beta2)
    size, tiny = np.float32(step_size), np.float32(eps)
    for t in range(n):
        row = touched[t]
        slot[row] = -1
        g, m, v, w = summed[t], exp_avg[row], exp_avg_sq[row], param[row]
        for f in range(d):
            m[f] += (g[f] - m[f]) * keep1
            v[f] += (g[f] * g[f] - v[f]) * keep2
            w[f] -= size * m[f] / (np.sqrt(v[f]) + tiny)


@numba.njit(fastmath=REASSOCIATE, error_model="numpy", **JIT)
def _relu_dropout(x, shift, draws, rate, keep):
    group = len(x) // max(len(shift), 1)
    for r in range(len(x)):
        row = x[r]
        if len(shift):
            offset = shift[r // group]
            for f in range(row.shape[0]):
                row[f] += offset[f]
        for f in range(row.shape[0]):
            if row[f] < 0:  # not max(): NaN stays NaN, as in torch
                row[f] = 0
        if len(draws):
            kept = draws[r]
            for f in range(row.shape[0]):
                row[f] = row[f] / keep if kept[f] >= rate else 0


def relu_dropout_(x: torch.Tensor, draws: torch.Tensor | None, rate: float, shift: torch.Tensor | None = None) -> None:
    """In place on ``x`` (rows, width): ReLU of ``x`` (plus, with ``shift`` (groups, width), the
    row's group's shift: ``rows / groups`` consecutive rows a group), then inverted dropout that
    drops where ``draws`` (uniform, like ``x``) fall below ``rate`` (none without ``draws``)."""
    scalar = x.numpy().dtype.type
    empty = np.empty((0, x.shape[1]), x.numpy().dtype)
    _relu_dropout(x.numpy(), empty if shift is None else shift.numpy(), empty if draws is None else draws.numpy(),
                  scalar(rate), scalar(1 - rate))


@numba.njit(fastmath=REASSOCIATE, error_model="numpy", **JIT)
def _relu_backward(grad, out, keep):
    for r in range(len(grad)):
        g, o = grad[r], out[r]
        for f in range(g.shape[0]):
            g[f] = g[f] / keep if o[f] > 0 else 0


def relu_backward_(grad: torch.Tensor, out: torch.Tensor, rate: float) -> None:
    """``relu_dropout_``'s backward, in place on ``grad``, from its output ``out``: a unit passed
    its gradient (divided by 1 - rate) where it came out positive (kept, and positive before)."""
    _relu_backward(grad.numpy(), out.numpy(), grad.numpy().dtype.type(1 - rate))


@numba.njit(fastmath=REASSOCIATE, error_model="numpy", **JIT)
def _bce_head(last, h_last, gmf_user, gmf_item, h_gmf, bias, group, keep, last_grad, gmf_user_grad,
              gmf_item_grad, h_grad_last, h_grad_gmf):
    rows = max(len(last), len(gmf_item))
    slopes = np.empty(rows, last_grad.dtype)  # d loss / d logit, in the arrays' precision
    loss = bias_grad = 0.0
    for r in range(rows):
        x = bias  # the arrays' precision too (a float32 bias keeps the sums below in float32)
        if len(gmf_item):
            p, q = gmf_user[r // group], gmf_item[r]
            for f in range(len(h_gmf)):
                x += p[f] * q[f] * h_gmf[f]
        if len(last):
            a = last[r]
            for f in range(len(h_last)):
                x += a[f] * h_last[f]
        label = 1.0 if r % group == 0 else 0.0  # each group's first candidate is the positive
        loss += max(x, 0.0) - x * label + np.log1p(np.exp(-abs(x)))
        slopes[r] = (1 / (1 + np.exp(-x)) - label) / rows
        bias_grad += slopes[r]
    h_grad_last[:] = 0
    h_grad_gmf[:] = 0
    gmf_user_grad[:] = 0
    for r in range(rows):
        slope = slopes[r]
        if len(gmf_item):
            p, q = gmf_user[r // group], gmf_item[r]
            gp, gq = gmf_user_grad[r // group], gmf_item_grad[r]
            for f in range(len(h_gmf)):
                h_grad_gmf[f] += slope * p[f] * q[f]
                gp[f] += slope * h_gmf[f] * q[f]
                gq[f] = slope * h_gmf[f] * p[f]
        if len(last):
            a, g = last[r], last_grad[r]
            for f in range(len(h_last)):
                h_grad_last[f] += slope * a[f]
                g[f] = slope * h_last[f] / keep if a[f] > 0 else 0
    return loss / rows, bias_grad


def bce_head(last: torch.Tensor | None, gmf: tuple[torch.Tensor, torch.Tensor] | None, weight: torch.Tensor,
             bias: torch.Tensor, group: int, rate: float) -> tuple[torch.Tensor, ...]:
    """NCF's output layer and its BCE loss, forward and backward: two passes over the pairs.
    Rows come in groups of ``group`` candidates of one user, the positive first; ``last`` (rows,
    width): the MLP tower's last activations (``relu_dropout_``'s output at ``rate``); ``gmf``:
    the users' (users, dim) and the pairs' (rows, dim) GMF vectors; ``weight`` (1, dim + width)
    and ``bias`` (1,): the output layer's. Returns the mean loss and the gradients of the output
    weight and bias, of the tower's last pre-activations (ReLU and dropout undone) and of the GMF
    user and pair vectors (each None where its input is)."""
    dtype = weight.detach().numpy().dtype
    dim = gmf[0].shape[1] if gmf is not None else 0
    h = weight.detach().numpy()[0]
    users, pairs = (g.numpy() for g in gmf) if gmf is not None else (np.empty((0, 0), dtype),) * 2
    tower = last.numpy() if last is not None else np.empty((0, 0), dtype)
    tower_grad, user_grad, pair_grad = np.empty_like(tower), np.empty_like(users), np.empty_like(pairs)
    weight_grad = np.empty_like(h)
    loss, bias_grad = _bce_head(tower, h[dim:], users, pairs, h[:dim], dtype.type(bias.item()), group,
                                dtype.type(1 - rate), tower_grad, user_grad, pair_grad, weight_grad[dim:],
                                weight_grad[:dim])
    out = [torch.tensor(loss, dtype=weight.dtype), torch.from_numpy(weight_grad)[None],
           torch.tensor([bias_grad], dtype=weight.dtype)]
    out.append(torch.from_numpy(tower_grad) if last is not None else None)
    out.extend((torch.from_numpy(user_grad), torch.from_numpy(pair_grad)) if gmf is not None else (None, None))
    return tuple(out)


@numba.njit(fastmath=REASSOCIATE, **JIT)
def _group_sum(x, out):
    group = len(x) // len(out)
    out[:] = 0
    for r in range(len(x)):
        source, target = x[r], out[r // group]
        for f in range(source.shape[0]):
            target[f] += source[f]


def group_sum(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Sums of ``x``'s rows in ``groups`` runs of consecutive rows (``x.view(groups, -1, width).sum(1)``)."""
    out = torch.empty(groups, x.shape[1], dtype=x.dtype)
    _group_sum(x.numpy(), out.numpy())
    return out


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
