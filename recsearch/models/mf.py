"""Biased matrix factorisation, for explicit ratings (MSE) and implicit feedback (BPR, BCE).

Ratings (task=rating, loss mse):  r̂(u, i) = μ + b_u + b_i + p_u · q_i, with μ the training
mean, fitted by   mean (r̂ - r)²  over the training ratings.

Implicit feedback (task=ranking): s(u, i) = b_i + p_u · q_i (μ and b_u shift a user's scores
uniformly and cannot change a ranking), fitted against ``negatives`` sampled items j per
positive (u, i):

    bpr   mean over (u, i, j) of  -log σ(s(u, i) - s(u, j))            (pairwise)
    bce   mean over labelled pairs of  -y log σ(s) - (1 - y) log(1 - σ(s)),  y = 1 / 0
    mse   mean over labelled pairs of  (s - y)²

Every loss adds  l2 · Σ ||e||² / batch  over the embedding rows and biases the batch touches,
a user once per interaction and an item once per use (so rarely seen users and items are not
shrunk at every step). BPR trains on its gradient in closed form (``pairwise_gradient``; on the
CPU compiled, ``kernels.bpr_gradient``), the others by autograd. Scoring all items for a batch of users is one matrix product; a rating
model scores with its predicted ratings.

Fold-in (task=ranking; ``score_history``: serving a user known only by recent items, or a known
user with new events). Item rows stay fixed and the user vector p solves a pairwise least-squares
version of BPR over the history H (distinct items, n = |H|): each history item should outscore
the average item by the margin m the trained users give their own training items,

    min_p  Σ_{i ∈ H} (1/N) Σ_j (s_i - s_j - m)²  +  λ n ||p||²,        s_j = b_j + p · q_j

The squared loss stands in for BPR's softplus(s_j - s_i): scaled to the same curvature at the
margin, ½ σ(m) σ(-m) (x - m)², training's penalty l2 n ||p||² (once per interaction) becomes
λ = 2 l2 / (σ(m) σ(-m)) here (27.7 l2 for ml-100k's default MF, m = 2.46). With d_j = q_j - q̄,
e_j = b_j - b̄, C = (1/N) Σ_j d_j d_jᵀ and c = (1/N) Σ_j d_j e_j, setting the gradient to zero gives

    (Σ_{i ∈ H} d_i d_iᵀ + n (C + λ I)) p = Σ_{i ∈ H} d_i (m - e_i) - n c,

a d x d system per history: closed form, no iterations, at the price of matching BPR's solution
only approximately. Served as anonymous histories, ml-100k's validation users score NDCG@10
0.2307 by fold-in against 0.2353 with their trained vectors and 0.2040 by item similarity
(bench/results/history_scoring_mf.md); with λ = l2 it was 0.1989.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsearch.data.dataset import ServingData
from recsearch.models import kernels
from recsearch.models.base import register
from recsearch.models.torch_base import PairTrainedRecommender, embedding

LOSSES = ("auto", "bpr", "bce", "mse")
DEFAULT_L2 = {"ranking": 1e-2, "rating": 1e-1}  # l2=None picks by task
MIN_FOLD_IN_L2 = 1e-6  # keeps the fold-in system solvable when l2 = 0


class BiasedMF(nn.Module):
    """User rows [p_u, b_u] and item rows [q_i, b_i]: one gather fetches a vector and its bias,
    and the penalty covers both."""

    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.dim = dim
        self.user = embedding(n_users, dim + 1)
        self.item = embedding(n_items, dim + 1)
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=0.1)
            nn.init.zeros_(table.weight[:, dim])
        self.register_buffer("mean", torch.tensor(0.0))  # the training mean rating, for task=rating


def pairwise_gradient(u: torch.Tensor, v: torch.Tensor, l2: float) -> tuple[torch.Tensor, ...]:
    """BPR's loss and its gradient with respect to the rows it read, in closed form, without
    autograd: a step of a small catalogue is all per-op and memory-pass cost, and the graph (the
    gathers' backward above all: a sort-free but slow embedding backward per table) costs more.

    Inputs: user rows ``u`` (b, d + 1) = [p_u, b_u] and item rows ``v`` (b, 1 + k, d + 1) =
    [q, b_i], the positive first, then k negatives. With s = q · p_u + b_i and x_j = s_j - s_pos:

        L = mean over (u, j) of softplus(x_j) + l2 (||u||² + ||v||²) / b
        dL/dx_j = σ(x_j) / (b k),   dL/ds_pos = -Σ_j dL/dx_j
        dL/dp_u = Σ_i dL/ds_i q_i,  dL/dq_i = dL/ds_i p_u,  dL/db_i = dL/ds_i  (+ 2 l2 / b times the row)

    Returns (L, dL/du, dL/dv)."""
    b, d = len(u), u.shape[1] - 1
    p1 = u.clone()
    p1[:, d] = 1  # [p_u, 1]: s = v · p1
    s = torch.bmm(v, p1[:, :, None]).squeeze(2)  # (b, 1 + k)
    x = s[:, 1:] - s[:, :1]
    loss = F.softplus(x).mean() + l2 * (torch.dot(u.view(-1), u.view(-1)) + torch.dot(v.view(-1), v.view(-1))) / b
    ds = torch.empty_like(s)
    torch.sigmoid(x, out=ds[:, 1:]).div_(x.numel())
    ds[:, 0] = -ds[:, 1:].sum(1)
    shrink = 2 * l2 / b
    du = torch.mul(u, shrink)
    for j in range(v.shape[1]):  # one fused pass per candidate, not a (b, 1 + k, d + 1) product and its sum
        du.addcmul_(v[:, j], ds[:, j : j + 1])
    du[:, d] = u[:, d] * shrink  # b_u: only the shrink
    dv = torch.mul(ds[..., None], p1[:, None]).add_(v, alpha=shrink)
    return loss, du, dv


def set_gradient(table: nn.Embedding, index: torch.Tensor, rows: torch.Tensor) -> None:
    """The table's gradient from the gradients of its rows ``index``, as its own backward would
    make it: a sparse tensor of the rows, or the rows summed into a dense gradient (reused)."""
    weight = table.weight
    if table.sparse:
        weight.grad = torch.sparse_coo_tensor(index[None], rows, weight.shape)
    else:
        if weight.grad is None:
            weight.grad = torch.zeros_like(weight)
        weight.grad.zero_().index_add_(0, index, rows)


@register("mf")
class MatrixFactorization(PairTrainedRecommender):
    """Biased MF; ``loss="auto"`` is mse for task=rating and bpr for task=ranking."""

    tasks = ("ranking", "rating")

    def __init__(self, dim: int = 64, loss: str = "auto", negatives: int = 1, lr: float = 5e-3,
                 l2: float | None = None, optimizer: str = "adam", batch_size: int = 2048, amp: bool = False,
                 **common):
        if l2 is None:  # ratings overfit sooner: ml-100k wants 10x the penalty of BPR
            l2 = DEFAULT_L2.get(common.get("task", "ranking"), 0.0)  # an unknown task: the base refuses it
        super().__init__(dim=dim, loss=loss, negatives=negatives, lr=lr, l2=l2, optimizer=optimizer,
                         batch_size=batch_size, amp=amp, **common)
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if self.task == "rating" and loss not in ("auto", "mse"):
            raise ValueError(f"task=rating fits ratings with loss mse, not {loss!r}")
        if int(negatives) < 1:
            raise ValueError(f"negatives must be >= 1, got {negatives}")
        self.dim, self.negatives = int(dim), int(negatives)
        self.loss = loss if loss != "auto" else ("mse" if self.task == "rating" else "bpr")

    def build_network(self, data: ServingData) -> nn.Module:
        return BiasedMF(data.n_users, data.n_items, self.dim)

    @property
    def samples_negatives(self) -> bool:
        return self.task == "ranking"


    # -- training ---------------------------------------------------------------------------
    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        users, candidates = self._batch(index)
        user_rows, item_rows = self.net.user(users), self.net.item(candidates)  # gathered once: score and penalty
        scores = self._pair_scores(user_rows[:, None, :], item_rows)  # (b, 1 + negatives)
        if self.task == "rating":
            data_loss = F.mse_loss(scores, self.ratings[index][:, None])
        elif self.loss == "bpr":  # -log σ(s_pos - s_neg) = softplus(s_neg - s_pos)
            data_loss = F.softplus(scores[:, 1:] - scores[:, :1]).mean()
        else:
            labels = torch.zeros_like(scores)
            labels[:, 0] = 1.0
            data_loss = (F.binary_cross_entropy_with_logits(scores, labels) if self.loss == "bce"
                         else F.mse_loss(scores, labels))
        # for ranking b_u gets no gradient but this one: it stays at its initial 0
        penalty = user_rows.square().sum() + item_rows.square().sum()
        return data_loss + self.l2 * penalty / len(index)

    def backward(self, index: torch.Tensor) -> torch.Tensor:
        """BPR: what autograd of ``batch_loss(index)`` does, in closed form: compiled on the CPU
        (``kernels.bpr_gradient``), else ``pairwise_gradient`` and ``set_gradient``; the other
        losses by autograd."""
        if self.loss != "bpr":
            return super().backward(index)
        with torch.no_grad():
            users, candidates = self._batch(index)
            user, item = self.net.user, self.net.item
            if kernels.applies(user, item):
                return kernels.bpr_gradient(user.weight, item.weight, users, candidates, self.l2)
            items = candidates.view(-1)
            user_rows = user.weight.index_select(0, users)
            item_rows = item.weight.index_select(0, items).view(*candidates.shape, -1)
            loss, user_grad, item_grad = pairwise_gradient(user_rows, item_rows, self.l2)
            set_gradient(user, users, user_grad)
            set_gradient(item, items, item_grad.flatten(0, 1))
        return loss

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The users of the examples ``index`` and their candidate items (b, 1 + negatives), the
        positive first (a rating model: only the rated item)."""
        users, items = self.users[index], self.items[index]
        if not self.samples_negatives:
            return users, items[:, None]
        return users, torch.cat([items[:, None], self.sampler.sample(users, self.negatives, self.generator)], 1)

    def _pair_scores(self, user_rows: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
        """Ratings μ + b_u + b_i + p_u · q_i (task=rating) or ranking scores b_i + p_u · q_i of
        broadcastable rows [p, b_u] and [q, b_i]."""
        d = self.dim
        scores = (user_rows[..., :d] * item_rows[..., :d]).sum(-1) + item_rows[..., d]
        if self.task == "rating":
            scores = scores + user_rows[..., d] + self.net.mean
        return scores

    # -- inference --------------------------------------------------------------------------
    def _score(self, users: torch.Tensor) -> torch.Tensor:
        d, items, user_rows = self.dim, self.net.item.weight, self.net.user(users)
        scores = torch.addmm(items[:, d], user_rows[:, :d], items[:, :d].T)
        if self.task == "rating":  # full predicted ratings, so that ranking them is meaningful too
            scores += self.net.mean + user_rows[:, d : d + 1]
        return scores

    def _predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self._pair_scores(self.net.user(users), self.net.item(items))

    # -- fold-in (see the module's docstring) -----------------------------------------------
    @property
    def folds_in(self) -> bool:
        """Ranking only: events carry no ratings to fold a rating model's user in from."""
        return self.task == "ranking"

    def _score_history(self, histories: list[np.ndarray]) -> torch.Tensor:
        d, items = self.dim, self.net.item.weight
        return torch.addmm(items[:, d], self.fold_in(histories).to(items.dtype), items[:, :d].T)

    def fold_in(self, histories: list[np.ndarray]) -> torch.Tensor:
        """User vectors p (float64, ``(len(histories), dim)``) solving the fold-in system; an
        empty history gets p = 0 (scores: the item biases)."""
        centred, offsets, gram, cross, margin = self._fold_in_terms()
        l2 = self.fold_in_penalty(float(margin))
        vectors = torch.zeros(len(histories), self.dim, dtype=torch.float64, device=self.device)
        for row, history in enumerate(histories):
            distinct = torch.as_tensor(np.unique(history), device=self.device)
            if not len(distinct):
                continue
            n, d_h = len(distinct), centred[distinct]
            system = d_h.T @ d_h + n * (gram + l2 * torch.eye(self.dim, dtype=torch.float64, device=self.device))
            vectors[row] = torch.linalg.solve(system, d_h.T @ (margin - offsets[distinct]) - n * cross)
        return vectors

    def fold_in_penalty(self, margin: float) -> float:
        """λ = 2 l2 / (σ(m) σ(-m)), at least ``MIN_FOLD_IN_L2`` (see the module's docstring)."""
        slope = 1.0 / (1.0 + np.exp(-margin)) / (1.0 + np.exp(margin))  # σ(m) σ(-m)
        return max(2.0 * self.l2 / slope, MIN_FOLD_IN_L2)

    def _fold_in_terms(self) -> tuple[torch.Tensor, ...]:
        """(d_j, e_j, C, c, m) of the module's docstring, float64, cached until the weights change."""
        user, item = self.net.user.weight, self.net.item.weight
        key = (user.data_ptr(), user._version, item.data_ptr(), item._version)
        if getattr(self, "_fold_in_cache", (None,))[0] != key:
            d = self.dim
            factors, biases = item[:, :d].detach().double(), item[:, d].detach().double()
            centred, offsets = factors - factors.mean(0), biases - biases.mean()
            gram, cross = centred.T @ centred / len(centred), centred.T @ offsets / len(centred)
            # mean over seen pairs (u, i) of p_u · d_i + e_i, as Σ_u p_u · (X D)_u + Σ X e: no pair materialised
            seen = self.serving_data.seen
            summed = torch.as_tensor(seen @ centred.cpu().numpy(), device=self.device)
            total = (user[:, :d].detach().double() * summed).sum() + float(np.asarray(seen.sum(0)).ravel() @ offsets.cpu().numpy())
            margin = total / seen.nnz if seen.nnz else torch.tensor(1.0, dtype=torch.float64, device=self.device)
            self._fold_in_cache = (key, (centred, offsets, gram, cross, margin))
        return self._fold_in_cache[1]
