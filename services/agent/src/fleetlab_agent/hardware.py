"""What this machine is made of: CPU, memory, GPUs (through NVML; none is fine), OS, Python."""

from __future__ import annotations

import platform
import socket
from functools import cache
from pathlib import Path

import psutil

from fleetlab_common.events import AgentHardware, GpuInfo
from fleetlab_common.log import get_logger

log = get_logger(__name__)


def _cpu_model() -> str:
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect_gpus() -> list[GpuInfo]:
    """GPUs as NVML sees them; an empty list when there is no NVIDIA driver."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                GpuInfo(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_mb=int(memory.total) // (1024 * 1024),
                )
            )
        return gpus
    except pynvml.NVMLError as exc:
        log.warning("agent.gpu_detection_failed", error=str(exc))
        return []
    finally:
        pynvml.nvmlShutdown()


@cache
def detect_hardware() -> AgentHardware:
    """The hardware report sent with every heartbeat (detected once per process)."""
    return AgentHardware(
        hostname=socket.gethostname(),
        os=f"{platform.system()} {platform.release()}",
        cpu_model=_cpu_model(),
        cpu_count=psutil.cpu_count(logical=True) or 1,
        memory_mb=psutil.virtual_memory().total // (1024 * 1024),
        gpus=detect_gpus(),
        python=platform.python_version(),
    )
