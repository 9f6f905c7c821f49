"""The writer's MLflow thread (rethink_dist/sweep/results.py, MlflowLane): calls run in the order they
were asked for, off the caller's thread; drain() waits for all of them; a call that raises does not
stop the ones after it; a full lane (by the epochs its calls carry) makes the caller wait
(back-pressure, nothing dropped)."""

from __future__ import annotations

import threading
import time

from rethink_dist.sweep.results import MlflowLane


def test_calls_run_in_order_on_another_thread_and_drain_waits_for_them():
    lane, seen, caller = MlflowLane(), [], threading.get_ident()

    def call(i):
        time.sleep(0.002)
        seen.append((i, threading.get_ident()))

    for i in range(200):
        lane.submit(lambda i=i: call(i))
    lane.drain()
    assert [i for i, _ in seen] == list(range(200))
    assert {t for _, t in seen} != {caller} and len({t for _, t in seen}) == 1
    assert lane.busy_s > 0


def test_a_call_that_raises_is_reported_and_the_next_ones_still_run(capfd):
    lane, seen = MlflowLane(), []

    def broken():
        raise RuntimeError("store on fire")

    lane.submit(lambda: seen.append(1))
    lane.submit(broken)
    lane.submit(lambda: seen.append(2))
    lane.drain()
    assert seen == [1, 2]
    assert "an MLflow write failed unexpectedly (RuntimeError: store on fire)" in capfd.readouterr().err


def test_a_full_lane_makes_the_caller_wait_and_drops_nothing():
    class Small(MlflowLane):
        LIMIT = 2

    lane, gate, seen = Small(), threading.Event(), []
    lane.submit(gate.wait)  # the thread is held here: the next calls queue up
    done = threading.Event()

    def submit_more():
        for i in range(5):
            lane.submit(lambda i=i: seen.append(i))
        done.set()

    threading.Thread(target=submit_more, daemon=True).start()
    assert not done.wait(0.5), "five calls went into a lane of weight two while it was held"
    gate.set()
    assert done.wait(10)
    lane.drain()
    assert seen == [0, 1, 2, 3, 4]
    assert lane.heaviest <= Small.LIMIT + 1  # the limit, and the one call that went in at it


def test_drain_of_an_unused_lane_returns_at_once():
    t = time.perf_counter()
    MlflowLane().drain()
    assert time.perf_counter() - t < 0.5


def test_what_waits_is_bounded_by_the_epochs_it_carries_not_by_the_count_of_calls():
    """Memory held for a slow MLflow: calls that carry many epochs fill the lane sooner than empty ones,
    so the epochs waiting stay within LIMIT plus one call's worth, whatever the sweep's size."""
    class Small(MlflowLane):
        LIMIT = 100

    lane, seen, waiting = Small(), [], []

    def call(i):
        time.sleep(0.01)
        seen.append(i)

    for i in range(40):  # 40 reports of 30 epochs each: 1,240 of weight if nothing held the caller back
        lane.submit(lambda i=i: call(i), weight=31)
        waiting.append(lane.weight)
    lane.drain()
    assert seen == list(range(40))
    assert max(waiting) <= Small.LIMIT + 31 and lane.heaviest <= Small.LIMIT + 31
    assert lane.weight == 0
    # ... and calls that carry nothing are not held back by a count far below the limit
    light, gate, done = Small(), threading.Event(), threading.Event()
    light.submit(gate.wait)  # held: nothing leaves the lane until the gate opens

    def submit_light():
        for i in range(90):
            light.submit(lambda: None)
        done.set()

    threading.Thread(target=submit_light, daemon=True).start()
    assert done.wait(30), "light calls were held back below the lane's weight limit"
    gate.set()
    light.drain()


def test_a_call_made_from_the_lane_itself_never_waits_for_room():
    class Small(MlflowLane):
        LIMIT = 1

    lane, seen = Small(), []

    def nested():
        for i in range(5):  # the lane is over its limit here, and only this thread can empty it
            lane.submit(lambda i=i: seen.append(i), weight=10)

    lane.submit(nested, weight=10)
    lane.drain()
    assert seen == [0, 1, 2, 3, 4]
