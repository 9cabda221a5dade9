"""This worker host's slots and what a slot gives its child: its devices and a JAX memory
setting. No database, no models: which slot is free is decided in the run table (one running
run per host and slot, a unique constraint; runs/services/lifecycle.py claims).

Slot accounting lives in one place: a slot is busy while a run in status `running` names it
(`TunixRun.worker_host`, `worker_slot`). Anything else that wants a host's accelerators (a
generation server, say) must claim a slot the same way or use a host with none configured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from django.conf import settings

# JAX preallocates 75% of each GPU it sees. A slot that owns its devices keeps that (no one
# else sees them); slots that share every device would each grab 75% of the same memory, so
# they allocate on demand instead, each within an equal share.
_SHARED_MEMORY_HEADROOM = 0.9


@dataclass(frozen=True)
class Slot:
    index: int
    # Device ids as the worker sees them; empty: every device (shared with the other slots).
    devices: tuple[str, ...]

    @property
    def owns_devices(self) -> bool:
        return bool(self.devices)

    def fits(self, devices_needed: int) -> bool:
        """Whether a run that needs exactly `devices_needed` devices (0: any) can use it."""
        return devices_needed == 0 or not self.devices or len(self.devices) == devices_needed


def host_slots() -> list[Slot]:
    return [Slot(i, tuple(devices)) for i, devices in enumerate(settings.SLOTS)]


def slot_environment(slot: Slot) -> dict[str, str]:
    """What the run's child gets on top of its minimal environment."""
    shared = len(settings.SLOTS)
    if not slot.owns_devices:
        if shared == 1:
            return {}  # one run per host: every device and JAX's defaults, as always
        env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        if "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{_SHARED_MEMORY_HEADROOM / shared:.3f}"
        return env
    ids = ",".join(slot.devices)
    count = len(slot.devices)
    port = 8476 + slot.index  # libtpu's default port, one per process on the host
    return {
        "CUDA_VISIBLE_DEVICES": ids,
        # Several TPU processes on one VM: each sees its chips, as a one-process "slice".
        "TPU_VISIBLE_CHIPS": ids,
        "TPU_VISIBLE_DEVICES": ids,
        "TPU_CHIPS_PER_PROCESS_BOUNDS": _tpu_bounds(count),
        "TPU_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_PORT": str(port),
        "TPU_PROCESS_ADDRESSES": f"localhost:{port}",
        "CLOUD_TPU_TASK_ID": "0",
        "TUNIXRT_SLOT": str(slot.index),
        "TUNIXRT_SLOT_DEVICES": ids,
    }


def _tpu_bounds(count: int) -> str:
    """Chips of one process as an x,y,z box: 1 -> 1,1,1; 2 -> 1,2,1; 4 -> 2,2,1; 8 -> 2,4,1."""
    if count <= 2:
        return f"1,{count},1"
    return f"2,{count // 2},1"
