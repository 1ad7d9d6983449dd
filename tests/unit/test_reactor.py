"""agent.system.reactor: one thread serving many descriptors, one-shot, with handlers that pause."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from agent.system.reactor import Reactor


@pytest.fixture
def pipes() -> Iterator[list[tuple[int, int]]]:
    made: list[tuple[int, int]] = []
    yield made
    for pair in made:
        for fd in pair:
            try:
                os.close(fd)
            except OSError:
                pass


def _pipe(pipes: list[tuple[int, int]]) -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    pipes.append((r, w))
    return r, w


def test_one_thread_serves_many_descriptors(pipes: list[tuple[int, int]]) -> None:
    reactor = Reactor("test")
    got: dict[int, bytes] = {}
    done = threading.Semaphore(0)

    def handler_for(fd: int) -> Callable[[], bool]:
        def handler() -> bool:
            got[fd] = got.get(fd, b"") + os.read(fd, 100)
            done.release()
            return True

        return handler

    ends = [_pipe(pipes) for _ in range(50)]
    for r, _ in ends:
        reactor.add(r, handler_for(r))
    for round_ in range(2):  # armed again after each event
        for index, (_, w) in enumerate(ends):
            os.write(w, f"{round_}:{index};".encode())
        for _ in ends:
            assert done.acquire(timeout=10)
    assert got == {r: f"0:{i};1:{i};".encode() for i, (r, _) in enumerate(ends)}
    assert reactor.watched() == 50
    assert len([t for t in threading.enumerate() if t.name == "test"]) == 1


def test_after_remove_the_handler_never_runs(pipes: list[tuple[int, int]]) -> None:
    reactor = Reactor("test")
    r, w = _pipe(pipes)
    calls = []
    entered, release = threading.Event(), threading.Event()

    def handler() -> bool:
        calls.append(os.read(r, 10))
        entered.set()
        release.wait(10)  # a slow handler: remove() must wait for it
        return True

    reactor.add(r, handler)
    os.write(w, b"x")
    assert entered.wait(10)
    removed = threading.Event()
    remover = threading.Thread(target=lambda: (reactor.remove(r, handler), removed.set()))
    remover.start()
    assert not removed.wait(0.2), "remove() returned while the handler was running"
    release.set()
    remover.join(10)
    assert removed.is_set()
    os.write(w, b"y")  # not watched any more: nobody reads it
    assert os.read(r, 10) == b"y"
    assert calls == [b"x"]
    assert reactor.watched() == 0


def test_a_paused_descriptor_waits_for_rearm(pipes: list[tuple[int, int]]) -> None:
    reactor = Reactor("test")
    r, w = _pipe(pipes)
    calls = threading.Semaphore(0)

    def handler() -> None:
        calls.release()
        return None  # registered, disarmed: the data stays in the pipe

    reactor.add(r, handler)
    os.write(w, b"x")
    assert calls.acquire(timeout=10)
    assert not calls.acquire(timeout=0.2)  # readable still, but not armed
    reactor.rearm(r, handler)
    assert calls.acquire(timeout=10)
    reactor.rearm(r, lambda: True)  # not its handler: no effect
    assert not calls.acquire(timeout=0.2)


def test_a_failing_handler_is_dropped_and_the_others_go_on(pipes: list[tuple[int, int]]) -> None:
    reactor = Reactor("test")
    bad_r, bad_w = _pipe(pipes)
    good_r, good_w = _pipe(pipes)
    got = threading.Semaphore(0)

    def bad() -> bool:
        raise RuntimeError("broken")

    def good() -> bool:
        os.read(good_r, 10)
        got.release()
        return True

    reactor.add(bad_r, bad)
    reactor.add(good_r, good)
    os.write(bad_w, b"x")
    os.write(good_w, b"x")
    assert got.acquire(timeout=10)
    os.write(good_w, b"x")
    assert got.acquire(timeout=10)
    assert reactor.watched() == 1
    with pytest.raises(ValueError, match="watched already"):
        reactor.add(good_r, good)
