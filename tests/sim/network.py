"""A simulated, seeded network for the Raft simulator: delays, loss, duplication, partitions.

Modelled on TigerBeetle's packet simulator: every decision (drop, delay, duplicate) is drawn
from the one `random.Random` the cluster owns, so a run replays exactly from its seed. Time is
the simulator's step counter; nothing here reads a clock or sleeps.

A message travels on a directed link `(sender, recipient)`. Each link has its own queue. When
reordering is off, a link is FIFO (a message never overtakes an earlier one on the same link,
like a TCP connection); when it is on, each message gets an independent delay.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kvstore.consensus.types import Message


@dataclass(slots=True)
class NetworkOptions:
    """Fault settings. Probabilities are per message; delays are in simulator steps."""

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    reorder: bool = False
    """Independent delays per message (True) or FIFO links (False)."""
    delay_min_steps: int = 1
    delay_mean_steps: float = 1.0
    """Mean of the delay; the part above `delay_min_steps` is drawn from an exponential."""
    delay_max_steps: int = 50
    """Hard cap on one message's delay, so a run stays bounded."""
    in_flight_max: int = 20_000
    """Messages in flight in the whole network; beyond it new ones are dropped (a full buffer)."""


@dataclass(order=True, slots=True)
class _InFlight:
    deliver_step: int
    seq: int
    msg: Message = field(compare=False)
    payload: Any = field(compare=False, default=None)


class SimNetwork:
    """Carries `Message`s (with an optional opaque payload, e.g. snapshot data) between nodes.

    Faults: random loss, duplication and delay from `options`; partitions as a set of blocked
    directed links (checked at send and again at delivery, so a partition also loses what was
    in flight); slow nodes (extra delay on every link touching them); a node that crashes loses
    everything in flight to and from it (`drop_node`).
    """

    def __init__(self, rng: random.Random, options: NetworkOptions | None = None) -> None:
        self.rng = rng
        self.options = options if options is not None else NetworkOptions()
        self._queue: list[_InFlight] = []
        self._seq = 0
        self._link_last_step: dict[tuple[str, str], int] = {}
        self._blocked: set[tuple[str, str]] = set()
        self._slow_extra_steps: dict[str, int] = {}
        self._link_extra_steps: dict[tuple[str, str], int] = {}
        self._dead: set[str] = set()
        self.stats: dict[str, int] = {"sent": 0, "dropped": 0, "duplicated": 0, "delivered": 0}

    # --- faults ---------------------------------------------------------------------------------

    def block(self, sender: str, recipient: str) -> None:
        """Cut the one-way link `sender -> recipient` (asymmetric partitions use this alone)."""
        self._blocked.add((sender, recipient))

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between nodes of different groups (both directions)."""
        sets = [set(g) for g in groups]
        for i, a in enumerate(sets):
            for b in sets[i + 1 :]:
                for x in a:
                    for y in b:
                        self._blocked.add((x, y))
                        self._blocked.add((y, x))

    def isolate(self, node: str, others: Iterable[str]) -> None:
        """Cut `node` off from every node in `others`, both directions."""
        self.partition([node], [o for o in others if o != node])

    def heal(self) -> None:
        """Remove every partition, slow node and slow link."""
        self._blocked.clear()
        self._slow_extra_steps.clear()
        self._link_extra_steps.clear()

    def set_slow(self, node: str, extra_steps: int) -> None:
        """Add `extra_steps` of delay to every message to or from `node` (0 = normal again)."""
        if extra_steps <= 0:
            self._slow_extra_steps.pop(node, None)
        else:
            self._slow_extra_steps[node] = extra_steps

    def set_link_delay(self, sender: str, recipient: str, extra_steps: int) -> None:
        """Add `extra_steps` of delay on the one-way link `sender -> recipient` (0 = normal)."""
        if extra_steps <= 0:
            self._link_extra_steps.pop((sender, recipient), None)
        else:
            self._link_extra_steps[(sender, recipient)] = extra_steps

    def is_blocked(self, sender: str, recipient: str) -> bool:
        """Whether the link `sender -> recipient` is cut."""
        return (sender, recipient) in self._blocked

    @property
    def partitioned(self) -> bool:
        """Whether any link is cut."""
        return bool(self._blocked)

    def set_down(self, node: str, down: bool) -> list[tuple[Message, Any]]:
        """Mark `node` crashed (nothing is delivered to it) or back up; return what was lost."""
        if down:
            self._dead.add(node)
            return self.drop_node(node)
        self._dead.discard(node)
        return []

    def drop_node(self, node: str) -> list[tuple[Message, Any]]:
        """Forget every message in flight to or from `node`; return them (msg, payload)."""
        kept, lost = [], []
        for flight in self._queue:
            if node in (flight.msg.sender, flight.msg.recipient):
                lost.append((flight.msg, flight.payload))
            else:
                kept.append(flight)
        self._queue = kept
        heapq.heapify(self._queue)
        self.stats["dropped"] += len(lost)
        return lost

    # --- traffic --------------------------------------------------------------------------------

    def _delay(self, sender: str, recipient: str) -> int:
        o = self.options
        extra_mean = o.delay_mean_steps - o.delay_min_steps
        delay = o.delay_min_steps
        if extra_mean > 0:
            delay += int(self.rng.expovariate(1.0 / extra_mean))
        delay += self._slow_extra_steps.get(sender, 0) + self._slow_extra_steps.get(recipient, 0)
        if self._link_extra_steps:
            delay += self._link_extra_steps.get((sender, recipient), 0)
        return min(delay, o.delay_max_steps)

    def _push(self, now: int, msg: Message, payload: Any) -> None:
        link = (msg.sender, msg.recipient)
        step = now + self._delay(msg.sender, msg.recipient)
        if not self.options.reorder:
            # FIFO link: never deliver before the previous message on the same link.
            step = max(step, self._link_last_step.get(link, 0))
            self._link_last_step[link] = step
        self._seq += 1
        heapq.heappush(self._queue, _InFlight(step, self._seq, msg, payload))

    def send(self, now: int, msg: Message, payload: Any = None) -> bool:
        """Put `msg` in flight at step `now`; False if it was lost right away."""
        self.stats["sent"] += 1
        o = self.options
        if (
            (msg.sender, msg.recipient) in self._blocked
            or msg.recipient in self._dead
            or len(self._queue) >= o.in_flight_max
            or (o.drop_probability > 0 and self.rng.random() < o.drop_probability)
        ):
            self.stats["dropped"] += 1
            return False
        self._push(now, msg, payload)
        if o.duplicate_probability > 0 and self.rng.random() < o.duplicate_probability:
            self.stats["duplicated"] += 1
            self._push(now, msg, payload)
        return True

    def deliverable(self, now: int) -> list[tuple[Message, Any, bool]]:
        """Pop every message due by step `now`, in delivery order.

        Each item is `(msg, payload, delivered)`; `delivered` is False when a partition or a
        crash made since it was sent swallowed it (the sender of a snapshot learns of that).
        """
        out: list[tuple[Message, Any, bool]] = []
        q = self._queue
        while q and q[0].deliver_step <= now:
            f = heapq.heappop(q)
            m = f.msg
            ok = (m.sender, m.recipient) not in self._blocked and m.recipient not in self._dead
            self.stats["delivered" if ok else "dropped"] += 1
            out.append((m, f.payload, ok))
        return out

    def in_flight(self) -> int:
        """How many messages are in flight."""
        return len(self._queue)

    def next_delivery_step(self) -> int | None:
        """The step at which the next message is due, or None if nothing is in flight."""
        return self._queue[0].deliver_step if self._queue else None
