"""What the sequential next-item families share (the LSTM/GRU of ``lstm.py``, the self-attention
model of ``sasrec.py``): the token sequences, training on every position at once with a full
softmax, and scoring from the state after a sequence's last token.

Each user's training interactions, in time order (ties in their original order), form the
token sequence ``[BOS, i_1, ..., i_L]`` (item ``i`` is token ``i + 1``; 0 is padding, BOS is
``n_items + 1``). A network reads tokens ``x_1..x_t`` causally and scores the next item over the
whole catalogue:

    h_t = net(x_1, ..., x_t),    p(i_{t+1} = j | x_{<=t}) = softmax(output(h_t))_j

fitted by full-softmax cross-entropy over *every* position of a sequence at once: sequences are
cut into windows of ``max_len + 1`` tokens (input = window[:-1], target = window[1:]), so each
training interaction is a target exactly once per epoch, instead of one truncated sequence per
target item as in the per-target formulation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recsearch.data.dataset import Dataset, ServingData
from recsearch.models.torch_base import TorchRecommender

PAD = 0
TARGET_ROWS_MULTIPLE = 64  # under amp on the CPU (``batch_loss``)
IGNORED = -1  # the padding rows' target: no item


def time_ordered(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, n_users: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Items grouped by user, each user's in time order (ties: original order), and the
    ``(n_users + 1,)`` offsets of each user's slice."""
    order = np.lexsort((np.arange(len(user)), timestamp, user))
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=n_users), out=offsets[1:])
    return np.asarray(item, dtype=np.int64)[order], offsets


def with_bos(items: np.ndarray, offsets: np.ndarray, bos: int) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences ``[bos, item + 1, ...]`` per user, flat, and their offsets."""
    n_users = len(offsets) - 1
    lengths = np.diff(offsets)
    tokens = np.full(len(items) + n_users, bos, dtype=np.int64)
    # user u's items shift right by the u + 1 BOS tokens written before and at its start
    tokens[np.arange(len(items)) + np.repeat(np.arange(1, n_users + 1), lengths)] = items + 1
    return tokens, offsets + np.arange(n_users + 1)


def training_windows(tokens: np.ndarray, offsets: np.ndarray, max_len: int) -> np.ndarray:
    """Cut each token sequence into windows of ``max_len + 1`` tokens, right-padded with
    ``PAD``: every token but a sequence's first is a target (``window[1:]``) in exactly one
    window. Windows are aligned at the end of the sequence, so the most recent context, the
    one scoring sees, is a full window; only a sequence's oldest window may be short."""
    n_targets = np.maximum(np.diff(offsets) - 1, 0)
    n_windows = -(-n_targets // max_len)
    owner = np.repeat(np.arange(len(n_targets)), n_windows)
    rank = np.arange(len(owner)) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)  # 0 = newest
    last = n_targets[owner] - rank * max_len  # position of the window's last target in its sequence
    first = np.maximum(last - max_len + 1, 1)
    start = offsets[owner] + first - 1  # the input token before the first target
    step = np.arange(max_len + 1)
    index = np.minimum(start[:, None] + step, len(tokens) - 1)
    return np.where(step < (last - first + 2)[:, None], tokens[index], PAD)


def tail_inputs(tokens: np.ndarray, offsets: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``max_len`` tokens of each sequence, right-padded, and their lengths: what the
    network reads to score the next item."""
    ends = offsets[1:]
    lengths = np.minimum(ends - offsets[:-1], max_len)
    step = np.arange(max_len)
    index = np.clip((ends - lengths)[:, None] + step, 0, max(len(tokens) - 1, 0))
    inputs = np.where(step < lengths[:, None], tokens[index], PAD)
    return inputs, lengths


def positive_integers(**values: Any) -> None:
    """Raise ``ValueError`` naming the first value that is not an integer >= 1."""
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class NextItemRecommender(TorchRecommender):
    """Next-item recommender over each user's time-ordered training history: trained on every
    position of its windows by full softmax, scored with the next-item log-probabilities.

    ``max_len`` is the longest context read (training windows and scoring); ``l2`` penalises
    the squared norm of the input embeddings a batch reads (mean per token). An empty history
    is scored as the start of a sequence (BOS alone): the learned distribution of users' first
    items. Subclasses build the network (``build_network``), which provides ``embedding`` of the
    tokens (padding 0, items, BOS), ``forward(tokens)``: the states ``(batch, time, hidden)`` of
    right-padded tokens, causal (padding after a position never changes it), and
    ``output(states)``: one logit per item."""

    scores_history = True
    reads_sequence = True
    default_epochs = 30

    def __init__(self, *, max_len: int = 50, dropout: float = 0.0, **rest: Any):
        super().__init__(max_len=max_len, dropout=dropout, **rest)
        positive_integers(max_len=max_len)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.max_len = int(max_len)

    def prepare(self, train: Dataset) -> None:
        super().prepare(train)
        inter = train.interactions
        items, offsets = time_ordered(inter.user, inter.item, inter.timestamp, train.n_users)
        tokens, token_offsets = with_bos(items, offsets, self.bos)
        # built once per prepare and kept on the device: an epoch only slices them
        self.windows = torch.as_tensor(training_windows(tokens, token_offsets, self.max_len), device=self.device)
        inputs, lengths = tail_inputs(tokens, token_offsets, self.max_len)
        self.user_inputs = torch.as_tensor(inputs, device=self.device)
        self.user_lengths = torch.as_tensor(lengths, device=self.device)

    def serving_state(self) -> dict[str, Any]:
        """The network and each user's last ``max_len`` tokens: the order of the training
        interactions reaches the bundle only as these."""
        return {**super().serving_state(), "user_inputs": self.user_inputs, "user_lengths": self.user_lengths}

    def restore(self, data: ServingData, state: dict[str, Any]) -> None:
        super().restore(data, state)
        self.user_inputs = state["user_inputs"].to(self.device, torch.long)
        self.user_lengths = state["user_lengths"].to(self.device, torch.long)
        if self.user_inputs.shape != (self.n_users, self.max_len) or self.user_lengths.shape != (self.n_users,):
            raise ValueError(f"state holds recent items of shape {tuple(self.user_inputs.shape)}, "
                             f"expected {(self.n_users, self.max_len)}")
        if self.user_inputs.numel() and not (0 <= int(self.user_inputs.min()) and int(self.user_inputs.max()) <= self.bos):
            raise ValueError("state holds recent items outside the catalogue")

    @property
    def bos(self) -> int:
        return self.n_items + 1

    def n_examples(self) -> int:
        return len(self.windows)

    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        windows = self.windows[index]
        inputs, targets = windows[:, :-1], windows[:, 1:]
        real = targets != PAD
        # only real targets reach the (costly) output layer
        states, targets = self.net(inputs)[real], targets[real] - 1
        if self.amp and self.device.type == "cpu":
            # bf16 on the CPU multiplies through oneDNN, which builds and caches a kernel for each
            # shape it meets: the count of real targets, which varies by batch, is rounded up
            # with ignored rows (without, the LSTM's process grew 0.1-0.4 GiB an epoch)
            padding = -len(states) % TARGET_ROWS_MULTIPLE
            states, targets = F.pad(states, (0, 0, 0, padding)), F.pad(targets, (0, padding), value=IGNORED)
        loss = F.cross_entropy(self.net.output(states).float(), targets, ignore_index=IGNORED)
        if self.l2:
            loss = loss + self.l2 * self.net.embedding(inputs[real]).float().pow(2).sum(1).mean()
        return loss

    # -- scoring ----------------------------------------------------------------------------
    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return self._score_inputs(self.user_inputs[users], self.user_lengths[users])

    def user_history(self, user: int) -> np.ndarray:
        """The user's last training items in time order: all that scoring reads of the past."""
        tokens = self.user_inputs[user, : int(self.user_lengths[user])].cpu().numpy()
        return tokens[(tokens != PAD) & (tokens != self.bos)] - 1

    def _score_history(self, histories: list[np.ndarray]) -> torch.Tensor:
        """Next-item log-probabilities from the last ``max_len`` tokens of each history (BOS +
        items while they fit); an empty history scores as a sequence start (see class)."""
        lengths = np.array([len(history) for history in histories], dtype=np.int64)
        tokens, token_offsets = with_bos(np.concatenate([*histories, np.empty(0, np.int64)]),
                                         np.concatenate([[0], np.cumsum(lengths)]), self.bos)
        inputs, seq_lengths = tail_inputs(tokens, token_offsets, self.max_len)
        return self._score_inputs(torch.as_tensor(inputs, device=self.device),
                                  torch.as_tensor(seq_lengths, device=self.device))

    def _score_inputs(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log-softmax scores from the state after each row's last real token."""
        if not len(lengths):
            return torch.empty(0, self.n_items, device=self.device)
        inputs = inputs[:, : int(lengths.max())]  # skip columns that are padding in every row
        states = self.net(inputs)
        last = states[torch.arange(len(lengths), device=self.device), lengths - 1]
        return torch.log_softmax(self.net.output(last).float(), dim=1)
