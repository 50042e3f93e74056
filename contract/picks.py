"""Which model and prompt an image gets when several are given (or the defaults).

The pick depends only on a seed and the image's name (its path under the source, or
its key), so adding images does not change what the others get, and the producer, the
local folder mode and S3 notifications all pick the same way.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def pick_model_and_prompt(models: Sequence[str], prompts: Sequence[str], *, seed: object,
                          name: str) -> tuple[str, str]:
    rng = random.Random(f"{seed}:{name}")
    return rng.choice(models), rng.choice(prompts)
