"""What the numbers were measured on: CPU/GPU model, library versions, threads, load."""

from __future__ import annotations

import os
import platform

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str | torch.device = "cpu") -> dict:
    """A JSON-able description; `load_average` shows contention from other processes at the time."""
    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "device": str(device),
    }
    try:
        from components.quantize.int8 import import_torchao

        torchao = import_torchao()
        info["torchao"] = torchao.__version__
    except Exception:  # torchao missing or failing to import is itself worth recording
        info["torchao"] = None
    if torch.cuda.is_available():
        index = torch.device(device).index or 0 if torch.device(device).type == "cuda" else 0
        props = torch.cuda.get_device_properties(index)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    return info
