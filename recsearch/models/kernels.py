"""Hot loops of the gradient models' steps on the CPU, compiled by numba: BPR's negative
sampling (``first_unseen``) and closed-form gradient with its scatter (``bpr_gradient``),
SparseAdam's update of the rows a sparse gradient touches (``SparseAdam``), and the passes
between NCF's matrix products in its hand-written step (``ncf.NeuMFNetwork.pair_gradient``: a
batch's distinct entities, the first layer from their halves, ReLU with dropout and their
backward, the output layer with its loss, gradients summed per entity; dropout's draws hashed
in place, ``hashed_uniform``), and NCF's scoring of a user against every item
(``tower_logits_``: its products by MKL's sgemm as torch exports it, else numba's ``np.dot``,
users shared among threads by ``on_threads``).

The passes over a batch's pairs and SparseAdam's tables share their work among torch's own
threads (``parallel_kernel``: numba's OpenMP layer on torch's libgomp), which the products
before them have just woken: ml-100k NeuMF epochs 0.139-0.147 s against 0.153-0.158 s with
these loops on one thread, 0.125-0.135 s against 0.141-0.147 s in bf16 (alternating processes,
torch on two threads).

Why compiled: on a small catalogue a step is a few thousand rows of 65-128 numbers, and in torch
ops it is tens of kernel launches of per-op and memory-pass cost (ml-100k BPR: 2.2-2.8 ms a step
for 0.3 ms of arithmetic; SparseAdam's coalesce: 4.6 ms of a NeuMF step). One loop that reads
each row once does the same work in a fraction of that (bench/results/vs_recbole.md). CUDA,
float64 and (for BPR) sparse tables keep the torch path, which is also the reference these
kernels are tested against (tests/test_mf.py, tests/test_sampling.py, tests/test_kernels.py,
tests/test_ncf.py). The NCF kernels take float32 or float64 arrays alike (numba compiles each),
and bf16 activations under ``amp`` (``load``, ``store``).

Compiled code is cached beside this file (``cache=True``; numba falls back to a per-user cache
directory when the package is read-only), so only the first process on a machine compiles (about
6 s for all of them: 1.1 s for BPR's, 4.5 s for the sampler's, SparseAdam's and NCF's, measured on
ml-100k's first epochs; NCF's scoring 2.0 s more, and 0.9 s for each other count of hidden
layers); a process's first call still costs about 0.5 s of numba's own start-up.
No fast-math beyond reassociation and contraction: a diverging model must still show NaN.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

JIT = dict(cache=True, nogil=True, boundscheck=False)


def _openmp() -> bool:
    """Whether numba's OpenMP threading layer loads here."""
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:
        return False
    return True


# Kernels that share their rows among threads run on numba's OpenMP layer: imported after torch,
# it binds to torch's own libgomp (which torch loads globally), so its regions run on torch's
# intra-op threads, already awake from the products before them. On numba's own workqueue pool
# the same pass took longer than on one thread (ReLU's backward, 4,096 x 128: 175 against 127 us;
# on OpenMP 40 us). A layer the user chose (NUMBA_THREADING_LAYER) is kept.
OPENMP = _openmp()
if OPENMP and "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "omp"
_forked = False  # in a child forked from this process: GNU OpenMP's threads do not survive a fork
os.register_at_fork(after_in_child=lambda: globals().update(_forked=True))


class _ParallelKernel:
    """A function compiled with numba's parallel loops (``numba.prange``) on OpenMP where it
    loads, else serially; in a forked child, a serial twin compiled there (numba ends a child that
    starts OpenMP's threads after its parent did). The twin is not cached: numba's cache, keyed
    by the function's name, would hand it the parallel one's code."""

    def __init__(self, py_func: Callable, options: dict):
        self.py_func, self.options = py_func, options
        self.compiled = numba.njit(parallel=OPENMP, **JIT, **options)(py_func)
        self.serial = None

    def __call__(self, *args):
        if not _forked:
            return self.compiled(*args)
        if self.serial is None:
            self.serial = numba.njit(**{**JIT, "cache": False}, **self.options)(self.py_func)
        return self.serial(*args)


def parallel_kernel(**options) -> Callable[[Callable], _ParallelKernel]:
    """``numba.njit(parallel=True, **options)``, as ``_ParallelKernel`` runs it."""
    return lambda py_func: _ParallelKernel(py_func, options)


def set_threads(n: int) -> None:
    """The parallel kernels' threads, for those the calling thread runs (numba's count is per
    thread): at most ``n``, and at most the pool numba started with (``NUMBA_NUM_THREADS``)."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


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
    coalesce does). ``slot`` (-1 per table row) marks where a row's sum is kept; left all -1.
    Rows that come unique (NCF's hand-written step sums per entity) update from ``values``
    themselves, without the copy."""
    d = values.shape[1]
    touched = np.empty(len(rows), np.int64)
    n = 0
    for r in range(len(rows)):
        if slot[rows[r]] < 0:
            slot[rows[r]] = n
            touched[n] = rows[r]
            n += 1
    if n == len(rows):
        summed = values
    else:
        summed = np.zeros((n, d), values.dtype)
        for r in range(len(rows)):
            s = slot[rows[r]]  # read once: the row loop then vectorises (numba's arrays may alias)
            source, target = values[r], summed[s]
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


@numba.njit(**JIT)
def _distinct(ids, slot, rows, inverse, counts):
    n = 0
    for r in range(len(ids)):
        s = slot[ids[r]]
        if s < 0:
            s = slot[ids[r]] = n
            rows[n], counts[n] = ids[r], 0
            n += 1
        inverse[r] = s
        counts[s] += 1
    for k in range(n):
        slot[rows[k]] = -1
    return n


def distinct(ids: torch.Tensor, n_entities: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct ``ids`` in order of first appearance, where each of ``ids`` is among them, and
    how often each occurs (``torch.unique``'s three answers, in one pass, unsorted)."""
    rows, inverse, counts = (np.empty(len(ids), np.int64) for _ in range(3))
    n = _distinct(ids.numpy(), np.full(n_entities, -1, np.int64), rows, inverse, counts)
    return torch.from_numpy(rows[:n]), torch.from_numpy(inverse), torch.from_numpy(counts[:n])


# bfloat16 activations (NCF's step under ``amp``): torch's bf16 tensors seen by numba as uint16
# bit patterns (``as_array``); the passes load each value into float32 (the top half of its
# bits) and store float32 results rounded to nearest even, as torch's casts do. ``load`` and
# ``store`` compile to plain reads and writes for float arrays, so one kernel serves both.
@intrinsic
def _bits_as_float32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _float32_bits(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


def load(row, f):
    """row[f] as a number (float32 for a bf16 row)."""


def store(row, f, x):
    """row[f] = x (rounded to nearest even for a bf16 row; NaN stays NaN). ``x`` a plain variable:
    numba 0.68's inlining of an overload loses the store when an argument is a conditional
    expression."""


@overload(load, inline="always")
def _load(row, f):
    if row.dtype == types.uint16:
        return lambda row, f: _bits_as_float32(np.uint32(row[f]) << np.uint32(16))
    return lambda row, f: row[f]


@overload(store, inline="always")
def _store(row, f, x):
    if row.dtype == types.uint16:
        def store_bf16(row, f, x):
            y = np.float32(x)
            bits = _float32_bits(y)
            rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            nan = np.uint32(y != y)  # arithmetic, not a branch: no phi for numba's inliner to misplace
            row[f] = np.uint16(rounded * (np.uint32(1) - nan) + np.uint32(0x7FC0) * nan)
        return store_bf16

    def store_float(row, f, x):
        row[f] = x
    return store_float


def as_array(t: torch.Tensor) -> np.ndarray:
    """The numpy view of ``t`` the kernels take: its bits as uint16 if bf16 (numpy has no bf16)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def _scalar(t: torch.Tensor) -> type:
    """The kernels' scalar type for arithmetic on ``t``'s values: float32 for bf16."""
    return np.float32 if t.dtype == torch.bfloat16 else t.numpy().dtype.type


# Dropout's uniform draws, hashed from each activation's position and two 32-bit keys drawn
# per layer and step from the model's generator (``dropout_keys``): the same draws here, in the
# compiled passes, and in torch ops for autograd on any device (``hashed_uniform``), and no draws
# stored. torch.rand with a generator fills about 9 ns per value, serially: ml-100k NeuMF at
# dropout 0.2 took 0.55-0.63 s an epoch against 0.34 s at 0 (README "Performance").
# Two rounds of Wellons' lowbias32 (a bijection of 32-bit words with strong avalanche); the
# position wraps at 2^32 activations per layer (16 GiB of fp32, far beyond any batch).
MIX32 = (0x7FEB352D, 0x846CA68B)
UNIFORM_SCALE = 2.0**-24  # the hash's top 24 bits, exactly representable in float32


@numba.njit(**JIT)
def _mix32(x):
    # x: a 32-bit word in a uint64, whose products with 32-bit factors cannot overflow
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(MIX32[0])) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(MIX32[1])) & np.uint64(0xFFFFFFFF)
    return x ^ (x >> np.uint64(16))


@numba.njit(**JIT)
def _hashed_uniform(position, key0, key1):
    word = np.uint64(position) & np.uint64(0xFFFFFFFF)
    return np.float32(_mix32(_mix32(word ^ key0) ^ key1) >> np.uint64(8)) * np.float32(UNIFORM_SCALE)


def _mul32(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(x * factor) mod 2^32 for int64 x in [0, 2^32), without overflowing int64."""
    return (x * (factor & 0xFFFF) + ((x * (factor >> 16)) & 0xFFFF) * 0x10000) & 0xFFFFFFFF


def _mix32_ops(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, MIX32[0])
    x = x ^ (x >> 15)
    x = _mul32(x, MIX32[1])
    return x ^ (x >> 16)


def dropout_keys(generator: torch.Generator | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """A layer's two 32-bit keys for one step, drawn from ``generator`` on ``device`` (the generator's)."""
    return torch.randint(0, 1 << 32, (2,), device=device, generator=generator)


def hashed_uniform(shape: tuple[int, ...], keys: torch.Tensor) -> torch.Tensor:
    """Uniform float32 draws in [0, 1) of ``shape`` from ``keys`` (``dropout_keys``), on the keys'
    device: what the compiled passes compute in place, value for value. On the CPU a compiled
    fill (4096 x 128 draws: 0.66 ms, against 27 ms in torch's int64 ops and 2.5-4.8 ms for
    torch.rand), elsewhere torch ops."""
    if keys.device.type == "cpu":
        out = np.empty(math.prod(shape), np.float32)
        _fill_uniform(out, *_numba_keys(keys)[:2])
        return torch.from_numpy(out).reshape(shape)
    return hashed_uniform_ops(shape, keys)


def hashed_uniform_ops(shape: tuple[int, ...], keys: torch.Tensor) -> torch.Tensor:
    """``hashed_uniform`` in torch ops, for any device."""
    position = torch.arange(math.prod(shape), device=keys.device, dtype=torch.int64) & 0xFFFFFFFF
    hashed = _mix32_ops(_mix32_ops(position ^ keys[0]) ^ keys[1])
    return ((hashed >> 8).to(torch.float32) * UNIFORM_SCALE).reshape(shape)


@numba.njit(**JIT)
def _fill_uniform(out, key0, key1):
    for i in range(len(out)):
        out[i] = _hashed_uniform(i, key0, key1)


def _numba_keys(keys: torch.Tensor | None) -> tuple[np.uint64, np.uint64, bool]:
    if keys is None:
        return np.uint64(0), np.uint64(0), False
    key0, key1 = keys.tolist()
    return np.uint64(key0), np.uint64(key1), True


@numba.njit(fastmath=REASSOCIATE, error_model="numpy", **JIT)
def _relu_dropped(v, position, key0, key1, dropping, threshold, keep):
    """ReLU, then (``dropping``) inverted dropout of the activation at ``position``: one value,
    so that a bf16 pass rounds once what it stores."""
    v = np.float32(0) if v < 0 else v  # not max(): NaN stays NaN, as in torch
    if dropping:
        v = v / keep if _hashed_uniform(position, key0, key1) >= threshold else np.float32(0)
    return v


@parallel_kernel(fastmath=REASSOCIATE, error_model="numpy")
def _relu_dropout(x, key0, key1, dropping, rate, keep):
    width = x.shape[1]
    threshold = np.float32(rate)  # torch compares float32 draws with the rate cast to float32
    for r in numba.prange(len(x)):
        row = x[r]
        for f in range(width):
            v = _relu_dropped(load(row, f), r * width + f, key0, key1, dropping, threshold, keep)
            store(row, f, v)


def relu_dropout_(x: torch.Tensor, keys: torch.Tensor | None, rate: float) -> None:
    """In place on ``x`` (rows, width): ReLU, then inverted dropout that drops where
    ``hashed_uniform(x.shape, keys)`` falls below ``rate`` (none without ``keys``)."""
    scalar = _scalar(x)
    _relu_dropout(as_array(x), *_numba_keys(keys), scalar(rate), scalar(1 - rate))


@parallel_kernel(fastmath=REASSOCIATE, error_model="numpy")
def _first_layer(out, item_part, item_of, user_part, user_of, key0, key1, dropping, rate, keep):
    group = len(out) // len(user_of)
    width = out.shape[1]
    threshold = np.float32(rate)
    for r in numba.prange(len(out)):
        row, a, c = out[r], item_part[item_of[r]], user_part[user_of[r // group]]
        for f in range(width):
            v = _relu_dropped(a[f] + c[f], r * width + f, key0, key1, dropping, threshold, keep)
            store(row, f, v)


def first_layer_(out: torch.Tensor, item_part: torch.Tensor, item_of: torch.Tensor, user_part: torch.Tensor,
                 user_of: torch.Tensor, keys: torch.Tensor | None, rate: float) -> None:
    """NCF's first layer from its halves computed once per distinct entity, into ``out`` (pairs,
    width): row r = ``relu_dropout_`` of item_part[item_of[r]] + user_part[user_of[r // group]],
    the pairs in groups of ``len(out) / len(user_of)`` candidates of one user; ``out`` in the
    parts' precision or bf16."""
    scalar = _scalar(item_part)
    _first_layer(as_array(out), item_part.numpy(), item_of.numpy(), user_part.numpy(), user_of.numpy(),
                 *_numba_keys(keys), scalar(rate), scalar(1 - rate))


@parallel_kernel(fastmath=REASSOCIATE, error_model="numpy")
def _relu_backward(grad, out, keep):
    for r in numba.prange(len(grad)):
        g, o = grad[r], out[r]
        for f in range(g.shape[0]):
            v = load(g, f) / keep if load(o, f) > 0 else np.float32(0)
            store(g, f, v)


def relu_backward_(grad: torch.Tensor, out: torch.Tensor, rate: float) -> None:
    """``relu_dropout_``'s backward, in place on ``grad``, from its output ``out``: a unit passed
    its gradient (divided by 1 - rate) where it came out positive (kept, and positive before)."""
    _relu_backward(as_array(grad), as_array(out), _scalar(grad)(1 - rate))


@parallel_kernel(fastmath=REASSOCIATE)
def _sum_by_entity(grad, item_of, user_of, item_grad, user_grad):
    group = len(grad) // len(user_of)
    for side in numba.prange(2):
        if side == 0:
            item_grad[:] = 0
            for r in range(len(grad)):
                g, gi = grad[r], item_grad[item_of[r]]
                for f in range(g.shape[0]):
                    gi[f] += load(g, f)
        else:
            user_grad[:] = 0
            for r in range(len(grad)):
                g, gu = grad[r], user_grad[user_of[r // group]]
                for f in range(g.shape[0]):
                    gu[f] += load(g, f)


def sum_by_entity(grad: torch.Tensor, item_of: torch.Tensor, user_of: torch.Tensor, n_items: int, n_users: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of ``first_layer_``'s item and user halves, (n_items, width) and (n_users,
    width), from that of its pre-activations ``grad`` (pairs, width): each entity's pairs summed
    (in float32 if ``grad`` is bf16)."""
    dtype = torch.float32 if grad.dtype == torch.bfloat16 else grad.dtype
    item_grad, user_grad = (torch.empty(n, grad.shape[1], dtype=dtype) for n in (n_items, n_users))
    _sum_by_entity(as_array(grad), item_of.numpy(), user_of.numpy(), item_grad.numpy(), user_grad.numpy())
    return item_grad, user_grad


@parallel_kernel(fastmath=REASSOCIATE, error_model="numpy")
def _head_loss(last, h_last, gmf_user, user_of, gmf_item, item_of, h_gmf, bias, slopes):
    """The output layer's logits, then into ``slopes`` each pair's dLoss/dlogit; returns the
    sums of the pairs' losses and of their slopes (float64)."""
    group = len(item_of) // len(user_of)
    n = len(item_of)
    logits = slopes  # the logits first, each replaced by its slope in the last loop
    for r in numba.prange(n):
        x = bias  # the arrays' precision (a float32 bias keeps the sums in float32)
        if len(gmf_item):
            p, q = gmf_user[user_of[r // group]], gmf_item[item_of[r]]
            for f in range(len(h_gmf)):
                x += p[f] * q[f] * h_gmf[f]
        logits[r] = x
    for r in numba.prange(len(last)):  # apart, as in ``_head_backward`` (4,096 pairs: 61 against 86 us)
        a, x = last[r], logits[r]
        for f in range(len(h_last)):
            x += load(a, f) * h_last[f]
        logits[r] = x
    # BCE with logits, the positive first in each group: loss softplus(x) - y x, slope
    # (sigmoid(x) - y) / n, both from one exp(-|x|) (stable for any x; NaN stays NaN)
    loss = slope_sum = 0.0
    for r in numba.prange(n):
        x = logits[r]
        y = 1 if r % group == 0 else 0
        e = np.exp(-abs(x))
        loss += max(x, 0) + np.log1p(e) - y * x
        sigmoid = 1 / (1 + e) if x >= 0 else e / (1 + e)
        slope = (sigmoid - y) / n
        slopes[r] = slope
        slope_sum += slope
    return loss, slope_sum


@parallel_kernel(fastmath=REASSOCIATE, error_model="numpy")
def _head_backward(last, h_last, gmf_user, user_of, gmf_item, item_of, h_gmf, slopes, keep, last_grad,
                   last_grad_sums, gmf_user_grad, gmf_item_grad, h_grad_last, h_grad_gmf):
    group = len(item_of) // len(user_of)
    for part in numba.prange(2):  # the GMF vectors' and the tower's: apart, they share nothing they write
        if part == 0:
            # the GMF vectors' gradients without the factor h_gmf, put in at the end: per pair, a
            # user gathers slope x q and an item slope x p; h_gmf's own gradient is then one
            # product per user
            h_grad_gmf[:] = 0
            gmf_user_grad[:] = 0
            gmf_item_grad[:] = 0
            for r in range(len(item_of) if len(gmf_item) else 0):
                slope = slopes[r]
                p, q = gmf_user[user_of[r // group]], gmf_item[item_of[r]]
                gp, gq = gmf_user_grad[user_of[r // group]], gmf_item_grad[item_of[r]]
                for f in range(len(h_gmf)):
                    gp[f] += slope * q[f]
                    gq[f] += slope * p[f]
            for u in range(len(gmf_user_grad)):
                p, gp = gmf_user[u], gmf_user_grad[u]
                for f in range(len(h_gmf)):
                    h_grad_gmf[f] += p[f] * gp[f]
                    gp[f] *= h_gmf[f]
            for i in range(len(gmf_item_grad)):
                gq = gmf_item_grad[i]
                for f in range(len(h_gmf)):
                    gq[f] *= h_gmf[f]
        else:
            h_grad_last[:] = 0
            last_grad_sums[:] = 0
            for r in range(len(last)):
                slope = slopes[r]
                a, g = last[r], last_grad[r]
                for f in range(len(h_last)):
                    out = load(a, f)
                    h_grad_last[f] += slope * out
                    grad = slope * h_last[f] / keep if out > 0 else np.float32(0)
                    store(g, f, grad)
                    last_grad_sums[f] += load(g, f)  # what was stored (rounded, in bf16)


def bce_head(last: torch.Tensor | None, gmf: tuple[torch.Tensor, torch.Tensor] | None, user_of: torch.Tensor,
             item_of: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rate: float) -> tuple[torch.Tensor, ...]:
    """NCF's output layer and its BCE loss, forward and backward: two passes over the pairs.
    Pairs come in groups of ``len(item_of) / len(user_of)`` candidates of one user, the positive
    first; pair r is user ``user_of[r // group]`` and item ``item_of[r]`` (rows of the distinct
    entities'). ``last`` (pairs, width): the MLP tower's last activations (``relu_dropout_``'s
    output at ``rate``, in the weight's precision or bf16); ``gmf``: the distinct users' and items'
    GMF vectors; ``weight`` (1, dim + width) and ``bias`` (1,): the output layer's. Returns the
    mean loss and the gradients of the output weight and bias, of the tower's last
    pre-activations (ReLU and dropout undone; in ``last``'s precision) and their sum over the
    pairs (the last layer's bias gradient), and of the GMF user and item vectors, each summed
    over its entity's pairs (each None where its input is)."""
    dtype = weight.detach().numpy().dtype
    dim = gmf[0].shape[1] if gmf is not None else 0
    h = weight.detach().numpy()[0]
    none = np.empty((0, 0), dtype)  # what stands for a missing input (numba types arrays, not None)
    users, items = (g.numpy() for g in gmf) if gmf is not None else (none, none)
    tower = as_array(last) if last is not None else none
    tower_grad = torch.empty_like(last) if last is not None else None
    slopes = np.empty(len(item_of), dtype)
    loss, slope_sum = _head_loss(tower, h[dim:], users, user_of.numpy(), items, item_of.numpy(), h[:dim],
                                 dtype.type(bias.item()), slopes)
    user_grad, item_grad, weight_grad = np.empty_like(users), np.empty_like(items), np.empty_like(h)
    tower_sums = np.empty(last.shape[1] if last is not None else 0, dtype)
    _head_backward(tower, h[dim:], users, user_of.numpy(), items, item_of.numpy(), h[:dim], slopes,
                   dtype.type(1 - rate), as_array(tower_grad) if last is not None else none, tower_sums, user_grad,
                   item_grad, weight_grad[dim:], weight_grad[:dim])
    out = [torch.tensor(loss / len(slopes), dtype=weight.dtype), torch.from_numpy(weight_grad)[None],
           torch.tensor([slope_sum], dtype=weight.dtype), tower_grad,
           torch.from_numpy(tower_sums) if last is not None else None]
    out.extend((torch.from_numpy(user_grad), torch.from_numpy(item_grad)) if gmf is not None else (None, None))
    return tuple(out)


def _torch_cpu_library() -> ctypes.CDLL | None:
    """torch's CPU library: its x86 builds link MKL and export MKL's BLAS."""
    try:
        return ctypes.CDLL(str(next((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*"))))
    except (OSError, StopIteration):
        return None


def _mkl_sgemm(lib: ctypes.CDLL | None) -> tuple[Callable, Callable] | None:
    """MKL's Fortran ``sgemm_`` and ``MKL_Set_Num_Threads_Local``, or None. On NeuMF's scoring
    shapes, one thread, 1,682 x 128 by 128 x 64: 156 GFLOP/s against 113 for scipy's OpenBLAS,
    what numba's ``np.dot`` calls."""
    try:
        gemm = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 13)(("sgemm_", lib))
        threads = lib.MKL_Set_Num_Threads_Local
    except (AttributeError, TypeError):  # TypeError: no library
        return None
    threads.restype, threads.argtypes = ctypes.c_int, [ctypes.c_int]
    return gemm, threads


def _mkl_bf16_gemm(lib: ctypes.CDLL | None) -> Callable | None:
    """MKL's ``cblas_gemm_bf16bf16f32`` (bf16 inputs, float32 output; AMX where the CPU has it),
    or None. One thread, 1,682 x 128 by 128 x 64: 646 GFLOP/s."""
    gemm = getattr(lib, "cblas_gemm_bf16bf16f32", None) if lib is not None else None
    if gemm is None:
        return None
    c_int, c_float, c_void_p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    gemm.restype = None
    gemm.argtypes = [c_int, c_int, c_int, c_int, c_int, c_int, c_float, c_void_p, c_int, c_void_p, c_int, c_float,
                     c_void_p, c_int]
    return gemm


_TORCH_CPU = _torch_cpu_library()
MKL_SGEMM = _mkl_sgemm(_TORCH_CPU)
MKL_BF16_GEMM = _mkl_bf16_gemm(_TORCH_CPU) if MKL_SGEMM is not None else None  # threads held by MKL_SGEMM[1]
CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS = 101, 111, 112


def weight_gradient(grad: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight gradient ``grad.T @ inputs`` in float32 from bf16 ``grad`` (rows,
    out) and ``inputs`` (rows, in), both C-contiguous on the CPU: by MKL's bf16 product where
    found, which reads ``grad`` transposed in place and returns float32. torch's bf16 product of
    a transposed operand takes about twice as long (NeuMF's 4,096 pairs, 64 x 128 by 4,096, two
    threads: 137-169 against 81 us), and its bf16 result is then cast."""
    if MKL_BF16_GEMM is None:
        return (grad.T @ inputs).float()
    (rows, n_out), n_in = grad.shape, inputs.shape[1]
    out = torch.empty(n_out, n_in)
    MKL_BF16_GEMM(CBLAS_ROW_MAJOR, CBLAS_TRANS, CBLAS_NO_TRANS, n_out, n_in, rows, 1.0, grad.data_ptr(), n_out,
                  inputs.data_ptr(), n_in, 0.0, out.data_ptr(), n_in)
    return out


def layer_product(y, weight, out, m, gemm, gemm_bf16, scalars, alpha_beta):
    """out[:m] (float32) = y[:m] @ weight.T: ``_product`` for float inputs, MKL's ``gemm_bf16``
    for bf16 bits (chosen by the inputs' type, so that each compiles only its own)."""


@overload(layer_product)
def _layer_product(y, weight, out, m, gemm, gemm_bf16, scalars, alpha_beta):
    if y.dtype == types.uint16:
        def bf16(y, weight, out, m, gemm, gemm_bf16, scalars, alpha_beta):
            n_out, n_in = weight.shape
            gemm_bf16(CBLAS_ROW_MAJOR, CBLAS_NO_TRANS, CBLAS_TRANS, m, n_out, n_in, 1.0, y.ctypes.data, n_in,
                      weight.ctypes.data, n_in, 0.0, out.ctypes.data, n_out)
        return bf16

    def full(y, weight, out, m, gemm, gemm_bf16, scalars, alpha_beta):
        _product(y, weight, out, m, gemm, scalars, alpha_beta)
    return full


@numba.njit(**JIT)
def _product(y, weight, out, m, gemm, scalars, alpha_beta):
    """out[:m] = y[:m] @ weight.T, weight (out, in) C-contiguous: by MKL's ``gemm`` (``sgemm_``,
    column-major: out.T = weight @ y.T) where given, else numba's ``np.dot``. ``scalars`` (5 int32)
    and ``alpha_beta`` (2 float32): scratch for the arguments Fortran takes by reference."""
    if gemm is None:
        if m == len(y):
            np.dot(y, weight.T, out)
        else:
            np.dot(y[:m], weight.T, out[:m])
        return
    n_out, n_in = weight.shape
    scalars[0], scalars[1], scalars[2], scalars[3] = n_out, m, n_in, ord("T")
    scalars[4] = ord("N")
    alpha_beta[0], alpha_beta[1] = 1, 0
    gemm(scalars[3:].ctypes.data, scalars[4:].ctypes.data, scalars[0:].ctypes.data, scalars[1:].ctypes.data,
         scalars[2:].ctypes.data, alpha_beta[0:].ctypes.data, weight.ctypes.data, scalars[2:].ctypes.data,
         y.ctypes.data, scalars[2:].ctypes.data, alpha_beta[1:].ctypes.data, out.ctypes.data, scalars[0:].ctypes.data)


@numba.njit(fastmath=REASSOCIATE, **JIT)
def _tower_logits(logits, user_part, item_part, weights, biases, n_layers, head, first, stride, ins, outs, gemm,
                  gemm_bf16):
    # The activations' buffers hold a block of items: ``ins[k]`` layer k's input (ins[0] the
    # first layer's activations; bf16 bits with ``gemm_bf16``, else float and ins[k + 1] the same
    # array as outs[k]), ``outs[k]`` its float32 product. Loops index whole C-contiguous arrays by
    # row, as slices (of unknown strides to numba) would not vectorise
    x = ins[0]
    n, block = len(item_part), len(x)
    scalars, alpha_beta = np.empty(5, np.int32), np.empty(2, np.float32)
    for u in range(first, len(user_part), stride):
        user = user_part[u]
        for start in range(0, n, block):
            m = min(block, n - start)
            for i in range(m):  # the first layer: first_layer_'s pass without its indexed reads
                target, source = x[i], item_part[start + i]
                for f in range(len(user)):
                    v = user[f] + source[f]
                    v = np.float32(0) if v < 0 else v  # NaN stays NaN
                    store(target, f, v)
            for k in range(n_layers):
                out, bias = outs[k], biases[k]
                layer_product(ins[k], weights[k], out, m, gemm, gemm_bf16, scalars, alpha_beta)
                if k < n_layers - 1:  # ReLU into the next layer's input; the last ReLU is the head's
                    following = ins[k + 1]
                    for i in range(m):
                        row, target = out[i], following[i]
                        for f in range(len(bias)):
                            v = row[f] + bias[f]
                            v = np.float32(0) if v < 0 else v
                            store(target, f, v)
                else:
                    for i in range(m):
                        row = out[i]
                        for f in range(len(bias)):
                            row[f] += bias[f]
            scores = logits[u]
            if n_layers:
                last = outs[n_layers - 1]
                for i in range(m):
                    row, s = last[i], scores[start + i]
                    for f in range(len(head)):
                        v = row[f]
                        s += (0 if v < 0 else v) * head[f]
                    scores[start + i] = s
            else:
                for i in range(m):
                    row, s = x[i], scores[start + i]
                    for f in range(len(head)):
                        s += load(row, f) * head[f]  # the first layer's ReLU already applied
                    scores[start + i] = s


# Items a block of the scoring takes at once: 2^18 first-layer activations (1 MiB of fp32), so
# that they and the next layer's stay in a core's L2 cache. ml-100k's 1,682 items at width 128
# fit one block; at 20,000 items, blocks of 2,048 ran 0.90-0.93 s against 1.30-1.49 s unblocked
# (300 users, layers [128, 64], two threads; bench/perf.py's 10M NCF validation: 396 s against 496)
TOWER_BLOCK_ELEMENTS = 1 << 18


def tower_logits_(logits: torch.Tensor, user_part: torch.Tensor, item_part: torch.Tensor,
                  layers: list[tuple[torch.Tensor, torch.Tensor]], head: torch.Tensor, bf16: bool = False) -> None:
    """NCF's MLP tower for users against every item, in place: ``logits`` (users, items) +=
    ReLU(tower(ReLU(``user_part``[u] + ``item_part``))) @ ``head``, the tower's ``layers`` as
    (weight (out, in), bias) pairs with ReLU between them; float32 CPU tensors without grad.
    ``bf16`` (``amp``, where MKL's bf16 product is found, ``MKL_BF16_GEMM``): the layers' inputs
    and weights in bf16, rounded once from float32, the products summed in float32.
    One compiled function runs a share of the users, a user and a block of items at a time
    (``TOWER_BLOCK_ELEMENTS``), so that the activations stay in the cache from layer to layer,
    and the shares run on torch's threads at once (``on_threads``), each product on its thread
    alone by MKL's ``sgemm_`` (``MKL_SGEMM``; 0.115-0.126 s against 0.140-0.155 s by numba's
    ``np.dot``, ml-100k NeuMF, RecBole's settings, 943 users on two threads) or, where torch
    exports no MKL, by ``np.dot`` (scipy's BLAS): no Python between the passes, where torch's
    products in a Python loop handed the interpreter lock over a few times per user (0.231-0.296 s
    against 0.185-0.237 s for ``np.dot``'s then, README "Performance")."""
    if bf16 and MKL_BF16_GEMM is None:
        raise ValueError("bf16 scoring needs MKL's bf16 product (MKL_BF16_GEMM), which this torch does not export")
    items = item_part.numpy()
    low = np.uint16 if bf16 else items.dtype  # the layers' inputs: bf16 bits, or the parts' precision
    weights = tuple(as_array(weight.to(torch.bfloat16)) if bf16 else np.ascontiguousarray(weight.numpy())
                    for weight, _ in layers)
    biases = tuple(bias.numpy() for _, bias in layers)
    if not layers:  # numba types a tuple by its items: an empty one stands for "no layer"
        weights, biases = (np.empty((0, 0), low),), (np.empty(0, items.dtype),)
    block = max(1, min(len(items), TOWER_BLOCK_ELEMENTS // items.shape[1]))
    gemm, mkl_threads = MKL_SGEMM if MKL_SGEMM is not None and items.dtype == np.float32 else (None, None)

    def share(first: int, stride: int) -> None:
        outs = tuple(np.empty((block, weight.shape[0]), items.dtype) for weight in weights)
        ins = (np.empty((block, items.shape[1]), low),
               *(np.empty(out.shape, low) if bf16 else out for out in outs[:-1]))
        threads = mkl_threads(1) if mkl_threads else None  # this thread's MKL calls on this thread alone
        try:
            _tower_logits(logits.numpy(), user_part.numpy(), items, weights, biases, len(layers), head.numpy(),
                          first, stride, ins, outs, gemm, MKL_BF16_GEMM if bf16 else None)
        finally:
            if mkl_threads:
                mkl_threads(threads)

    with _one_scoring, _one_blas_thread():
        on_threads(share, len(user_part))


# One scoring at a time (a Serve replica may score two batches from two threads): each already
# keeps every thread busy, and threadpoolctl lets one thread at a time set OpenBLAS's limit (it
# ignores the others'), so a scoring outlasting another would run on BLAS's own threads
_one_scoring = threading.Lock()
_blas = None  # threadpoolctl's view of the BLAS libraries loaded, found on first use


def _one_blas_thread():
    """Limits the BLAS numba's ``np.dot`` calls (scipy's) to one thread while in the block: our
    threads each run their own products, and BLAS's own threads would fight them for the cores
    (ml-100k NeuMF scoring: 0.39-0.47 s against 0.24-0.25 s limited)."""
    global _blas
    if _blas is None:
        import scipy.linalg.cython_blas  # noqa: F401  the BLAS numba calls: loaded before the scan
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()  # the scan of loaded libraries (~1 ms), once
    return _blas.limit(limits=1, user_api="blas")


_pools: dict[int, ThreadPoolExecutor] = {}  # by size; threads start on first use


def on_threads(work: Callable[[int, int], None], n: int) -> None:
    """``work(first, stride)`` on ``k = min(n, torch.get_num_threads())`` threads at once, first
    in range(k) and stride k: a share of n units each. For loops of small matrix products, which
    one thread each runs faster than torch's pool shares each product (ml-100k NeuMF scoring:
    1682 x 128 x 64 per user)."""
    k = max(1, min(n, torch.get_num_threads()))
    if k == 1:
        work(0, 1)
        return
    pool = _pools.get(k)
    if pool is None:
        pool = _pools[k] = ThreadPoolExecutor(max_workers=k, thread_name_prefix="recsearch-kernels")
    for done in [pool.submit(work, first, k) for first in range(k)]:
        done.result()


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
        tables = []  # per table with a gradient: _lazy_adam's arguments
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
                slot = self._slots.get(p)
                if slot is None:
                    slot = self._slots[p] = np.full(len(p), -1, np.int64)
                tables.append((grad._indices()[0].numpy(), grad._values().contiguous().numpy(), p.numpy(),
                               state["exp_avg"].numpy(), state["exp_avg_sq"].numpy(), slot,
                               (step_size, beta1, beta2, group["eps"])))
        if tables:
            *arrays, settings = zip(*tables, strict=True)
            _lazy_adam_tables(*arrays, np.array(settings))


@parallel_kernel()
def _lazy_adam_tables(rows, values, params, exp_avgs, exp_avg_sqs, slots, settings):
    """``_lazy_adam`` of each table (tuples of its arguments; ``settings``: a row of step size,
    beta1, beta2 and eps per table), the tables at once on numba's threads: NCF's user and item
    tables, ml-100k, 121 against 186 us one after the other (one table's rows spread over the
    threads ran slower than on one thread)."""
    for t in numba.prange(len(rows)):
        step_size, beta1, beta2, eps = settings[t]
        _lazy_adam(rows[t], values[t], params[t], exp_avgs[t], exp_avg_sqs[t], slots[t], step_size, beta1, beta2, eps)
