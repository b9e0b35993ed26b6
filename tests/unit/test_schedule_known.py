"""The schedule: which QIDs it knows (never scheduled twice) -- those waiting to be due and
those taken off it and not finished, kept as ``due`` and ``taken`` without a third table
of every queued QID -- and the order it gives them out in, from the heap of later times
and the line of those due already when pushed."""

from __future__ import annotations

from smtprelay.delivery.schedule import Schedule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(schedule: Schedule) -> list[str]:
    """Every QID the schedule gives out now, in order (superseded entries skipped)."""
    out: list[str] = []
    while (head := schedule.next_due()) is not None and head <= schedule.clock():
        popped = schedule.pop()
        if popped is not None:
            out.append(popped[1])
    return out


def test_a_qid_taken_off_the_schedule_stays_known_until_forgotten() -> None:
    schedule = Schedule(Clock())
    schedule.enqueue("A", 10.0)
    schedule.enqueue("A", 5.0)  # known: the second enqueue is ignored
    assert schedule.due == {"A": 10.0} and len(schedule) == 1

    assert schedule.pop() == (10.0, "A")
    assert "A" in schedule and len(schedule) == 1  # under attempt
    schedule.enqueue("A", 1.0)  # the intake or the loader announcing it again
    assert "A" not in schedule.due and not schedule.heap and not schedule.ready

    schedule.forget("A")
    assert "A" not in schedule and len(schedule) == 0
    schedule.enqueue("A", 20.0)
    assert schedule.due == {"A": 20.0}


def test_due_and_later_entries_come_out_in_time_order() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    schedule.enqueue("late", 1300.0)  # on the heap
    schedule.enqueue("due1", 990.0)  # in the ready line
    schedule.enqueue("soon", 1100.0)
    schedule.enqueue("due2", 900.0)  # due already: first in, first out among those
    assert drain(schedule) == ["due1", "due2"]
    assert schedule.next_due() == 1100.0
    clock.now = 1200.0
    assert drain(schedule) == ["soon"]
    assert schedule.next_due() == 1300.0
    clock.now = 1300.0
    assert drain(schedule) == ["late"]
    assert schedule.next_due() is None
    assert schedule.taken == {"due1", "due2", "soon", "late"}


def test_a_heap_entry_earlier_than_the_ready_line_goes_first() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    schedule.enqueue("B", 1050.0)  # heap
    clock.now = 1100.0
    schedule.enqueue("A", 1080.0)  # ready: due when pushed, but later than B
    assert drain(schedule) == ["B", "A"]


def test_a_push_after_an_attempt_counts_the_qid_once() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    schedule.enqueue("A", 1000.0)
    schedule.enqueue("B", 1000.0)
    assert schedule.pop() == (1000.0, "A")
    schedule.push("A", 1600.0)  # deferred: back on the heap
    assert len(schedule) == 2 and schedule.taken == set()
    assert drain(schedule) == ["B"]
    clock.now = 1600.0
    assert drain(schedule) == ["A"]
    assert schedule.taken == {"A", "B"} and len(schedule) == 2


def test_a_ready_entry_moved_to_a_later_time_waits_for_it() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    schedule.enqueue("A", 1000.0)  # ready
    schedule.push("A", 1500.0)  # rescheduled: the ready entry is superseded
    schedule.enqueue("B", 1000.0)
    assert schedule.next_due() == 1000.0  # B's, not A's stale entry
    assert drain(schedule) == ["B"]
    assert schedule.next_due() == 1500.0
    clock.now = 1500.0
    assert drain(schedule) == ["A"]  # once, although it was in both


def test_a_flush_of_everything_takes_parked_qids_back_and_keeps_the_order() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    for qid, due in (("C", 950.0), ("A", 900.0), ("B", 900.0), ("D", 2000.0)):
        schedule.enqueue(qid, due)
    schedule.pop()  # C: parked behind a busy destination, say
    schedule.pop()  # A: under attempt
    schedule.replace({**schedule.due, "C": 1000.0})
    assert schedule.taken == {"A"} and set(schedule.due) == {"B", "C", "D"}
    assert len(schedule) == 4
    assert drain(schedule) == ["B", "C"]  # by time, then QID; D is not due
    clock.now = 2000.0
    assert drain(schedule) == ["D"]


def test_forgetting_a_waiting_qid_drops_its_entry() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    schedule.enqueue("A", 1000.0)
    schedule.enqueue("B", 1200.0)
    schedule.forget("A")  # deleted by the operator
    schedule.forget("B")
    assert schedule.next_due() == 1200.0  # A's ready entry dropped; B's heap entry left
    clock.now = 1200.0
    assert schedule.pop() is None  # superseded, skipped
    assert schedule.next_due() is None
    assert "A" not in schedule and "B" not in schedule and len(schedule) == 0


def test_a_ready_message_survives_the_wall_clock_stepping_back() -> None:
    """Pushed as due at 1000; the clock then steps back (NTP): the message is not lost
    from the schedule, it comes out when the clock reaches its time again."""
    clock = Clock()
    schedule = Schedule(clock)
    schedule.enqueue("A", 1000.0)  # due now: the ready line
    clock.now = 990.0
    assert drain(schedule) == []
    assert "A" in schedule and schedule.next_due() == 1000.0
    clock.now = 1000.0
    assert drain(schedule) == ["A"]


def test_a_time_far_ahead_waits_in_its_seconds_bucket_not_as_a_heap_tuple() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    for n, when in enumerate((1500.7, 1500.2, 1200.9, 1000.5, 1500.2)):
        schedule.enqueue(f"Q{n}", when)
    # 1000.5 is within NEAR: exact, on the heap; the rest wait by second.
    assert schedule.heap == [(1000.5, "Q3")]
    assert schedule.far == {1500: ["Q0", "Q1", "Q4"], 1200: ["Q2"]}
    assert schedule.far_count == 4
    clock.now = 1001.0
    assert drain(schedule) == ["Q3"]
    assert schedule.next_due() == 1200.0  # the bucket's second: a lower bound
    clock.now = 1200.5
    assert drain(schedule) == []  # moved into the heap, exact: due at 1200.9
    assert schedule.next_due() == 1200.9 and schedule.far_count == 3
    clock.now = 1201.0
    assert drain(schedule) == ["Q2"]
    clock.now = 1501.0
    # In time order within the second; equal times by QID, as the heap orders them.
    assert drain(schedule) == ["Q1", "Q4", "Q0"]
    assert schedule.next_due() is None and not schedule.far and schedule.far_count == 0


def test_a_far_entry_moved_or_forgotten_is_skipped_when_its_bucket_comes() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    schedule.enqueue("moved", 1500.5)
    schedule.enqueue("gone", 1500.5)
    schedule.enqueue("same_second", 1500.5)
    schedule.push("moved", 1300.0)  # a flush or reschedule: another second
    schedule.push("same_second", 1500.9)  # the same second: its bucket holds it twice
    schedule.forget("gone")  # deleted, held or canceled
    clock.now = 1300.0
    assert drain(schedule) == ["moved"]
    schedule.forget("moved")
    clock.now = 1501.0
    assert drain(schedule) == ["same_second"]  # once, at its latest time
    assert schedule.taken == {"same_second"} and not schedule.due


def test_the_rebuild_keeps_far_times_in_buckets() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    schedule.replace({"now": 990.0, "near": 1001.0, "far": 1800.25})
    assert list(schedule.ready) == ["now"] and schedule.heap == [(1001.0, "near")]
    assert schedule.far == {1800: ["far"]} and schedule.far_count == 1
    clock.now = 1800.25
    assert drain(schedule) == ["now", "near", "far"]


def test_retries_due_in_one_whole_second_share_its_time_object() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    # Retry times are whole seconds (backoff.retry_at); made apart, as each deferral does.
    times = [float(1500 + n // 3) for n in range(6)]
    for n, when in enumerate(times):
        schedule.push(f"Q{n}", when)
    assert schedule.due["Q0"] is schedule.due["Q1"] is schedule.due["Q2"]
    assert schedule.due["Q3"] is schedule.due["Q5"] and schedule.due["Q3"] == 1501.0
    assert schedule.due["Q0"] is not schedule.due["Q3"]
    schedule.push("exact", 1500.5)  # a time of its own (a send_at): kept as given
    assert schedule.due["exact"] == 1500.5
    clock.now = 1502.0
    assert drain(schedule) == ["Q0", "Q1", "Q2", "exact", "Q3", "Q4", "Q5"]
    assert not schedule.far_times  # each second's object goes with its bucket


def test_times_already_past_share_their_seconds_object_and_keep_their_order() -> None:
    clock = Clock()
    schedule = Schedule(clock)
    # Arrival times read at start-up, and "now" when a parked message is let go: all
    # floats made apart, as the loader and the scheduler make them.
    times = [990.25, 990.75, 995.5, float(clock.now)]
    for n, when in enumerate(times):
        schedule.push(f"Q{n}", when + 0.0)
    assert schedule.due["Q0"] is schedule.due["Q1"] and schedule.due["Q0"] == 990.0
    assert schedule.due["Q2"] == 995.0 and schedule.due["Q3"] == 1000.0
    schedule.push("soon", 1000.5)  # ahead: exact, on the heap
    assert drain(schedule) == ["Q0", "Q1", "Q2", "Q3"]  # first in, first out
    clock.now = 1000.5
    assert drain(schedule) == ["soon"]
