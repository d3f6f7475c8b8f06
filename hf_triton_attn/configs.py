"""Launch configurations (block sizes, warps, pipeline stages) per head dimension.

The Triton interpreter (``TRITON_INTERPRET=1``) runs one program at a time on the CPU, so it gets small
blocks; on a GPU the blocks are sized for Hopper's shared memory and registers.
"""
from dataclasses import dataclass

import triton


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def padded_head_dim(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def forward_config(block_d: int, interpret: bool) -> LaunchConfig:
    if interpret:
        return LaunchConfig(32, 32, 1, 1)
    if block_d <= 64:
        return LaunchConfig(128, 64, 4, 3)
    if block_d <= 128:
        return LaunchConfig(128, 64, 8, 3)
    return LaunchConfig(64, 64, 8, 2)


def backward_config(block_d: int, interpret: bool) -> LaunchConfig:
    """One shape serves both backward kernels: dK/dV walks query blocks of block_m, dQ key blocks of block_n."""
    if interpret:
        return LaunchConfig(32, 32, 1, 1)
    if block_d <= 64:
        return LaunchConfig(64, 64, 4, 2)
    if block_d <= 128:
        return LaunchConfig(64, 64, 8, 2)
    return LaunchConfig(32, 32, 4, 1)


def preprocess_block_m(interpret: bool) -> int:
    return 32 if interpret else 128
