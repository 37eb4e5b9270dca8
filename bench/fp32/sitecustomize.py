"""Bench helper for CPUs without fast bf16 matmuls (AVX2 only: ~1 GFLOP/s in bf16, ~100 in fp32):
with PYTHONPATH=bench/fp32, every torch.autocast region runs in fp32 instead. Both arms of an A/B
must use it alike; its numbers are not comparable with bf16 runs."""
import torch

_autocast = torch.autocast


class _fp32(_autocast):
    def __init__(self, device_type, dtype=None, enabled=True, cache_enabled=None):
        super().__init__(device_type, dtype=dtype, enabled=False)


torch.autocast = _fp32
