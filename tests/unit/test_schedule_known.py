"""Which QIDs the schedule knows (never scheduled twice): those waiting in the heap and
those taken off it and not finished, kept as ``due`` and ``taken`` without a third
table of every queued QID."""

from __future__ import annotations

from smtprelay.delivery.schedule import Schedule


def test_a_qid_taken_off_the_heap_stays_known_until_forgotten() -> None:
    schedule = Schedule()
    schedule.enqueue("A", 10.0)
    schedule.enqueue("A", 5.0)  # known: the second enqueue is ignored
    assert schedule.due == {"A": 10.0} and len(schedule) == 1

    assert schedule.pop() == (10.0, "A")
    assert "A" in schedule and len(schedule) == 1  # under attempt
    schedule.enqueue("A", 1.0)  # the intake or the loader announcing it again
    assert "A" not in schedule.due and not schedule.heap

    schedule.forget("A")
    assert "A" not in schedule and len(schedule) == 0
    schedule.enqueue("A", 20.0)
    assert schedule.due == {"A": 20.0}


def test_a_push_after_an_attempt_counts_the_qid_once() -> None:
    schedule = Schedule()
    schedule.enqueue("A", 1.0)
    schedule.enqueue("B", 2.0)
    assert schedule.pop() == (1.0, "A")
    schedule.push("A", 600.0)  # deferred: back on the heap
    assert len(schedule) == 2 and schedule.taken == set()
    assert schedule.pop() == (2.0, "B")
    assert schedule.pop() == (600.0, "A")
    assert schedule.taken == {"A", "B"} and len(schedule) == 2


def test_a_flush_of_everything_takes_parked_qids_back_onto_the_heap() -> None:
    schedule = Schedule()
    for n, qid in enumerate("ABC"):
        schedule.enqueue(qid, float(n))
    schedule.pop()  # A: parked behind a busy destination, say
    schedule.pop()  # B: under attempt
    schedule.replace({**schedule.due, "A": 0.0})
    assert schedule.taken == {"B"} and set(schedule.due) == {"A", "C"}
    assert len(schedule) == 3


def test_forgetting_a_waiting_qid_drops_its_heap_entry() -> None:
    schedule = Schedule()
    schedule.enqueue("A", 1.0)
    schedule.forget("A")  # deleted by the operator
    assert schedule.pop() is None  # its entry is superseded, skipped
    assert "A" not in schedule and len(schedule) == 0
