"""A blend: the weighted sum of member models' scores, each standardised per user.

Member ``m`` scores user ``u`` over the catalogue as ``s_m(u)``; the blend scores

    Σ_m  w_m · (s_m(u) - mean(s_m(u))) / std(s_m(u))

so that members on different scales (EASE's regression outputs, MF's dot products, Mult-VAE's
log-probabilities) add up by rank-relevant position rather than by magnitude. A sweep builds one
from its families' winners (``search.blend``, ``recsearch.tuning.blending``: weights chosen
greedily on validation); ``model=blend`` trains one from a recipe::

    recsearch train model=blend 'model.members=[{family: ease, weight: 1.0, hparams: {l2: 376}},
                                                {family: mf, weight: 0.5, epochs: 40}]'

Each member is built by the one factory from its family's constructor defaults and ``hparams``
(not from conf/model/<family>.yaml), on the blend's seed, device and training data; an
iterative member trains ``epochs`` epochs (its family's default when left out), with no early
stopping. Sequential members are refused: the evaluator scores their test part from other
histories than their training ones. A list of recent items (``/recommend/history``, a user's
events) is scored by every member's history path, natively when each has one (EASE, KNN,
RP3beta, Mult-VAE), by fold-in when MF is among them, and blended alike; new users' profiles
and new items go to the serving fallbacks.
"""

from __future__ import annotations

from typing import Any

import torch

from recsearch.data.dataset import ServingData
from recsearch.models.base import Recommender, UnsupportedOperation, model_class, register

MEMBER_KEYS = {"family", "weight", "hparams", "epochs"}
DEFAULT_MEMBERS = ({"family": "ease", "weight": 1.0}, {"family": "itemknn", "weight": 0.5})  # closed-form, quick


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """Each row shifted to mean 0 and scaled to standard deviation 1 (a constant row: all 0)."""
    centred = scores - scores.mean(1, keepdim=True)
    return centred / centred.std(1, keepdim=True).clamp(min=1e-12)


def weighted_sum(parts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Σ weight · part over the parts whose weight is not zero."""
    return sum(weight * part for weight, part in zip(weights, parts, strict=True) if weight)


@register("blend")
class Blend(Recommender):
    def __init__(self, members: list[dict[str, Any]] = DEFAULT_MEMBERS, **kwargs: Any):
        members = [dict(spec) if isinstance(spec, dict) else spec for spec in members]
        super().__init__(members=members, **kwargs)
        from recsearch.models.factory import create

        if not members:
            raise ValueError("members: give at least one member, e.g. [{family: ease, weight: 1.0}]")
        self.weights: list[float] = []
        self.epochs: list[int | None] = []
        self.members: list[Recommender] = []
        for n, spec in enumerate(members):
            where = f"members[{n}]"
            if not isinstance(spec, dict) or "family" not in spec or set(spec) - MEMBER_KEYS:
                raise ValueError(f"{where}: a member is a mapping of {sorted(MEMBER_KEYS)} with at least family, "
                                 f"got {spec!r:.120}")
            cls = model_class(spec["family"])
            if not self.accepts(cls):
                raise ValueError(f"{where}: a blend cannot hold model family {cls.family!r} (sequential, or a blend)")
            weight, epochs = spec.get("weight", 1.0), spec.get("epochs")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise ValueError(f"{where}.weight must be a positive number, got {weight!r}")
            if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
                raise ValueError(f"{where}.epochs must be a positive integer, got {epochs!r}")
            try:
                member = create(cls, spec.get("hparams") or {}, seed=self.seed, device=str(self.device),
                                task=self.task)
            except ValueError as err:  # ConfigError names model.<key>: say which member
                raise ValueError(f"{where}: {err}") from None
            self.members.append(member)
            self.weights.append(float(weight))
            self.epochs.append(epochs)

    @staticmethod
    def accepts(cls: type[Recommender]) -> bool:
        """Whether models of ``cls`` can be members: not sequential (their test scores come from
        other histories than their training ones), not blends."""
        return not cls.reads_sequence and cls is not Blend

    @property
    def reads_features(self) -> bool:
        return any(member.reads_features for member in self.members)

    @property
    def scores_history(self) -> bool:
        """Natively when every member does (EASE, KNN, RP3beta, Mult-VAE)."""
        return all(member.scores_history for member in self.members)

    @property
    def folds_in(self) -> bool:
        """When some member folds a history in (MF) and every other scores it natively."""
        return not self.scores_history and all(m.scores_history or m.folds_in for m in self.members)

    def prepare(self, train) -> None:
        super().prepare(train)
        for member in self.members:
            member.prepare(train)

    def fit_prepared(self, epochs: int | None = None) -> None:
        for member, member_epochs in zip(self.members, self.epochs, strict=True):
            member.fit_prepared(member_epochs if member.iterative else None)

    def state(self) -> dict[str, Any]:
        return {str(n): member.state() for n, member in enumerate(self.members)}

    def load_state(self, state: dict[str, Any]) -> None:
        for n, member in enumerate(self.members):
            member.load_state(state[str(n)])

    def serving_state(self) -> dict[str, Any]:
        return {str(n): member.serving_state() for n, member in enumerate(self.members)}

    def pruned_state(self, top_k: int) -> dict[str, Any]:
        """The serving state with the item-item matrices of its members that have one (EASE,
        KNN, RP3beta) cut to ``top_k`` entries per item; the other members' as they are."""
        state, pruned = {}, False
        for n, member in enumerate(self.members):
            try:
                state[str(n)], pruned = member.pruned_state(top_k), True
            except UnsupportedOperation:
                state[str(n)] = member.serving_state()
        if not pruned:
            raise UnsupportedOperation("no member of this blend has an item-item matrix to prune")
        return state

    def restore(self, data: ServingData, state: dict[str, Any]) -> None:
        self._attach(data)
        for n, member in enumerate(self.members):
            member.restore(data, state[str(n)])

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return self._blended([member.score(users) for member in self.members])

    def _score_history(self, histories) -> torch.Tensor:  # histories checked by score_history
        return self._blended([member._score_history(histories) for member in self.members])

    def _blended(self, scores: list[torch.Tensor]) -> torch.Tensor:
        return weighted_sum([standardised(part) for part in scores], self.weights)
