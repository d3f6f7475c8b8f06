"""Launch configurations (block sizes, warps, pipeline stages) per head dimension.

The Triton interpreter (``TRITON_INTERPRET=1``) runs one program at a time on the CPU, so it gets small
blocks; on a GPU the blocks are sized for Hopper's shared memory and registers.
"""
import functools
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


def forward_uses_tma(head_dim: int, itemsize: int, interpret: bool) -> bool:
    """Whether the forward loads Q/K/V tiles through tensor descriptors (TMA) when the tensors allow it.

    Head dim 128 on an H100: with them (and the launch configuration below) the bf16 forward went from 458 to
    539 TFLOP/s (benchmarks/RESULTS.md). A one-off probe saw no gain at head_dim 64, so other head dims keep
    pointer loads until measured. The interpreter takes descriptors for every 16-bit power-of-two head dim, so
    the CPU tests cover both kinds of load."""
    if itemsize != 2 or head_dim != padded_head_dim(head_dim):
        return False
    return interpret or head_dim == 128


def dq_uses_tma(head_dim: int, itemsize: int, interpret: bool) -> bool:
    """Whether the dQ kernel streams K/V tiles through tensor descriptors, where the tensors allow: the forward's
    rule. Head dim 128 on an H100, B4 H16 S4096 bf16: dQ 816 -> 765 µs causal, 1450 -> 1308 µs full; the same loads
    in the dK/dV kernel (Q/dO) were 4% slower causal and 2-4% faster full or GQA, so it keeps pointer loads
    (benchmarks/NOTES.md)."""
    return forward_uses_tma(head_dim, itemsize, interpret)


# From this many keys a decoding call is long enough on the GPU for a descriptor launch's extra host time (tens
# of µs: KernelLauncher cannot cache launches with descriptor arguments) not to matter.
DECODE_TMA_MIN_KEYS = 16384


def decode_uses_tma(head_dim: int, itemsize: int, seqlen_k: int, interpret: bool) -> bool:
    """Whether the split-KV (decoding) kernel streams K/V through tensor descriptors, with 2 pipeline stages: at
    head_dim 128 and long caches. On an H100 (B8 H32/8 D128 bf16, GB/s of K/V read; benchmarks/NOTES.md): L32768
    2775 -> 2891 (cuDNN 2937); L131072 2741 -> 2733, even; 3 stages lost (2559 at L32768). The interpreter takes
    them at every 16-bit power-of-two head dim and length, so the CPU tests cover both kinds of load."""
    if not forward_uses_tma(head_dim, itemsize, interpret):
        return False
    return interpret or seqlen_k >= DECODE_TMA_MIN_KEYS


def forward_config(block_d: int, causal: bool, itemsize: int, interpret: bool, tma: bool = False,
                   dropout: bool = False) -> LaunchConfig:
    """Measured on an H100 with benchmarks/tune.py (bf16, S=4096). float32 (a correctness path, not a fast one)
    gets fewer pipeline stages at head_dim 256, where its tiles would not fit in shared memory. Dropout at head_dim
    64 takes smaller tiles: 242 -> 211 µs (full) and 168 -> 144 µs (causal) at B32 H12 S512."""
    if interpret:
        return LaunchConfig(32, 32, 1, 1)
    if tma:
        return LaunchConfig(128, 64, 4, 2)
    if block_d <= 64 and dropout:
        return LaunchConfig(64, 64, 4, 3)
    if block_d <= 64:
        return LaunchConfig(128, 64, 8, 3)
    if block_d <= 128:
        # Causal rows end on the diagonal: narrower key blocks waste less of the last one. float32 takes them too:
        # its 128x128 tiles need 384 KiB of shared memory, beyond Hopper's 227.
        return LaunchConfig(128, 64, 8, 3) if causal or itemsize > 2 else LaunchConfig(128, 128, 8, 3)
    return LaunchConfig(64, 64, 4, 3) if itemsize <= 2 else LaunchConfig(64, 64, 8, 2)


@dataclass(frozen=True)
class BackwardConfig:
    """dK/dV programs own ``dkdv.block_n`` keys and walk queries ``dkdv.block_m`` at a time; dQ programs own
    ``dq.block_m`` queries and walk keys ``dq.block_n`` at a time."""
    dkdv: LaunchConfig
    dq: LaunchConfig


def backward_config(block_d: int, causal: bool, itemsize: int, interpret: bool,
                    dropout: bool = False) -> BackwardConfig:
    """Measured on an H100 with benchmarks/tune.py (bf16, S=4096, forward+backward time). float32 keeps the
    narrower tiles its doubled size fits in.

    Dropout at head_dim 64 (BERT-style training) regenerates the keep-mask in both kernels, and at the default
    tiles the dK/dV kernel spilled registers: smaller tiles there cut its time from 339 to 263 µs, and dQ's from
    262 to 197 µs, at B32 H12 S512 (benchmarks/NOTES.md)."""
    if interpret:
        # Unequal query and key blocks, so the tests exercise the block arithmetic the GPU shapes rely on.
        return BackwardConfig(LaunchConfig(16, 32, 1, 1), LaunchConfig(32, 16, 1, 1))
    if itemsize > 2:
        if block_d <= 64:
            return BackwardConfig(LaunchConfig(32, 128, 4, 3), LaunchConfig(128, 32, 4, 3))
        if block_d <= 128:
            return BackwardConfig(LaunchConfig(32, 128, 8, 3), LaunchConfig(128, 32, 8, 3))
        return BackwardConfig(LaunchConfig(32, 32, 4, 1), LaunchConfig(32, 32, 4, 1))
    if block_d <= 64 and dropout:
        return BackwardConfig(LaunchConfig(64, 64, 4, 3), LaunchConfig(64, 32, 4, 3))
    if block_d <= 64:
        dq = LaunchConfig(128, 64, 4, 3) if causal else LaunchConfig(128, 64, 8, 2)
        return BackwardConfig(LaunchConfig(32, 128, 4, 3), dq)
    if block_d <= 128:
        return BackwardConfig(LaunchConfig(64, 128, 8, 3), LaunchConfig(128, 64, 8, 3))
    return BackwardConfig(LaunchConfig(32, 64, 8, 3), LaunchConfig(64, 32, 8, 2))


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


@functools.lru_cache(maxsize=1024)  # called on every decoding step, where host time is what limits speed
def split_kv_plan(rows: int, programs_per_split: int, seqlen_k: int, block_d: int, sm_count: int,
                  interpret: bool, tma: bool = False, *, programs_per_sm: int = 2, block_n: Optional[int] = None,
                  num_warps: int = 4, num_stages: Optional[int] = None) -> SplitKVPlan:
    """Enough splits that about ``programs_per_sm`` programs per multiprocessor stream the cache, each at least 4
    key blocks; ``tma``: the kernel loads K/V through descriptors (see :func:`decode_uses_tma`), which take 2
    pipeline stages instead of 3. The keyword arguments exist for benchmarks/tune.py."""
    block_r = max(16, triton.next_power_of_2(rows))
    if interpret:
        block_n = 32
        split_size = 2 * block_n  # several splits even at test sizes, so the merge is exercised
        num_warps = num_stages = 1
    else:
        block_n = block_n or (64 if block_d <= 128 else 32)
        num_stages = num_stages or (2 if tma else 3)
        splits = max(1, min(triton.cdiv(programs_per_sm * sm_count, programs_per_split),
                            triton.cdiv(seqlen_k, 4 * block_n)))
        split_size = triton.cdiv(triton.cdiv(seqlen_k, splits), block_n) * block_n
    return SplitKVPlan(block_r, block_n, split_size, triton.cdiv(seqlen_k, split_size), num_warps, num_stages)
