"""Accelerators jaxlm knows: dense bf16 peak FLOP/s, memory per device, indicative price.

One table for the two readers: the trainer's MFU (`device_peak_flops(device.device_kind)`) and
the planner (memory per device, price). It sits in `parallel/`, the layer about devices and
meshes, below both, so neither has to import the other.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Device:
    name: str  # as printed
    peak_bf16_flops: float  # dense (no sparsity) bf16 matmul peak, per device
    hbm_bytes: float
    price_per_hour: float  # USD per device-hour: indicative on-demand list price, varies by provider


# Prices: indicative 2024 on-demand list prices of one large cloud, per chip/GPU-hour. Committed-use
# and other providers differ by 2-3x either way, so the CLI takes --price to override.
DEVICES: dict[str, Device] = {
    "v4": Device("TPU v4", 275e12, 32 * GiB, 3.22),
    "v5e": Device("TPU v5e", 197e12, 16 * GiB, 1.20),
    "v5p": Device("TPU v5p", 459e12, 95 * GiB, 4.20),
    "v6e": Device("TPU v6e", 918e12, 32 * GiB, 2.70),
    "a100-40gb": Device("NVIDIA A100 40GB", 312e12, 40 * GiB, 3.67),
    "a100-80gb": Device("NVIDIA A100 80GB", 312e12, 80 * GiB, 5.07),
    "h100": Device("NVIDIA H100 80GB (SXM)", 989e12, 80 * GiB, 11.06),
    "h200": Device("NVIDIA H200", 989e12, 141 * GiB, 10.60),
}
ALIASES = {"a100": "a100-80gb", "v5litepod": "v5e", "v6": "v6e", "h100-80gb": "h100"}

PEAK_BF16_FLOPS: dict[str, float] = {key: d.peak_bf16_flops for key, d in DEVICES.items()}

H100_PCIE_PEAK = 756e12  # the PCIe card runs at lower clocks than the SXM part


def device_key_for_kind(device_kind: str) -> Optional[str]:
    """The planner key for a jax `device.device_kind` string, or None (CPU, unknown accelerators)."""
    kind = device_kind.lower()
    if kind.startswith("tpu"):
        # "TPU v5 lite" is v5e and "TPU v5" v5p: test the lite names first.
        for needle, key in (("v6 lite", "v6e"), ("v6e", "v6e"), ("v5 lite", "v5e"), ("v5e", "v5e"),
                            ("v5p", "v5p"), ("v5", "v5p"), ("v4", "v4")):
            if needle in kind:
                return None if key == "v4" and "lite" in kind else key
        return None
    if "a100" in kind:
        return "a100-40gb" if "40gb" in kind.replace(" ", "") else "a100-80gb"
    if "h100" in kind:
        return "h100"
    if "h200" in kind:
        return "h200"
    return None


def device_peak_flops(device_kind: str) -> Optional[float]:
    """Dense bf16 peak FLOP/s of one device of this jax `device_kind`, or None when unknown."""
    key = device_key_for_kind(device_kind)
    if key is None:
        return None
    if key == "h100" and "pcie" in device_kind.lower():
        return H100_PCIE_PEAK
    return PEAK_BF16_FLOPS[key]


def device_memory(device) -> Optional[float]:
    """Bytes of memory one device offers, or None when it has no fixed limit (CPU) or is unknown."""
    if device.platform == "cpu":
        return None
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # some runtimes do not implement memory_stats
        limit = None
    if limit:
        return float(limit)
    key = device_key_for_kind(device.device_kind)
    return DEVICES[key].hbm_bytes if key else None
