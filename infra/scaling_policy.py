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
# the desired count to exactly START_TASKS (an idempotent step action with a cooldown).
START_ALARM_PERIOD_SECONDS = 60
START_ALARM_EVALUATION_PERIODS = 1
START_TASKS = 1
START_COOLDOWN_SECONDS = 120
