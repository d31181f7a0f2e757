"""Which partners witness a log, and the quorum: stable, spread evenly, linear in the network."""

from __future__ import annotations

from collections import Counter

from service.audit.witness_choice import choose_witnesses, quorum

NODES = [f"node-{i:02d}" for i in range(20)]


def test_each_log_asks_a_fixed_number_and_each_node_witnesses_about_that_many() -> None:
    load: Counter[str] = Counter()
    for node in NODES:
        chosen = choose_witnesses(f"entente.dev/log/{node}", [n for n in NODES if n != node], 5)
        assert len(chosen) == 5 and node not in chosen
        load.update(chosen)
    assert sum(load.values()) == 5 * len(NODES)  # N·w checks in the whole network, not N²
    assert max(load.values()) <= 12  # spread: nobody checks every log (mean 5)


def test_the_choice_is_stable_when_a_partner_joins_or_leaves() -> None:
    origin = "entente.dev/log/node-00"
    before = choose_witnesses(origin, NODES[1:], 5)
    after_join = choose_witnesses(origin, [*NODES[1:], "node-99"], 5)
    assert len(set(before) - set(after_join)) <= 1  # the newcomer displaces at most one
    gone = before[0]
    after_leave = choose_witnesses(origin, [n for n in NODES[1:] if n != gone], 5)
    assert set(before) - {gone} <= set(after_leave)  # only the one who left is replaced


def test_small_networks_ask_everyone_and_zero_means_everyone() -> None:
    assert choose_witnesses("o", ["b", "a"], 5) == ["a", "b"]
    assert choose_witnesses("o", NODES, 0) == sorted(NODES)


def test_the_quorum_is_a_majority_unless_configured() -> None:
    assert [quorum(n) for n in (0, 1, 2, 3, 4, 5)] == [0, 1, 2, 2, 3, 3]
    assert quorum(5, 2) == 2 and quorum(2, 9) == 9  # configured higher than there are: unmet
