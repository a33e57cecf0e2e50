"""Popularity within the user's profile segment: the cold-start floor that knows the profile.

A segment is a combination of values of single-valued user features (``segment``: their names;
default every single-valued user feature, e.g. age bucket x gender x occupation). A user in
segment s scores item i by the smoothed share of the segment's training interactions::

    score(s, i) = (c_si + shrinkage * c_i / C) / (n_s + shrinkage)

``c_si``: interactions of the segment's training users with i, ``n_s`` their total, ``c_i`` and
``C`` the same over everyone: a small segment leans on global popularity, a segment without
training users is global popularity. A user needs only a profile, so held-out users of the
``cold_users`` split and new users at serving time are scored like the others.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import NonNegativeFloat

from recsearch.data.dataset import ServingData
from recsearch.errors import ConfigError
from recsearch.models.base import Recommender, register


@register("segpop")
class SegmentPopularity(Recommender):
    """Item popularity among the users who share the user's profile segment."""

    feature_path = True

    def __init__(self, segment: list[str] | None = None, shrinkage: NonNegativeFloat = 10.0, **common):
        super().__init__(segment=segment, shrinkage=shrinkage, **common)
        self.segment = None if segment is None else list(segment)
        self.shrinkage = float(shrinkage)

    @property
    def reads_features(self) -> bool:
        return True

    def _segment_features(self, data: ServingData) -> list[str]:
        single = [name for name, feature in data.user_features.items() if not feature.multi]
        if self.segment is None:
            if not single:
                raise ConfigError(f"model segpop: dataset {data.name!r} has no single-valued user feature to segment by")
            return single
        wrong = [name for name in self.segment if name not in single]
        if wrong:
            raise ConfigError(f"model.segment: {wrong[0]!r} is not a single-valued user feature of {data.name!r}; "
                             f"those are: {', '.join(single) or 'none'}")
        return self.segment

    def fit_prepared(self, epochs: int | None = None) -> None:
        data = self._require_data()
        names = self._segment_features(data)
        codes = np.stack([data.user_features[n].values for n in names], axis=1)  # single-valued: one per user
        keys, user_segment = np.unique(codes, axis=0, return_inverse=True)
        membership = sp.csr_matrix((np.ones(data.n_users), (user_segment.ravel(), np.arange(data.n_users))),
                                   shape=(len(keys), data.n_users))
        counts = (membership @ data.seen).toarray()  # segment x item training users (a repeat counts once)
        self.load_state({"keys": torch.as_tensor(keys), "user_segment": torch.as_tensor(user_segment.ravel()),
                         "counts": torch.as_tensor(counts, dtype=torch.float32)})

    def state(self):
        return {"keys": self.keys, "user_segment": self.user_segment, "counts": self.counts}

    def load_state(self, state):
        self.keys = state["keys"].cpu()
        self.user_segment = state["user_segment"].to(self.device)
        self.counts = state["counts"].to(self.device)
        total = self.counts.sum(0)
        self.prior = total / total.sum().clamp(min=1)  # c_i / C
        self.segment_names = self._segment_features(self._require_data())

    def _smoothed(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows + self.shrinkage * self.prior) / (rows.sum(1, keepdim=True) + self.shrinkage)

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return self._smoothed(self.counts[self.user_segment[users]])

    def _score_user_codes(self, codes: list[list[list[int]]]) -> torch.Tensor:
        names = list(self._require_data().user_features)
        columns = [names.index(n) for n in self.segment_names]
        index = {tuple(key.tolist()): row for row, key in enumerate(self.keys)}
        rows = [index.get(tuple(entity[c][0] for c in columns)) for entity in codes]
        found = torch.zeros(len(rows), self.n_items, device=self.device)
        for n, row in enumerate(rows):
            if row is not None:  # a segment without training users: its row stays empty, global popularity
                found[n] = self.counts[row]
        return self._smoothed(found)
