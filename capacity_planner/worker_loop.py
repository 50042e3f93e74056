"""A running worker's loop in the simulator: receive up to the prefetch, batch what is
ready (with the fill wait), run the engine, write. A mixin of ``FleetSimulator``, which
owns the clock, the queue and the counters it uses."""

from __future__ import annotations

from capacity_planner.fleet_state import Task, TaskState

_EPS = 1e-9


class WorkerLoop:
    def _serve(self, task: Task) -> None:
        if task.state is not TaskState.RUNNING:
            return
        self._receive(task)
        self._try_batch(task)
        if task.stop_when_idle and task.idle:
            self._stopped(task)

    def _receive(self, task: Task, *, once: bool = False) -> int:
        """Receive until the worker's prefetch is full (``once``: one receive); returns
        the jobs taken. They are ready ``prepare_seconds`` later."""
        if task.state is not TaskState.RUNNING:
            return 0
        room = self.worker.prefetch_jobs - task.held_count
        ready_at = self.now + self.worker.prepare_seconds
        taken = 0
        while room > 0 and self.queue.visible > 0:
            for enqueued_at, count in self.queue.take(min(room, self.worker.receive_max)):
                task.held.append([enqueued_at, count, ready_at])
                task.held_count += count
                room -= count
                taken += count
            if once:
                break
        if taken:
            task.last_receive = self.now
            self._at(ready_at, self._serve, task)
        return taken

    def _try_batch(self, task: Task) -> None:
        if task.batch_end is not None or not task.held:
            return
        ready = 0
        for _, count, ready_at in task.held:
            if ready_at > self.now + _EPS:
                break
            ready += int(count)
        if not ready:
            return  # a wake-up is due when the first one is ready
        size = self.worker.max_batch_size
        filling = ready < size and ready < task.held_count
        if filling and task.fill_deadline is None:
            task.fill_deadline = self.now + self.worker.batch_fill_wait
            self._at(task.fill_deadline, self._serve, task)
            return
        if filling and self.now < task.fill_deadline - _EPS:
            return
        self._start_batch(task, min(size, ready))

    def _start_batch(self, task: Task, size: int) -> None:
        taken: list[tuple[float, int]] = []
        left = size
        while left:
            group = task.held[0]
            n = min(left, int(group[1]))
            taken.append((group[0], n))
            group[1] -= n
            left -= n
            if group[1] == 0:
                task.held.popleft()
        task.held_count -= size
        task.batch, task.batch_size = taken, size
        task.batch_started = self.now
        task.batch_end = self.now + self.engine.batch_seconds(size)
        task.fill_deadline = None
        self.batches += 1
        self.first.setdefault("batch", self.now)
        self._at(task.batch_end, self._batch_done, task, task.batch_token)
        self._receive(task)  # room opened for more

    def _batch_done(self, task: Task, token: int) -> None:
        if task.batch_token != token:
            return
        self.busy_seconds += self.now - task.batch_started
        groups, size = task.batch, task.batch_size
        task.batch, task.batch_size, task.batch_end = [], 0, None
        task.writing += size
        self._at(self.now + self.worker.write_seconds, self._written, task, groups, size)
        if task.state is TaskState.DRAINING:
            self._stopped(task)
        else:
            self._serve(task)

    def _written(self, task: Task, groups: list[tuple[float, int]], size: int) -> None:
        task.writing -= size
        for enqueued_at, count in groups:
            self.latencies.append((self.now - enqueued_at, count))
        self.completed += size
        self.last_result = self.now
        self.first.setdefault("result", self.now)
        self._maybe_finish()
