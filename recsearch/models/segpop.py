"""Popularity within the user's profile segment: the cold-start floor that knows the profile.

A segment is a combination of values of single-valued user features (``segment``: their names;
default every single-valued user feature, e.g. age bucket x gender x occupation). A user in
segment s scores item i by the smoothed share of the segment's training interactions::

    score(s, i) = (c_si + shrinkage * c_i / C) / (n_s + shrinkage)

``c_si``: interactions of the segment's training users with i, ``n_s`` their total, ``c_i`` and
``C`` the same over everyone: a small segment leans on global popularity, a segment without
training users is global popularity. A user needs only a profile, so held-out users of the
``cold_users`` split and new users at serving time are scored like the others.

Smoothed (``bandwidth`` or ``mismatch`` above 0), ``c_si`` and ``n_s`` pool every segment t
weighted by its closeness to s, a product over the features: exp(-(d / bandwidth)^2 / 2) for a
feature of ranges (age buckets; d: how many buckets apart), ``mismatch`` where another feature
differs, 1 where it agrees. Neighbouring age buckets then lend each other their counts, which
on ml-100k's cold users beats hard segments (bench/cold_start.py). Both 0: hard segments.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field, NonNegativeFloat

from recsearch.data.dataset import ServingData, range_closeness
from recsearch.errors import ConfigError
from recsearch.models.base import Recommender, register


@register("segpop")
class SegmentPopularity(Recommender):
    """Item popularity among the users who share the user's profile segment."""

    feature_path = True

    def __init__(self, segment: list[str] | None = None, shrinkage: NonNegativeFloat = 10.0,
                 bandwidth: NonNegativeFloat = 0.0, mismatch: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0,
                 **common):
        super().__init__(segment=segment, shrinkage=shrinkage, bandwidth=bandwidth, mismatch=mismatch, **common)
        self.segment = None if segment is None else list(segment)
        self.shrinkage, self.bandwidth, self.mismatch = float(shrinkage), float(bandwidth), float(mismatch)

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
        data = self._require_data()
        self.segment_names = self._segment_features(data)
        self.positions = [data.user_features[n].positions() for n in self.segment_names]
        self.pooled = self._pool(self.keys.numpy())  # each segment's counts with its neighbours' lent

    def _pool(self, profiles: np.ndarray, chunk: int = 1024) -> torch.Tensor:
        """Counts for profiles (n, features: codes in ``segment_names``' order) from every segment,
        weighted by closeness (the module's docstring); a profile no segment is close to gets
        none, so global popularity. In chunks of profiles: the weights of one (chunk x segments)
        stay below the counts' (segments x items) size."""
        keys = self.keys.numpy()
        pooled = []
        for start in range(0, max(len(profiles), 1), chunk):  # none: an empty (0, items)
            part = profiles[start : start + chunk]
            weights = np.ones((len(part), len(keys)))
            for column, positions in enumerate(self.positions):
                ours, theirs = part[:, column, None], keys[None, :, column]
                closeness = np.where(ours == theirs, 1.0, self.mismatch)
                if positions is not None and self.bandwidth > 0:  # ranges: by distance, unless one is unknown
                    near = range_closeness(positions, ours, theirs, self.bandwidth)
                    closeness = np.where(np.isnan(near), closeness, near)
                weights *= closeness
            pooled.append(torch.as_tensor(weights, dtype=torch.float32, device=self.device) @ self.counts)
        return torch.cat(pooled)

    def _smoothed(self, rows: torch.Tensor) -> torch.Tensor:
        return (rows + self.shrinkage * self.prior) / (rows.sum(1, keepdim=True) + self.shrinkage)

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return self._smoothed(self.pooled[self.user_segment[users]])

    def _score_user_codes(self, codes: list[list[list[int]]]) -> torch.Tensor:
        names = list(self._require_data().user_features)
        columns = [names.index(n) for n in self.segment_names]
        profiles = np.array([[entity[c][0] for c in columns] for entity in codes], dtype=np.int64)
        return self._smoothed(self._pool(profiles.reshape(len(codes), len(columns))))
