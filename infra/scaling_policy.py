"""The worker service's scaling policy in numbers, with no CDK import.

``infra/scaling.py`` configures the stack with these; the capacity planner
(``capacity_planner/``) simulates the same numbers, so the plan and the deployed
policy cannot drift apart. The target (``backlogPerTask``) and ``maxTasks`` are
deployment settings in ``infra/config.py``.
"""

from __future__ import annotations

import math

# The service scales from zero: no task runs while the queues are empty.
MIN_TASKS = 0
# Target tracking on backlog per running task.
TRACKING_SCALE_OUT_COOLDOWN_SECONDS = 60
TRACKING_SCALE_IN_COOLDOWN_SECONDS = 300
# The start-from-zero alarm: one period of one minute with jobs waiting and no task sets
# the desired count to exactly the backlog's need (an idempotent step action with a
# cooldown): ceil(waiting / backlogPerTask) tasks, one ExactCapacity tier per task up to
# maxTasks, and at least START_TASKS.
START_ALARM_PERIOD_SECONDS = 60
START_ALARM_EVALUATION_PERIODS = 1
START_TASKS = 1
START_FROM_BACKLOG = True
START_COOLDOWN_SECONDS = 120
# Application Auto Scaling takes at most 20 step adjustments per step scaling policy.
START_MAX_TIERS = 20
# The idle alarm: IDLE_ALARM_EVALUATION_PERIODS one-minute period(s) in a row with nothing
# visible and nothing in flight on any consumed queue, while tasks are wanted, set the
# service to exactly 0 tasks (target tracking would wait 15 datapoints) and the GPU
# group to 0 instances (the capacity provider would wait 15 more). Instances that
# still run a task are protected from scale-in (managed termination protection), and a
# busy task protects itself (ECS task protection), so only idle capacity goes.
IDLE_ALARM_PERIOD_SECONDS = 60
IDLE_ALARM_EVALUATION_PERIODS = 1
IDLE_COOLDOWN_SECONDS = 60
RELEASE_INSTANCES_WHEN_IDLE = True


def start_task_counts(max_tasks: int) -> list[int]:
    """The task counts the start may set, ascending, the last one ``max_tasks``.

    Every count from START_TASKS when they fit in START_MAX_TIERS tiers; else counts
    spaced geometrically (fine at the bottom, where one job must start one task) and
    filled from the bottom, so a backlog gets the next count up: at most about a quarter
    more tasks than it needs with maxTasks 64.
    """
    if not START_FROM_BACKLOG:
        return [START_TASKS]
    if max_tasks <= START_TASKS:
        return [max_tasks]
    if max_tasks - START_TASKS + 1 <= START_MAX_TIERS:
        return list(range(START_TASKS, max_tasks + 1))
    ratio = max_tasks / START_TASKS
    counts = {min(max_tasks, math.ceil(START_TASKS * ratio ** (i / (START_MAX_TIERS - 1))))
              for i in range(START_MAX_TIERS)}
    fill = START_TASKS
    while len(counts) < START_MAX_TIERS:
        counts.add(fill)
        fill += 1
    return sorted(counts)
