"""The fast paths of the simulated fleet: the producer's start call, the warm pool, and
instances released by the idle alarm. A mixin of ``FleetSimulator``, which owns the
clock, the instances and the books these use.

- Start call: ``start_call`` after jobs arrive, the producer raises the service to the
  backlog's need (never lowers it) and the GPU group with it, so the instances launch at
  once instead of after the capacity provider's reaction (``capacity``).
- Warm pool: a new instance is taken from the pool while it has one: it is running
  ``warm_resume`` after its launch, with the image already there (model load only). The
  pool warms a replacement: ``warm_refill`` billed seconds (boot and pull, then stopped).
- Release: once the idle alarm sets the group to 0, an instance with no task goes
  ``instance_release`` later, not ``instance_scale_in``; a new start cancels that.
"""

from __future__ import annotations

from capacity_planner.autoscaling import Action, Decision, producer_start
from capacity_planner.fleet_state import Instance


class FastCapacity:
    def _init_fast_capacity(self) -> None:
        self.pool_ready = self.policy.warm_pool_size if self.policy else 0
        self.refill_seconds = 0.0
        self.group_released = False

    # -- the producer's start call ----------------------------------------------------

    def _after_enqueue(self) -> None:
        if self.policy is not None and self.policy.producer_start:
            self._at(self.now + self.start_up.start_call, self._producer_start)

    def _producer_start(self) -> None:
        backlog = self.queue.visible + sum(t.in_flight for t in self.tasks)
        decision = producer_start(self.policy, backlog, desired=self.desired, now=self.now)
        if decision is not None:
            self._apply(decision, launch_now=True)

    def _apply(self, decision: Decision, *, launch_now: bool = False) -> None:
        """Record a decision and reconcile the tasks (the idle one also releases the
        group's idle instances when the stack does)."""
        self.decisions.append(decision)
        self.desired = decision.desired_after
        if decision.action is Action.IDLE:
            if self.policy.release_instances_when_idle:
                self.group_released = True
        elif decision.desired_after > decision.desired_before:
            self.group_released = False
        self._reconcile(launch_now=launch_now)
        if self.group_released:
            for instance in self.instances:
                if (instance.alive and instance.task is None and instance.reclaim_at is None
                        and instance.ready_at is not None):
                    self._idle(instance)

    # -- instances: the warm pool and the release --------------------------------------

    def _new_instance(self, *, launch_now: bool) -> Instance:
        instance = Instance(next(self._ids))
        if self.pool_ready > 0:
            self.pool_ready -= 1
            instance.from_pool = True
            instance.has_image = True
            self.refill_seconds += self.start_up.warm_refill
            self._at(self.now + self.start_up.warm_refill, self._pool_refilled)
        self.instances.append(instance)
        delay = 0.0 if launch_now else self.start_up.capacity
        self._at(self.now + delay, self._launch, instance)
        return instance

    def _pool_refilled(self) -> None:
        self.pool_ready += 1

    def _boot_seconds(self, instance: Instance) -> float:
        return self.start_up.warm_resume if instance.from_pool else self.start_up.boot

    def _idle_seconds(self) -> float:
        """How long an instance with no task lives on."""
        if self.group_released:
            return self.start_up.instance_release
        return self.start_up.instance_scale_in
