"""The simulated network: delivery order, loss, duplication, partitions, determinism."""

from __future__ import annotations

import random

from kvstore.consensus.types import Message, MessageType
from tests.sim.network import NetworkOptions, SimNetwork


def _msg(sender: str, recipient: str, n: int) -> Message:
    return Message(MessageType.APPEND, recipient, sender, term=1, index=n)


def _drain(net: SimNetwork, until_step: int) -> list[tuple[int, Message, bool]]:
    out = []
    for step in range(until_step + 1):
        out.extend((step, m, ok) for m, _, ok in net.deliverable(step))
    return out


def test_fifo_link_keeps_order_despite_random_delays() -> None:
    opts = NetworkOptions(delay_min_steps=1, delay_mean_steps=6.0, reorder=False)
    net = SimNetwork(random.Random(7), opts)
    for n in range(200):
        net.send(n // 10, _msg("a", "b", n))
    got = [m.index for _, m, _ in _drain(net, 500)]
    assert got == list(range(200))


def test_reordering_link_delivers_everything_out_of_order() -> None:
    opts = NetworkOptions(delay_min_steps=1, delay_mean_steps=6.0, reorder=True)
    net = SimNetwork(random.Random(7), opts)
    for n in range(200):
        net.send(0, _msg("a", "b", n))
    got = [m.index for _, m, _ in _drain(net, 500)]
    assert sorted(got) == list(range(200))
    assert got != list(range(200))


def test_delay_bounds_hold() -> None:
    opts = NetworkOptions(delay_min_steps=2, delay_mean_steps=5.0, delay_max_steps=9, reorder=True)
    net = SimNetwork(random.Random(3), opts)
    for n in range(300):
        net.send(10, _msg("a", "b", n))
    steps = [step for step, _, _ in _drain(net, 100)]
    assert len(steps) == 300
    assert min(steps) >= 12 and max(steps) <= 19
    assert max(steps) > 12  # the delays really vary


def test_drop_and_duplicate_rates_are_roughly_as_asked() -> None:
    opts = NetworkOptions(drop_probability=0.2, duplicate_probability=0.1)
    net = SimNetwork(random.Random(11), opts)
    for n in range(5000):
        net.send(0, _msg("a", "b", n))
    got = [m.index for _, m, _ in _drain(net, 100)]
    lost = 5000 - len(set(got))
    dups = len(got) - len(set(got))
    assert 800 < lost < 1200
    assert 250 < dups < 550


def test_partition_blocks_both_ways_and_swallows_in_flight() -> None:
    net = SimNetwork(random.Random(1), NetworkOptions(delay_min_steps=5, delay_mean_steps=5.0))
    net.send(0, _msg("a", "b", 1))  # in flight when the partition starts
    net.partition(["a"], ["b", "c"])
    assert not net.send(1, _msg("b", "a", 2))
    assert net.send(1, _msg("b", "c", 3))
    items = _drain(net, 20)
    assert [(m.index, ok) for _, m, ok in items] == [(1, False), (3, True)]
    net.heal()
    assert net.send(30, _msg("b", "a", 4))


def test_one_way_block_is_asymmetric() -> None:
    net = SimNetwork(random.Random(1))
    net.block("a", "b")
    assert not net.send(0, _msg("a", "b", 1))
    assert net.send(0, _msg("b", "a", 2))


def test_crashed_node_loses_traffic_to_and_from_it() -> None:
    net = SimNetwork(random.Random(1), NetworkOptions(delay_min_steps=3, delay_mean_steps=3.0))
    net.send(0, _msg("a", "b", 1))
    net.send(0, _msg("b", "c", 2))
    net.send(0, _msg("c", "a", 3))
    net.set_down("b", True)
    assert not net.send(1, _msg("a", "b", 4))
    assert [m.index for _, m, _ in _drain(net, 10)] == [3]


def test_slow_node_adds_delay() -> None:
    net = SimNetwork(random.Random(1), NetworkOptions(delay_min_steps=1, delay_mean_steps=1.0))
    net.set_slow("b", 7)
    net.send(0, _msg("a", "b", 1))
    net.send(0, _msg("a", "c", 2))
    assert [(s, m.index) for s, m, _ in _drain(net, 20)] == [(1, 2), (8, 1)]


def test_same_seed_same_fate() -> None:
    def run(seed: int) -> list[tuple[int, int]]:
        opts = NetworkOptions(drop_probability=0.1, duplicate_probability=0.1,
                              reorder=True, delay_mean_steps=4.0)  # fmt: skip
        net = SimNetwork(random.Random(seed), opts)
        for n in range(300):
            net.send(n % 7, _msg("a", "b", n))
        return [(s, m.index) for s, m, _ in _drain(net, 200)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_in_flight_limit_drops_beyond_it() -> None:
    net = SimNetwork(random.Random(1), NetworkOptions(in_flight_max=10))
    sent = [net.send(0, _msg("a", "b", n)) for n in range(15)]
    assert sent.count(True) == 10
    assert net.in_flight() == 10


def test_one_way_link_delay() -> None:
    net = SimNetwork(random.Random(1), NetworkOptions(delay_min_steps=1, delay_mean_steps=1.0))
    net.set_link_delay("b", "a", 9)
    net.send(0, _msg("a", "b", 1))
    net.send(0, _msg("b", "a", 2))
    assert [(s, m.index) for s, m, _ in _drain(net, 20)] == [(1, 1), (10, 2)]
