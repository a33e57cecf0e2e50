"""Users' recent events, what ``POST /events`` appends and ``/recommend/user`` reads, in bounded memory.

``RecentEvents`` is the plain store: per user, the newest ``max_events_per_user`` (timestamp,
item) events in time order (equal timestamps in arrival order), for at most ``max_users`` users;
the user whose latest append is oldest is forgotten first (least recently active). Item and user
ids are raw strings, so the events survive a hot swap to a model with other contiguous ids.

``EventStore`` is the Serve deployment that holds one ``RecentEvents`` for the application: one
replica, which every ``Recommender`` replica calls through a deployment handle, so an event sent
to any replica is seen by all of them at their next request. It lives in memory only: a restart
of its replica (or a redeploy of the application) loses the events.
"""

from __future__ import annotations

import bisect
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from recsearch.serving import DEFAULT_MAX_EVENT_USERS, DEFAULT_MAX_EVENTS_PER_USER


class EventLimits(BaseModel):
    """The ``EventStore``'s ``user_config``: the memory it may use, at most
    ``max_users * max_events_per_user`` events (each an item id of the catalogue and a float)."""

    model_config = ConfigDict(extra="forbid")

    max_users: int = Field(DEFAULT_MAX_EVENT_USERS, ge=1, le=10_000_000, description="users tracked at once")
    max_events_per_user: int = Field(DEFAULT_MAX_EVENTS_PER_USER, ge=1, le=10_000,
                                     description="newest events kept per user")


@dataclass
class Appended:
    held: int  # events now held for the user
    dropped: int  # of theirs dropped to stay within max_events_per_user (the oldest)


class RecentEvents:
    """Bounded recent events per user; every method is atomic (one lock)."""

    def __init__(self, limits: EventLimits | None = None):
        self.limits = limits or EventLimits()
        self._users: OrderedDict[str, list[tuple[float, int, str]]] = OrderedDict()  # oldest activity first
        self._arrivals = 0  # orders events of equal timestamp by arrival
        self._lock = threading.Lock()

    def append(self, user: str, items: list[str], timestamps: list[float]) -> Appended:
        """Add already validated events; all of them or, on any error, none."""
        with self._lock:
            events = list(self._users.get(user, ()))
            for item, timestamp in zip(items, timestamps, strict=True):
                bisect.insort(events, (timestamp, self._arrivals, sys.intern(item)))  # one copy per item id
                self._arrivals += 1
            dropped = max(0, len(events) - self.limits.max_events_per_user)
            self._users[user] = events[dropped:]
            self._users.move_to_end(user)
            self._trim()
            return Appended(held=len(events) - dropped, dropped=dropped)

    def recent(self, users: list[str]) -> dict[str, list[str]]:
        """Items of those of ``users`` that have events, oldest first."""
        with self._lock:
            return {user: [item for _, _, item in self._users[user]] for user in set(users) if user in self._users}

    def history(self, user: str) -> tuple[list[str], list[float]]:
        """(items, timestamps) of a user's events, oldest first."""
        with self._lock:
            events = self._users.get(user, [])
            return [item for _, _, item in events], [timestamp for timestamp, _, _ in events]

    def resize(self, limits: EventLimits) -> None:
        """New limits; what exceeds them is dropped at once (oldest events, least active users)."""
        with self._lock:
            self.limits = limits
            for user, events in self._users.items():
                self._users[user] = events[max(0, len(events) - limits.max_events_per_user):]
            self._trim()

    def counts(self) -> tuple[int, int]:
        """(users tracked, events held)."""
        with self._lock:
            return len(self._users), sum(len(events) for events in self._users.values())

    def _trim(self) -> None:
        while len(self._users) > self.limits.max_users:
            self._users.popitem(last=False)


@serve.deployment(name="EventStore", num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class EventStore:
    """The application's one ``RecentEvents`` (one replica: it is the shared state)."""

    def __init__(self):
        self.events = RecentEvents()

    def reconfigure(self, user_config: dict) -> None:
        self.events.resize(EventLimits.model_validate(user_config))

    def append(self, user: str, items: list[str], timestamps: list[float]) -> Appended:
        return self.events.append(user, items, timestamps)

    def recent(self, users: list[str]) -> dict[str, list[str]]:
        return self.events.recent(users)

    def history(self, user: str) -> tuple[list[str], list[float]]:
        return self.events.history(user)
