"""What the simulator tracks: the queue as counted groups of jobs, instances and tasks."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum


class FleetQueue:
    """The visible messages, oldest first, as [enqueued_at, count] groups."""

    def __init__(self) -> None:
        self.groups: deque[list[float]] = deque()
        self.visible = 0

    def push(self, enqueued_at: float, count: int) -> None:
        self.groups.append([enqueued_at, count])
        self.visible += count

    def push_front(self, groups: list[tuple[float, int]]) -> None:
        """Released jobs: visible again at once, ahead of newer ones."""
        for enqueued_at, count in reversed(groups):
            self.groups.appendleft([enqueued_at, count])
            self.visible += count

    def take(self, wanted: int) -> list[tuple[float, int]]:
        taken: list[tuple[float, int]] = []
        while wanted > 0 and self.groups:
            group = self.groups[0]
            n = min(wanted, int(group[1]))
            taken.append((group[0], n))
            group[1] -= n
            wanted -= n
            self.visible -= n
            if group[1] == 0:
                self.groups.popleft()
        return taken


class TaskState(str, Enum):
    WAITING = "waiting for an instance"
    STARTING = "pulling the image, loading the model"
    RUNNING = "running"
    DRAINING = "draining after SIGTERM"
    STOPPED = "stopped"


@dataclass(eq=False)
class Instance:
    id: int
    launched_at: float | None = None
    ready_at: float | None = None
    terminated_at: float | None = None
    reclaim_at: float | None = None
    launch_cancelled: bool = False
    task: Task | None = None
    has_image: bool = False
    from_pool: bool = False
    idle_token: int = 0
    tasks_started: int = 0
    startup_seconds: float = 0.0

    @property
    def alive(self) -> bool:
        return self.terminated_at is None and not self.launch_cancelled


@dataclass(eq=False)
class Task:
    id: int
    state: TaskState
    instance: Instance | None = None
    placed_at: float = 0.0
    held: deque[list[float]] = field(default_factory=deque)  # [enqueued, count, ready_at]
    held_count: int = 0
    batch: list[tuple[float, int]] = field(default_factory=list)
    batch_size: int = 0
    batch_started: float = 0.0
    batch_end: float | None = None
    batch_token: int = 0
    writing: int = 0
    fill_deadline: float | None = None
    stop_when_idle: bool = False
    last_receive: float = float("-inf")

    @property
    def idle(self) -> bool:
        return self.held_count == 0 and self.batch_end is None

    @property
    def in_flight(self) -> int:
        return self.held_count + self.batch_size + self.writing
