"""Launch configurations (block sizes, warps, pipeline stages) per head dimension.

The Triton interpreter (``TRITON_INTERPRET=1``) runs one program at a time on the CPU, so it gets small
blocks; on a GPU the blocks are sized for Hopper's shared memory and registers.
"""
from dataclasses import dataclass
from typing import Optional

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


# Split-KV (decoding) path: taken when every query head of a kv head fits one tile of packed rows.
SPLIT_KV_MAX_ROWS = 64
SPLIT_KV_MAX_QUERIES = 16


@dataclass(frozen=True)
class SplitKVPlan:
    block_r: int
    block_n: int
    split_size: int
    num_splits: int
    num_warps: int
    num_stages: int


def split_kv_plan(rows: int, programs_per_split: int, seqlen_k: int, block_d: int, sm_count: int,
                  interpret: bool, *, programs_per_sm: int = 2, block_n: Optional[int] = None, num_warps: int = 4,
                  num_stages: int = 3) -> SplitKVPlan:
    """Enough splits that about ``programs_per_sm`` programs per multiprocessor stream the cache, each at least 4
    key blocks. The keyword arguments exist for benchmarks/tune.py."""
    block_r = max(16, triton.next_power_of_2(rows))
    if interpret:
        block_n = 32
        split_size = 2 * block_n  # several splits even at test sizes, so the merge is exercised
        num_warps = num_stages = 1
    else:
        block_n = block_n or (64 if block_d <= 128 else 32)
        splits = max(1, min(triton.cdiv(programs_per_sm * sm_count, programs_per_split),
                            triton.cdiv(seqlen_k, 4 * block_n)))
        split_size = triton.cdiv(triton.cdiv(seqlen_k, splits), block_n) * block_n
    return SplitKVPlan(block_r, block_n, split_size, triton.cdiv(seqlen_k, split_size), num_warps, num_stages)
