"""The GPU instance types the fleet runs on, and what the config needs to know of them."""

from __future__ import annotations

import re

# GPU families the ECS GPU AMI (x86_64, NVIDIA) serves and the worker is sized for.
GPU_FAMILIES = ("g5", "g6", "g6e")
# Instance memory per "xlarge" of size (g5.2xlarge: 2 x 16 GiB, g6e.xlarge: 32 GiB).
MEMORY_GIB_PER_XLARGE = {"g5": 16, "g6": 16, "g6e": 32}
# What the OS, Docker, the ECS agent and the NVIDIA driver keep of an instance's memory.
HOST_RESERVED_MIB = 2048


def family(instance_type: str) -> str:
    return instance_type.partition(".")[0]


def instance_memory_mib(instance_type: str) -> int | None:
    """Memory of a g5/g6/g6e size (``g5.xlarge`` 16 GiB, ``g6e.2xlarge`` 64 GiB), or None."""
    name, _, size = instance_type.partition(".")
    match = re.fullmatch(r"(\d*)xlarge", size)
    if name not in MEMORY_GIB_PER_XLARGE or not match:
        return None
    return MEMORY_GIB_PER_XLARGE[name] * int(match.group(1) or 1) * 1024
