"""Which waiting requests the built-in server's worker decodes together (no model needed: only the queue)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "server"))
from autoglm_serve.engine import Engine, Job, QueueFull, Sampling


def job(name, temperature=0.0, top_p=1.0, seed=None):
    item = Job(prompt_ids=[1, 2, 3], sampling=Sampling(max_tokens=8, temperature=temperature, top_p=top_p, seed=seed),
               stream=False)
    item.name = name
    return item


def names(batch):
    return [item.name for item in batch]


def test_alike_requests_share_a_batch_and_the_rest_keep_their_order():
    engine = Engine("unused", max_batch=8)
    for item in [job("g1"), job("hot", temperature=0.9), job("g2"), job("warm", temperature=0.5), job("g3"),
                 job("hot2", temperature=0.9)]:
        engine.submit(item)
    assert names(engine._next_batch()) == ["g1", "g2", "g3"]
    assert names(engine._next_batch()) == ["hot", "hot2"]
    assert names(engine._next_batch()) == ["warm"]
    assert engine.queue_depth() == 0


def test_seeded_sampling_runs_alone_but_greedy_ignores_the_seed():
    engine = Engine("unused", max_batch=8)
    for item in [job("seeded", temperature=0.7, seed=1), job("same", temperature=0.7), job("greedy-a", seed=5),
                 job("greedy-b")]:
        engine.submit(item)
    assert names(engine._next_batch()) == ["seeded"]
    assert names(engine._next_batch()) == ["same"]
    assert names(engine._next_batch()) == ["greedy-a", "greedy-b"]


def test_batch_size_is_capped_and_cancelled_requests_are_dropped():
    engine = Engine("unused", max_batch=3)
    items = [job("g%d" % i) for i in range(6)]
    for item in items:
        engine.submit(item)
    items[1].cancelled.set()
    items[0].cancelled.set()
    assert names(engine._next_batch()) == ["g2", "g3", "g4"]
    assert names(engine._next_batch()) == ["g5"]


def test_max_batch_one_serves_one_at_a_time():
    engine = Engine("unused", max_batch=1)
    engine.submit(job("a"))
    engine.submit(job("b"))
    assert names(engine._next_batch()) == ["a"]
    assert names(engine._next_batch()) == ["b"]


def test_a_full_queue_refuses_more():
    engine = Engine("unused", max_queue=2)
    engine.submit(job("a"))
    engine.submit(job("b"))
    with pytest.raises(QueueFull):
        engine.submit(job("c"))


def submit_later(engine, item, seconds=0.05):
    timer = threading.Timer(seconds, engine.submit, args=(item,))
    timer.start()
    return timer


def test_after_a_big_batch_the_worker_waits_briefly_for_the_rest_to_come_back():
    engine = Engine("unused", max_batch=8, batch_wait=2.0)
    for item in [job("a1"), job("a2"), job("a3")]:
        engine.submit(item)
    assert names(engine._next_batch()) == ["a1", "a2", "a3"]
    engine.submit(job("b1"))
    timers = [submit_later(engine, job("b2")), submit_later(engine, job("b3"), 0.1)]
    assert names(engine._next_batch()) == ["b1", "b2", "b3"]  # as many as last time, well before 2 s
    for timer in timers:
        timer.join()


def test_a_lone_client_never_waits():
    engine = Engine("unused", max_batch=8, batch_wait=2.0)
    engine.submit(job("a"))
    timer = submit_later(engine, job("b"))
    assert names(engine._next_batch()) == ["a"]
    timer.join()
    assert names(engine._next_batch()) == ["b"]
