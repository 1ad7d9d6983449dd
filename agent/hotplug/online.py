"""The one online loop: CPUs and memory, woken by uevents, re-scanning on an interval, within budgets.

At most one loop runs at a time. A request that arrives while one runs is merged into it (the larger
CPU target, memory if either asked) and the merged loop gets a fresh budget, so no two loops ever
write the same sysfs files. ``submit(..., wait=False)`` returns at once; when such a loop fails and
nobody waited for it, the failure is kept and raised by the next ``submit`` (then forgotten).

The loop runs in its own thread so a caller whose deadline passes can stop waiting while onlining
goes on; its outcome is then reported like a ``wait=False`` one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agent.errors import AgentError, DeadlineExceeded, ResourceError
from agent.hotplug.budget import Budget, BudgetTracker, Clock, RealClock
from agent.hotplug.cpu import CpuOnlining, online_cpus
from agent.hotplug.memory import MemoryOnlining
from agent.system import sysfs
from agent.system.paths import HostPaths

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from agent.hotplug.cpuset import AttributeWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnlineRequest:
    nb_cpus: int = 0  # total CPUs that must be online; 0: leave CPUs alone
    memory: bool = False  # online every offline memory block
    memory_blocks: frozenset[int] = frozenset()  # blocks that must appear (after a probe)

    def merge(self, other: OnlineRequest) -> OnlineRequest:
        return OnlineRequest(
            nb_cpus=max(self.nb_cpus, other.nb_cpus),
            memory=self.memory or other.memory,
            memory_blocks=self.memory_blocks | other.memory_blocks,
        )

    def describe(self) -> str:
        return f"OnlineCPUMem(nb_cpus={self.nb_cpus}, cpu_only={not self.memory})"


class OnlineTask(Protocol):
    name: str
    budget: Budget
    # A lingering task keeps scanning after it is satisfied while other tasks still run (memory blocks
    # that appear while the loop waits for CPUs get onlined too).
    lingers: bool

    def step(self) -> bool: ...

    def failure(self, waited: float, rescans: int) -> ResourceError: ...


@dataclass
class OnlineRun:
    request: OnlineRequest
    generation: int = 0
    waiters: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    cpus_online: list[int] = field(default_factory=list)
    blocks_online: list[int] = field(default_factory=list)


def _write(path: str, value: str) -> None:
    sysfs.write(path, value)


def _start_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="online-cpu-mem", daemon=True).start()


class OnlineCoordinator:
    def __init__(
        self,
        paths: HostPaths,
        cpu_budget: Budget,
        memory_budget: Budget,
        *,
        clock: Clock | None = None,
        writer: AttributeWriter | None = None,
        wake: threading.Event | None = None,
        after_cpus: Callable[[frozenset[int]], None] | None = None,
        spawn: Callable[[Callable[[], None]], None] = _start_thread,
    ) -> None:
        self.paths = paths
        self.cpu_budget = cpu_budget
        self.memory_budget = memory_budget
        self.clock: Clock = clock or RealClock()
        self.writer: AttributeWriter = writer or _write
        self.wake = wake or threading.Event()  # set by uevent subscriptions and by merges
        self.after_cpus = after_cpus
        self._spawn = spawn
        self._lock = threading.Lock()
        self._run: OnlineRun | None = None
        self._failure: tuple[OnlineRequest, BaseException] | None = None
        self.runs = 0  # loops started, for tests and logs

    # --- the API the service calls

    def raise_kept(self) -> None:
        """Raise (and forget) the failure of an earlier loop that nobody waited for, if there is one."""
        with self._lock:
            earlier = self._failure
            self._failure = None
        if earlier is not None:
            raise _reported(*earlier)

    def submit(self, request: OnlineRequest, *, wait: bool, timeout: float | None = None) -> OnlineRun:
        """Start (or join) the loop for ``request``. With ``wait`` block until it ends (at most
        ``timeout`` seconds) and raise its failure. First raises the kept failure of an earlier
        ``wait=False`` loop, if any."""
        with self._lock:
            earlier = self._failure
            self._failure = None
            if earlier is not None:
                raise _reported(*earlier)
            run = self._run
            if run is None:
                run = self._run = OnlineRun(request)
                self.runs += 1
                start = True
            else:
                run.request = run.request.merge(request)
                run.generation += 1
                start = False
                self.wake.set()
            if wait:
                run.waiters += 1
        if start:
            self._spawn(lambda: self._loop(run))
        if not wait:
            return run
        finished = run.done.wait(timeout)
        with self._lock:
            run.waiters -= 1
            # a run that ends with no waiter left keeps its failure for the next call (see _finish)
            finished = finished or run.done.is_set()
        if not finished:
            raise DeadlineExceeded(
                f"{run.request.describe()} did not finish within the call's deadline ({timeout:.1f} s); onlining "
                "goes on in the background and its outcome is reported to the next OnlineCPUMem"
            )
        if run.error is not None:
            raise run.error
        return run

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._run is not None

    @property
    def waiting_callers(self) -> int:
        """Callers blocked on the running loop (0 when none runs)."""
        with self._lock:
            return self._run.waiters if self._run is not None else 0

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no loop runs (shutdown, tests)."""
        with self._lock:
            run = self._run
        return run is None or run.done.wait(timeout)

    # --- the loop

    def _tasks_for(self, run: OnlineRun) -> dict[str, tuple[OnlineTask, BudgetTracker]]:
        now = self.clock.now()
        tasks: dict[str, tuple[OnlineTask, BudgetTracker]] = {}
        # Memory first: new CPUs may need the memory for their per-CPU areas.
        if run.request.memory or run.request.memory_blocks:
            memory = MemoryOnlining(
                self.paths, self.memory_budget, expected=lambda: run.request.memory_blocks, writer=self.writer
            )
            tasks["memory"] = (memory, BudgetTracker(self.memory_budget, now))
        if run.request.nb_cpus > 0:
            cpu = CpuOnlining(self.paths, self.cpu_budget, wanted=lambda: run.request.nb_cpus, writer=self.writer)
            tasks["cpu"] = (cpu, BudgetTracker(self.cpu_budget, now))
        return tasks

    def _loop(self, run: OnlineRun) -> None:
        started = self.clock.now()
        generation = -1
        tasks: dict[str, tuple[OnlineTask, BudgetTracker]] = {}
        errors: list[BaseException] = []
        try:
            while True:
                with self._lock:
                    if run.generation != generation:
                        generation = run.generation
                        tasks = self._tasks_for(run)
                        errors = []
                    elif not tasks:
                        self._finish(run, errors, started)
                        return
                self.wake.clear()  # before the scan: an event during the scan triggers another one
                satisfied: set[str] = set()
                for name, (task, tracker) in list(tasks.items()):
                    tracker.scanned(self.clock.now())
                    if task.step():
                        satisfied.add(name)
                        if not task.lingers:
                            del tasks[name]
                            self._record(run, task)
                            if name == "cpu" and self.after_cpus is not None:
                                self.after_cpus(online_cpus(self.paths))
                    elif tracker.exhausted(self.clock.now()):
                        del tasks[name]
                        self._record(run, task)
                        errors.append(task.failure(tracker.elapsed(self.clock.now()), tracker.rescans))
                if satisfied.issuperset(tasks):
                    # only lingering tasks are left, and they are done too
                    for task, _ in tasks.values():
                        self._record(run, task)
                    tasks = {}
                if tasks:
                    due = min(tracker.wait_until() for _, tracker in tasks.values())
                    self.clock.wait(self.wake, max(due - self.clock.now(), 0.0))
        except BaseException as exc:
            with self._lock:
                self._finish(run, [exc], started)

    @staticmethod
    def _record(run: OnlineRun, task: OnlineTask) -> None:
        if isinstance(task, CpuOnlining):
            run.cpus_online.extend(task.brought_online)
        elif isinstance(task, MemoryOnlining):
            run.blocks_online.extend(task.brought_online)

    def _finish(self, run: OnlineRun, errors: list[BaseException], started: float) -> None:
        """Called with the lock held: the loop ends and nobody can join it any more."""
        elapsed = self.clock.now() - started
        if len(errors) == 1:
            run.error = errors[0]
        elif errors:
            run.error = ResourceError("; ".join(str(e) for e in errors))
        self._run = None
        if run.error is None:
            log.info(
                "%s done in %.2f s: onlined cpus %s, memory blocks %s",
                run.request.describe(),
                elapsed,
                sorted(run.cpus_online),
                sorted(run.blocks_online),
            )
        else:
            if not isinstance(run.error, AgentError):
                log.error("%s failed unexpectedly", run.request.describe(), exc_info=run.error)
            else:
                log.error("%s failed after %.2f s: %s", run.request.describe(), elapsed, run.error)
            if run.waiters == 0:
                self._failure = (run.request, run.error)
        run.done.set()


def _reported(request: OnlineRequest, error: BaseException) -> AgentError:
    message = f"an earlier {request.describe()} that returned before it finished failed: {error}"
    if isinstance(error, AgentError):
        return type(error)(message)
    return ResourceError(message)
