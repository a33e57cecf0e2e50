"""Machinery shared by the gradient-trained families (MF, NCF, LSTM): the network and its
optimiser, device-resident shuffled batches, mixed precision and a resumable state."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from typing import Any

import torch
from torch import nn

from recsearch.data.dataset import Dataset, ServingData
from recsearch.models import kernels
from recsearch.models.base import IterativeRecommender, UnsupportedOperation
from recsearch.models.sampling import NegativeSampler
from recsearch.runtime import keep_freed_memory


def bf16_is_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class FusedAdam(torch.optim.Adam):
    """torch's fused Adam (same arguments, state and update, so checkpoints move between the two)
    whose step hands its lists straight to the fused kernel: ``torch.optim.Adam.step`` checks and
    regroups the tensors by device and dtype on every call, 45 of the 59 us a step of NCF's seven
    dense tensors take on the CPU (ml-100k NeuMF at RecBole's batch, 79 steps an epoch: 2-3%).
    torch's own step where this one would not do what it does: a first step (it makes the
    state), a parameter without a gradient, a group of several devices or dtypes, amsgrad, AdamW's
    decay, grad scaling, capturable or differentiable groups, a closure."""

    def __init__(self, params, **kwargs):
        super().__init__(params, fused=True, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        groups = []
        for group in self.param_groups:
            params = group["params"]
            if (closure is not None or group["amsgrad"] or group["decoupled_weight_decay"] or group["capturable"]
                    or group["differentiable"] or getattr(self, "grad_scale", None) is not None
                    or any(p.grad is None or p not in self.state for p in params)
                    or len({(p.device, p.dtype) for p in params}) > 1):
                return super().step(closure)
            groups.append((group, params, [self.state[p] for p in params]))
        for group, params, states in groups:
            steps = [state["step"] for state in states]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = group["betas"]
            torch._fused_adam_(params, [p.grad for p in params], [state["exp_avg"] for state in states],
                               [state["exp_avg_sq"] for state in states], [], steps, lr=group["lr"], beta1=beta1,
                               beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                               maximize=group["maximize"])
        return None


# Dense parameters step with fused Adam (one kernel over all tensors; ml-100k BPR epoch, one
# thread: 0.113 s against foreach's 0.121, medians of 30 alternating epochs) and the foreach
# implementations of the others (a few ops over all tensors, not a Python loop per tensor:
# torch picks them by default on CUDA only)
OPTIMIZERS = {"adam": FusedAdam, "adagrad": partial(torch.optim.Adagrad, foreach=True),
              "sgd": partial(torch.optim.SGD, foreach=True)}
# for embeddings built with sparse=True: a step reads and writes only the rows the batch touched
# (Adam becomes "lazy": a row's moments decay only when it is used), not the whole table,
# which with 100k users is what an epoch's time would otherwise go to; on the CPU in float32
# Adam's is the same update compiled (``kernels.SparseAdam``), torch's coalescing each step costs more
SPARSE_OPTIMIZERS = {"adam": torch.optim.SparseAdam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}
# Tables up to this many entries get dense gradients: stepping the whole table costs less than
# sorting and coalescing a sparse gradient of the batch's rows. Measured (BPR, one thread, CPU
# seconds per epoch, sparse vs dense): 2,625 x 65 entries (ml-100k) 0.215 vs 0.180; 9,746 x 65
# (ml-1m's shape) 1.86 vs 1.58; 38,000 x 65 4.4 vs 6.8.
SPARSE_ABOVE = 1 << 20


def embedding(n: int, dim: int) -> nn.Embedding:
    """An embedding table, with sparse gradients when it is large (``SPARSE_ABOVE``)."""
    return nn.Embedding(n, dim, sparse=n * dim > SPARSE_ABOVE)


# those sparse gradients come from torch's own embedding backward: opt out of the invariant
# checks explicitly, or sparse Adagrad warns at every step that they are implicitly off
torch.sparse.check_sparse_tensor_invariants.disable()


class TorchRecommender(IterativeRecommender):
    """A recommender whose parameters live in ``self.net`` and are fitted by mini-batch descent.

    Subclasses build the network (``build_network``), say how many training examples an epoch
    has (``n_examples``) and compute the loss of a batch of example indices (``batch_loss``);
    ``backward`` sets the autograd gradient unless a family computes the gradient itself
    (MF's BPR). Examples are indexed, never materialised per sample: batches are slices of one shuffled
    index tensor on the device, so the hot loop has no Python per example. ``l2`` is left to
    ``batch_loss`` (applied to the embeddings a batch touches, as in BPR), not to the optimiser,
    whose weight decay would shrink every embedding row at every step. Embeddings with sparse
    gradients (all of NCF's, MF's when large: ``embedding``) get their own optimiser
    (``SPARSE_OPTIMIZERS``)."""

    # whether the network draws from torch's global RNG when training (nn.Dropout, randn_like):
    # its epochs then run with that RNG seeded from ``self.generator`` (``train_epoch``)
    draws_global_rng = False

    def __init__(self, *, lr: float = 1e-3, l2: float = 0.0, optimizer: str = "adam",
                 batch_size: int = 2048, amp: bool = False, **rest: Any):
        super().__init__(lr=lr, l2=l2, optimizer=optimizer, batch_size=batch_size, amp=amp, **rest)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lr, self.l2, self.batch_size = float(lr), float(l2), int(batch_size)
        # bf16 autocast needs no loss scaling; only where the hardware multiplies bf16 natively
        # (CUDA, CPUs with AVX512-BF16 or AMX), elsewhere emulated bf16 is slower than fp32
        self.amp = bool(amp) and bf16_is_native(self.device)

    # -- what subclasses provide ------------------------------------------------------------
    @abstractmethod
    def build_network(self, data: ServingData) -> nn.Module:
        """The untrained network for these users and items (called with the global RNG seeded
        when training; ``data`` is the training set's ``ServingData``)."""

    @abstractmethod
    def n_examples(self) -> int:
        """Training examples per epoch (interactions, sequences, ...)."""

    @abstractmethod
    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        """Mean loss of the examples ``index`` (a long tensor on the device)."""

    # -- shared machinery -----------------------------------------------------------------
    def prepare(self, train: Dataset) -> None:
        super().prepare(train)
        keep_freed_memory()  # the steps' temporaries: reused, not faulted in anew
        torch.manual_seed(self.seed)
        self.net = self.build_network(self.serving_data).to(self.device)
        self.net.eval()
        sparse = {id(p) for m in self.net.modules() if getattr(m, "sparse", False) for p in m.parameters()}
        groups = {"dense": [p for p in self.net.parameters() if id(p) not in sparse],
                  "sparse": [p for p in self.net.parameters() if id(p) in sparse]}
        sparse_kinds = SPARSE_OPTIMIZERS
        if self.device.type == "cpu" and all(p.dtype == torch.float32 for p in groups["sparse"]):
            sparse_kinds = {**SPARSE_OPTIMIZERS, "adam": kernels.SparseAdam}
        kinds = {"dense": OPTIMIZERS, "sparse": sparse_kinds}
        name = self.hparams["optimizer"]
        self.optimizers = {kind: kinds[kind][name](params, lr=self.lr) for kind, params in groups.items() if params}
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self.epochs_done = 0

    def batches(self, n: int) -> Iterator[torch.Tensor]:
        """Shuffled index batches over ``range(n)``, on the device."""
        order = torch.randperm(n, device=self.device, generator=self.generator)
        yield from order.split(self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """The optimiser's steps in an epoch: ``batches`` over ``n_examples``, the last one short."""
        return -(-self.n_examples() // self.batch_size)

    def autocast(self) -> AbstractContextManager:
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def score(self, users) -> torch.Tensor:
        with self.autocast():  # scores in fp32 whatever the precision inside, so ranks tie no more often
            return super().score(users).float()

    def train_epoch(self) -> float:
        if self.train_data is None:
            raise UnsupportedOperation(f"this {self.family!r} model was loaded from a serving bundle, which holds no "
                                       "training data or optimiser state: resume from the sweep's checkpoints")
        self.net.train()
        total = torch.zeros((), device=self.device)
        n = self.n_examples()
        with self._global_rng_from_generator():
            for index in self.batches(n):
                total += self.train_step(index).float() * len(index)
        self.net.eval()
        self.epochs_done += 1
        return float(total) / max(n, 1)  # one device sync per epoch, not per batch

    @contextmanager
    def _global_rng_from_generator(self) -> Iterator[None]:
        """For families whose layers draw from torch's global RNG (``draws_global_rng``: torch's
        dropout, noise): the epoch runs with that RNG seeded from the model's generator, which
        checkpoints save, and the RNG is put back after. A trial restored in a fresh process then
        draws the same masks and noise as the uninterrupted run; once an epoch suffices, as
        checkpoints fall between epochs."""
        if not self.draws_global_rng:
            yield
            return
        seed = int(torch.randint(1 << 62, (), device=self.device, generator=self.generator))
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(seed)
            yield

    def train_step(self, index: torch.Tensor) -> torch.Tensor:
        """One optimiser step on the examples ``index``; returns their mean loss (detached)."""
        loss = self.backward(index)
        for optimizer in self.optimizers.values():
            optimizer.step()
        return loss

    def backward(self, index: torch.Tensor) -> torch.Tensor:
        """Set the parameters' gradients of the mean loss on the examples ``index`` and return
        that loss (detached). Here by autograd of ``batch_loss``; a family may compute its
        gradient itself."""
        with self.autocast():
            loss = self.batch_loss(index)
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()

    def state(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(),
            "optimizers": {kind: optimizer.state_dict() for kind, optimizer in self.optimizers.items()},
            "generator": self.generator.get_state(),
            "epochs_done": self.epochs_done,
        }

    def serving_state(self) -> dict[str, Any]:
        return {"net": self.net.state_dict()}

    def restore(self, data: ServingData, state: dict[str, Any]) -> None:
        self._attach(data)
        self.net = self.build_network(data).to(self.device)
        self.net.eval()
        self.net.load_state_dict(state["net"])

    def load_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        for kind, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][kind])
        self.generator.set_state(state["generator"].cpu())  # generator states are CPU byte tensors
        self.epochs_done = int(state["epochs_done"])


class PairTrainedRecommender(TorchRecommender):
    """A model whose training examples are the training interactions themselves: (user, item,
    rating) held as device tensors (MF, NCF, deepcf), with a sampler of unseen items when its
    loss wants negatives (``samples_negatives``)."""

    samples_negatives = True

    def prepare(self, train: Dataset) -> None:
        super().prepare(train)
        inter = train.interactions
        self.users = torch.as_tensor(inter.user, device=self.device)
        self.items = torch.as_tensor(inter.item, device=self.device)
        self.ratings = torch.as_tensor(inter.rating, device=self.device)
        self.sampler = (NegativeSampler(self.users, self.items, train.n_users, train.n_items)
                        if self.samples_negatives else None)
        if self.task == "rating" and len(inter):  # rating networks predict around it (``net.mean``)
            self.net.mean.fill_(float(inter.rating.mean()))

    def n_examples(self) -> int:
        return len(self.users)
