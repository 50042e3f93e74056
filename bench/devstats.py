"""Machine facts, GPU memory readings and CPU time per call for benchmark reports."""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable
from typing import Any


def thread_cpu_per_call(call: Callable[[], object], repeat: int, warm_up: int = 0) -> float:
    """CPU seconds per call of ``call`` on this thread, after ``warm_up`` calls."""
    for _ in range(warm_up):
        call()
    started = time.thread_time()
    for _ in range(repeat):
        call()
    return (time.thread_time() - started) / repeat


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    import os
    import sys

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    for name in ("torch", "diffusers", "transformers", "accelerate", "boto3", "moto",
                 "xformers", "PIL"):
        try:
            module = __import__(name)
            info[name if name != "PIL" else "pillow"] = getattr(module, "__version__", "?")
        except Exception:  # noqa: BLE001 - not installed is a fact worth reporting
            info[name if name != "PIL" else "pillow"] = None
    try:
        import torch

        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["gpu_memory_bytes"] = props.total_memory
            info["cuda"] = torch.version.cuda
            info["gpu_driver"] = _nvml_driver()
    except Exception:  # noqa: BLE001
        pass
    return info


def _nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # noqa: BLE001
        return None


class DeviceMemorySampler:
    """Samples device-level used memory (NVML, else cudaMemGetInfo) in a thread.

    This is what nvidia-smi shows: the CUDA context, the caching allocator's reserve and
    anything outside PyTorch's allocator (cuBLAS workspaces, CUDA graphs pools), which
    ``torch.cuda.max_memory_allocated`` does not see.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak_used: int | None = None
        self.baseline_used: int | None = None
        self.source: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = self._reader()

    def _reader(self):
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available():
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = torch.cuda.current_device()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.source = "nvml"
            return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        except Exception:  # noqa: BLE001 - fall back to the CUDA runtime
            self.source = "cudaMemGetInfo"

            def read() -> int:
                free, total = torch.cuda.mem_get_info()
                return int(total - free)
            return read

    def __enter__(self) -> DeviceMemorySampler:
        if self._read is None:
            return self
        self.baseline_used = self.peak_used = self._read()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        assert self._read is not None
        while not self._stop.is_set():
            try:
                self.peak_used = max(self.peak_used or 0, self._read())
            except Exception:  # noqa: BLE001
                return
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
            if self._read is not None:
                self.peak_used = max(self.peak_used or 0, self._read())
