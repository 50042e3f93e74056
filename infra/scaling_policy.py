"""The worker service's scaling policy in numbers, with no CDK import.

``infra/scaling.py`` configures the stack with these; the capacity planner
(``capacity_planner/``) simulates the same numbers, so the plan and the deployed
policy cannot drift apart. The target (``backlogPerTask``) and ``maxTasks`` are
deployment settings in ``infra/config.py``.
"""

from __future__ import annotations

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
