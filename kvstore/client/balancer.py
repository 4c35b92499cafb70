"""Load balancers: which member a client sends its next read to.

A balancer chooses among the endpoints it is given on each call, so the client can narrow or
widen the candidate list (a redirect found a new leader, a member was removed) without telling
it. Every balancer is safe to share between threads: each keeps its state behind one lock.

`observe()` feeds back the outcome of each request: its latency when it was answered, and
whether the member worked (`ok=False` means the connection failed or the member said it was
unavailable; an application error such as "key too long" is `ok=True`).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, get_args, runtime_checkable

from kvstore.errors import InvalidArgumentError

__all__ = [
    "BALANCER_NAMES",
    "Balancer",
    "BalancerName",
    "LeastLatency",
    "RandomBalancer",
    "RoundRobin",
    "WeightedRoundRobin",
    "make_balancer",
]

BalancerName = Literal["weighted", "round_robin", "random", "latency"]
"""A built-in balancer by name: "weighted" (`WeightedRoundRobin`), "round_robin", "random" or
"latency" (`LeastLatency`)."""

BALANCER_NAMES: tuple[BalancerName, ...] = get_args(BalancerName)
"""The names `make_balancer` (and `kvstore.Client(balancer=...)`) accepts."""


@runtime_checkable
class Balancer(Protocol):
    """Chooses one endpoint per request and may learn from how each request went."""

    def pick(self, endpoints: Sequence[str]) -> str:
        """Return one of `endpoints` (never empty) for the next request."""
        ...

    def observe(self, endpoint: str, latency_s: float | None, ok: bool) -> None:
        """Record how a request to `endpoint` went; `latency_s` is None when it got no answer."""
        ...


def _check_endpoints(endpoints: Sequence[str]) -> None:
    if not endpoints:
        raise InvalidArgumentError("no endpoints to pick from")


class RoundRobin:
    """Each endpoint in turn. The position survives changes to the list (it is a counter)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0

    def pick(self, endpoints: Sequence[str]) -> str:
        """Return the next endpoint in cyclic order."""
        _check_endpoints(endpoints)
        with self._lock:
            i = self._next % len(endpoints)
            self._next = i + 1
        return endpoints[i]

    def observe(self, endpoint: str, latency_s: float | None, ok: bool) -> None:
        """Ignored: round-robin does not adapt."""


class RandomBalancer:
    """A uniformly random endpoint. Pass a seeded `random.Random` for reproducible choices."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = rng if rng is not None else random.Random()

    def pick(self, endpoints: Sequence[str]) -> str:
        """Return an endpoint drawn uniformly at random."""
        _check_endpoints(endpoints)
        with self._lock:
            i = self._rng.randrange(len(endpoints))
        return endpoints[i]

    def observe(self, endpoint: str, latency_s: float | None, ok: bool) -> None:
        """Ignored: random choice does not adapt."""


class _Peer:
    __slots__ = ("current", "effective", "weight")

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.effective = weight
        self.current = 0.0


class WeightedRoundRobin:
    """nginx's smooth weighted round-robin.

    On every pick each candidate's `current` grows by its effective weight; the candidate with
    the highest `current` wins and gives back the sum of all effective weights. Over one period
    each endpoint is picked in proportion to its weight, spread out rather than in runs: weights
    5:1:1 give a, a, b, a, c, a, a.

    A failure (`observe(..., ok=False)`) lowers the endpoint's effective weight by
    `weight / max_fails` (never below zero); each later pick in which it takes part gives back
    `weight / recovery_picks`, so it returns to its full share gradually instead of being
    flooded the moment it comes back. Endpoints missing from `weights` weigh `default_weight`.
    """

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        *,
        default_weight: float = 1.0,
        max_fails: int = 2,
        recovery_picks: int = 10,
    ) -> None:
        weights = dict(weights or {})
        for endpoint, weight in [*weights.items(), ("default_weight", default_weight)]:
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
                raise InvalidArgumentError(f"weight of {endpoint} must be > 0, got {weight!r}")
        if max_fails < 1 or recovery_picks < 1:
            raise InvalidArgumentError("max_fails and recovery_picks must be >= 1")
        self._lock = threading.Lock()
        self._default_weight = float(default_weight)
        self._max_fails = max_fails
        self._recovery_picks = recovery_picks
        self._peers: dict[str, _Peer] = {e: _Peer(float(w)) for e, w in weights.items()}

    def _peer(self, endpoint: str) -> _Peer:
        peer = self._peers.get(endpoint)
        if peer is None:
            peer = self._peers[endpoint] = _Peer(self._default_weight)
        return peer

    def pick(self, endpoints: Sequence[str]) -> str:
        """Return the endpoint with the highest current weight after this round's increase."""
        _check_endpoints(endpoints)
        with self._lock:
            total = 0.0
            best: _Peer | None = None
            best_endpoint = endpoints[0]
            for endpoint in endpoints:
                peer = self._peer(endpoint)
                peer.current += peer.effective
                total += peer.effective
                if peer.effective < peer.weight:
                    # Recovery after failures: a little more of its weight back on every pick.
                    peer.effective = min(
                        peer.weight, peer.effective + peer.weight / self._recovery_picks
                    )
                # Strictly greater: ties go to the earliest endpoint, as in nginx.
                if best is None or peer.current > best.current:
                    best, best_endpoint = peer, endpoint
            assert best is not None  # endpoints is not empty
            best.current -= total
            return best_endpoint

    def observe(self, endpoint: str, latency_s: float | None, ok: bool) -> None:
        """On failure, lower the endpoint's effective weight by `weight / max_fails`."""
        if ok:
            return
        with self._lock:
            peer = self._peer(endpoint)
            peer.effective = max(0.0, peer.effective - peer.weight / self._max_fails)

    def effective_weight(self, endpoint: str) -> float:
        """The endpoint's current effective weight (its configured weight when healthy)."""
        with self._lock:
            return self._peer(endpoint).effective


class LeastLatency:
    """Power of two choices over an exponentially weighted moving average of latency.

    Each pick draws two distinct candidates at random and takes the one with the lower average.
    An endpoint never observed counts as 0 s, so new members get tried at once. A failure counts
    as a sample of `failure_penalty_s`. With probability `explore` the slower of the two is
    taken instead, so an endpoint that was slow once is measured again later rather than
    shunned forever on an old average.
    """

    def __init__(
        self,
        rng: random.Random | None = None,
        *,
        alpha: float = 0.3,
        failure_penalty_s: float = 1.0,
        explore: float = 0.02,
    ) -> None:
        if not 0 < alpha <= 1:
            raise InvalidArgumentError(f"alpha must be in (0, 1], got {alpha}")
        if failure_penalty_s < 0 or not 0 <= explore < 1:
            raise InvalidArgumentError("failure_penalty_s must be >= 0 and explore in [0, 1)")
        self._lock = threading.Lock()
        self._rng = rng if rng is not None else random.Random()
        self._alpha = alpha
        self._failure_penalty_s = failure_penalty_s
        self._explore = explore
        self._ewma_s: dict[str, float] = {}

    def pick(self, endpoints: Sequence[str]) -> str:
        """Return the faster of two randomly drawn endpoints."""
        _check_endpoints(endpoints)
        if len(endpoints) == 1:
            return endpoints[0]
        with self._lock:
            # Two distinct indices; cheaper than rng.sample() on this hot path.
            n = len(endpoints)
            i = self._rng.randrange(n)
            j = self._rng.randrange(n - 1)
            if j >= i:
                j += 1
            a, b = endpoints[i], endpoints[j]
            if self._ewma_s.get(b, 0.0) < self._ewma_s.get(a, 0.0):
                a, b = b, a
            if self._explore and self._rng.random() < self._explore:
                return b
            return a

    def observe(self, endpoint: str, latency_s: float | None, ok: bool) -> None:
        """Fold the latency (or the failure penalty) into the endpoint's average."""
        sample = latency_s if ok and latency_s is not None else None
        if not ok:
            sample = self._failure_penalty_s
        if sample is None:
            return
        with self._lock:
            old = self._ewma_s.get(endpoint)
            self._ewma_s[endpoint] = sample if old is None else old + self._alpha * (sample - old)

    def latency_s(self, endpoint: str) -> float | None:
        """The endpoint's average latency, or None if nothing was observed yet."""
        with self._lock:
            return self._ewma_s.get(endpoint)


def make_balancer(
    balancer: BalancerName | Balancer,
    weights: Mapping[str, float] | None = None,
    *,
    rng: random.Random | None = None,
) -> Balancer:
    """Return `balancer` itself if it is an instance, else build the one it names.

    `weights` (endpoint -> weight) matters only to "weighted"; `rng` seeds "random" and
    "latency".
    """
    if not isinstance(balancer, str):
        if not isinstance(balancer, Balancer):
            raise InvalidArgumentError(
                f"balancer must be a name or a Balancer, got {type(balancer).__name__}"
            )
        return balancer
    if balancer == "weighted":
        return WeightedRoundRobin(weights)
    if balancer == "round_robin":
        return RoundRobin()
    if balancer == "random":
        return RandomBalancer(rng)
    if balancer == "latency":
        return LeastLatency(rng)
    raise InvalidArgumentError(
        f"balancer must be one of {', '.join(BALANCER_NAMES)}; got {balancer!r}"
    )
