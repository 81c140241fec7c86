"""Which backends a request tries, in which order. Pure: no I/O, no clock.

Every policy returns an order; the proxy sends the request to the first, and moves down the
list only while nothing of an answer has reached the client (a refused connection, a 5xx, a
timeout before the first byte). The policies differ in the order:

- failover: the backends in rotation, as listed.
- primary-overflow: as listed, but those holding `limit` requests in flight go after the ones
  with room; among full backends the last listed comes first, so when everything is full the
  overflow tier (whose provider queues or scales out) takes the excess.
- weighted: a weighted random order of the backends in rotation.

When no backend of a route is in rotation, all of them are tried in the policy's order (a
probe may be stale; trying costs a refused connection, refusing costs the request).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from .routes import Route

_RNG = random.Random()


class Candidate(Protocol):
    name: str
    healthy: bool

    @property
    def full(self) -> bool: ...


def order(route: Route, backends: dict[str, Candidate], rng: random.Random | None = None) -> tuple[list[Candidate], bool]:
    """The backends to try for one request on `route`, best first, and whether any of them
    was in rotation (False: all are out, and all are tried anyway)."""
    listed = [backends[b.deployment] for b in route.backends]
    pool = [b for b in listed if b.healthy]
    in_rotation = bool(pool)
    if not pool:
        pool = listed
    if route.policy == "primary-overflow":
        room = [b for b in pool if not b.full]
        full = [b for b in reversed(pool) if b.full]
        return room + full, in_rotation
    if route.policy == "weighted":
        weights = {b.deployment: (b.weight if b.weight is not None else 1.0) for b in route.backends}
        return weighted_order(pool, [weights[b.name] for b in pool], rng or _RNG), in_rotation
    return pool, in_rotation


def weighted_order(items: Sequence[Candidate], weights: Sequence[float], rng: random.Random) -> list[Candidate]:
    """`items` in a random order where each next one is drawn with probability proportional to
    its weight among those left (sampling without replacement)."""
    left, w = list(items), list(weights)
    out = []
    while left:
        total = sum(w)
        pick = rng.random() * total
        index = 0
        while index < len(left) - 1 and pick >= w[index]:
            pick -= w[index]
            index += 1
        out.append(left.pop(index))
        w.pop(index)
    return out
