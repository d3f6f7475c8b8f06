"""Launch configurations (block sizes, warps, pipeline stages) per head dimension.

The Triton interpreter (``TRITON_INTERPRET=1``) runs one program at a time on the CPU, so it gets small
blocks; on a GPU the blocks are sized for Hopper's shared memory and registers.
"""
import functools
import os
from dataclasses import dataclass
from typing import Optional


def cdiv(a: int, b: int) -> int:
    """``triton.cdiv`` for host code: Triton's is a ConstexprFunction, whose call costs ~2 µs of host time."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2`` for host code, without the ConstexprFunction call (see :func:`cdiv`)."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


@dataclass(frozen=True)
class LaunchConfig:
    """``max_registers`` caps the registers per thread (Triton's ``maxnreg``), where measured to keep enough
    programs resident per multiprocessor; None leaves the choice to the compiler."""
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    max_registers: Optional[int] = None


def padded_head_dim(head_dim: int) -> int:
    return max(16, next_power_of_2(head_dim))


@functools.lru_cache(maxsize=None)  # called on every forward and backward
def head_dim_tiles(head_dim: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_D_TAIL) of q and k (and dQ, dK) in the Triton forward, dQ and dK/dV kernels: the head dim in
    one tile padded to a power of two (BLOCK_D_TAIL 0), or, where two power-of-two tiles cover it with fewer columns,
    the largest power of two below it and one for the rest (192: 128 + 64, 96: 64 + 32, 80: 64 + 16, rather than 256,
    128, 128): the products over the head dim then multiply fewer zero columns. Tiles have at least 16 columns (a
    tensor-core product's depth)."""
    padded = padded_head_dim(head_dim)
    low = padded // 2
    tail = padded_head_dim(head_dim - low) if head_dim > low else 0
    if low >= 16 and 0 < tail and low + tail < padded:
        return low, tail
    return padded, 0


# v's head dims that the Triton kernels take in two tiles (value_dim_tiles): those where the split ran on a GPU.
VALUE_DIM_SPLITS = (80, 96, 192)


@functools.lru_cache(maxsize=None)  # called on every forward
def value_dim_tiles(value_dim: int) -> tuple[int, int]:
    """(BLOCK_DV, BLOCK_DV_TAIL) of v, the output and their gradients in the Triton forward, dQ and dK/dV kernels
    (the split-KV kernel keeps one tile): at the head dims of VALUE_DIM_SPLITS, v in the two power-of-two tiles
    :func:`head_dim_tiles` gives q and k, which cover them exactly (80: 64 + 16, 96: 64 + 32, 192: 128 + 64);
    otherwise one tile padded to a power of two.

    On an H100 (benchmarks/RESULTS.md, session 39), against one padded tile, B4 H16 S4096 causal bf16:
    forward+backward 1.14-1.17x faster at 80, 96 and 192; the forward alone 1.06x at 80, 1.01x at 192, 0.97x at 96.
    On an H200, 80, 96 and 192 matched the oracle in nine kinds of call (forward and backward), but 40 (32 + 16, the
    tail reaching past v's end) gave wrong outputs and illegal memory accesses in every one: not understood (q and k
    take such tails without fault). Others that two tiles would cover exactly (48, 144, 160, 320, ...) never ran split
    on a GPU (benchmarks/pending/diag_value_split.py forces them)."""
    if value_dim in VALUE_DIM_SPLITS:
        return head_dim_tiles(value_dim)
    return padded_head_dim(value_dim), 0


def forward_uses_tma(head_dim: int, itemsize: int, interpret: bool) -> bool:
    """Whether the forward loads Q/K/V tiles through tensor descriptors (TMA) when the tensors allow it.

    On an H100, bf16: head_dim 128 went from 458 to 539 TFLOP/s with them (benchmarks/RESULTS.md); head_dim 256
    with the 128x64 tiles below, B2 H8 S4096 full 552 -> 542 µs, other shapes alike (benchmarks/NOTES.md, session
    13). At head_dim 64 they gained at most 2-4% on a few shapes and lost on others, so it keeps pointer loads.
    The interpreter takes descriptors for every 16-bit power-of-two head dim, so the CPU tests cover both kinds of
    load."""
    if itemsize != 2 or head_dim != padded_head_dim(head_dim):
        return False
    return interpret or head_dim in (128, 256)


# Head dim 64 takes the dQ kernel's descriptors from this many keys (see dq_uses_tma).
DQ_TMA_D64_MIN_KEYS = 4096


def dq_uses_tma(head_dim: int, itemsize: int, interpret: bool, seqlen_k: int) -> bool:
    """Whether the dQ kernel streams K/V tiles through tensor descriptors, where the tensors allow. Head dim 128 on
    an H100, B4 H16 S4096 bf16: dQ 816 -> 765 µs causal, 1450 -> 1308 µs full; the same loads in the dK/dV kernel
    (Q/dO) were 4% slower causal and 2-4% faster full or GQA, so it keeps pointer loads (benchmarks/NOTES.md).
    Head dim 64 on an H200, whole backward, best of three alternating rounds: B4 H32/8 S4096 causal 2172 -> 2128
    µs, B4 H32 S4096 causal 2075 -> 2026, full 3688 -> 3626, B1 H32 S16384 causal 7569 -> 7345; B16 H32 S1024
    causal and B32 H12 S512 full alike (session 22). So head dim 64 takes them from DQ_TMA_D64_MIN_KEYS keys only:
    building and encoding two descriptors costs host time per call, and the short rows' calls (BERT-style training)
    are the host-bound ones. Head dim 256 is not measured and keeps pointer loads."""
    if itemsize != 2 or head_dim != padded_head_dim(head_dim):
        return False
    return interpret or head_dim == 128 or (head_dim == 64 and seqlen_k >= DQ_TMA_D64_MIN_KEYS)


@functools.lru_cache(maxsize=1024)  # called on every forward; building a LaunchConfig costs ~1 µs
def forward_config(block_d: int, causal: bool, itemsize: int, interpret: bool, tma: bool = False,
                   dropout: bool = False, key_mask: bool = False, seqlen_k: Optional[int] = None,
                   dense_mask: bool = False) -> LaunchConfig:
    """Measured on an H100 with benchmarks/tune.py (bf16, S=4096) and alternating probes (benchmarks/NOTES.md).
    ``seqlen_k`` (None: long) picks smaller tiles for short causal rows. float32 (a correctness path, not a fast
    one) gets fewer pipeline stages at head_dim 256, where its tiles would not fit in shared memory. Dropout at
    head_dim 64 takes smaller tiles: 242 -> 211 µs (full) and 168 -> 144 µs (causal) at B32 H12 S512. A dense mask
    (``dense_mask``) keeps 64-key blocks at head dims 65-128 read by pointer (see below)."""
    if interpret:
        return LaunchConfig(32, 32, 1, 1)
    if block_d > 256:
        # Head dims 257-512 (Gemma 4's global layers), chosen from offline sm_90 compiles, not measured: one stage of
        # K/V tiles, within Hopper's shared memory (bf16 96 KiB, 20 bytes of spills; float32 96 KiB).
        return LaunchConfig(64, 32, 8, 1) if itemsize <= 2 else LaunchConfig(32, 16, 4, 1)
    if block_d > 128 and itemsize <= 2:
        # One program of two warp groups per multiprocessor, against 64x64 tiles with 4 warps, B2 H8 S4096 causal
        # 469 -> 350 µs, full 769 -> 542 (with descriptors), B1 H8 S16384 causal 3146 -> 2128 (session 13).
        return LaunchConfig(128, 64, 8, 2)
    if tma:
        if causal and seqlen_k is not None and seqlen_k <= 2048:
            # Short causal rows: the programs' few key blocks leave 128-row tiles waiting on their pipeline's
            # start and on the diagonal; B16 H16 S1024 229 -> 203 µs, B16 H32/8 S1024 412 -> 391, B8 H16 S2048
            # 366 -> 356; at S4096 the two tile shapes time alike and at S16384 128 rows win (session 13).
            return LaunchConfig(64, 64, 4, 3)
        return LaunchConfig(128, 64, 4, 2)
    if block_d <= 64 and dropout:
        return LaunchConfig(64, 64, 4, 3)
    if block_d <= 64:
        # Two programs per multiprocessor need at most 128 registers per thread (8 warps). With a key mask the
        # kernel compiles to 158 (triton 3.6); capped, to 127 without spilling. Without one it needs no cap, and
        # the cap cost ~1-2% in a one-off probe (benchmarks/NOTES.md, session 9).
        return LaunchConfig(128, 64, 8, 3, max_registers=128 if key_mask else None)
    if block_d <= 128:
        # Causal rows end on the diagonal: narrower key blocks waste less of the last one. float32 takes them too:
        # its 128x128 tiles need 384 KiB of shared memory, beyond Hopper's 227. So does a dense mask, whose tiles
        # are pipelined with K and V: at head dim 96 with v in two tiles, 128x128 tiles need 232 KiB (over Hopper's
        # limit on an H200, session 39) and 128x64 ones 112 KiB; at 80 they spill 2936 bytes against none (offline
        # compiles, triton 3.6). Not timed.
        if causal or itemsize > 2 or dense_mask:
            return LaunchConfig(128, 64, 8, 3)
        return LaunchConfig(128, 128, 8, 3)
    return LaunchConfig(64, 64, 8, 2)


# The Gluon forward (_kernels/fwd_gluon.py) is taken where hopper_forward_config allows it, unless the environment
# variable is set to 0 (for A/B measurements, or should a Triton release break Gluon's experimental API).
GLUON_FORWARD = os.environ.get("HF_TRITON_ATTN_GLUON", "1") != "0"
GLUON_MIN_QUERIES = 128
# At head_dim 64 the Gluon forward gains from about a thousand queries, with or without a causal mask. Causal, against
# the Triton kernel: 1024 queries 1.00, 2048 1.02, 4096 1.05-1.09 once its output went through a TMA store (session
# 26); with its tiles from a counter, 512 queries 1.00, 1024 1.02-1.03, 1536 1.03, 2048 1.04 (session 28).
GLUON_D64_MIN_QUERIES = 1024
# At head_dim 256, 64-key blocks (output by pointer) gain from about a thousand queries over 32-key ones (output through
# TMA), which are faster on shorter rows (session 28).
GLUON_D256_WIDE_MIN_QUERIES = 1024
# Causal Gluon forwards take their tiles in sections of heads whose K/V fit this much of the L2 cache (Hopper: 50 MiB).
GLUON_L2_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class HopperForwardConfig:
    """The warp-specialised Gluon forward's launch: its two consumer warpgroups of ``block_mw`` query rows each share
    a ring of ``stages`` K/V tiles of ``block_n`` keys that one loader warp fills; ``consumer_regs`` registers per
    thread for the second consumer (the first gets what ``max_registers`` leaves after the others). ``tma_store``:
    the output leaves through shared memory by TMA, overlapping the next tile, instead of by pointer. ``q_slots``:
    query tiles per consumer in shared memory; with two the loader fetches the next tile's queries while the
    consumers finish this one."""
    block_mw: int
    block_n: int
    stages: int
    consumer_regs: int
    max_registers: int
    tma_store: bool = True
    q_slots: int = 2


@functools.lru_cache(maxsize=64)
def hopper_forward_config(head_dim: int, itemsize: int, capability: tuple, seqlen_q: int, causal: bool,
                          value_dim: Optional[int] = None) -> Optional[HopperForwardConfig]:
    """The Gluon forward's configuration, or None where the Triton kernel (fwd.py) stays faster or the Gluon one
    does not apply. Only on Hopper (sm_90), 16-bit; head_dims 128 and 256 from GLUON_MIN_QUERIES queries, head_dim
    64 from GLUON_D64_MIN_QUERIES, and multi-head latent attention's q/k head dim 192 with v's 128 (``value_dim``;
    None: v's head dim is q's) from GLUON_MIN_QUERIES, q and k in tiles of 128 and 64 columns
    (:func:`head_dim_tiles`).

    Measured on an H200 (benchmarks/RESULTS.md), bf16, TFLOP/s. Head_dim 128, session 19: the kernel against the
    Triton one in two alternating rounds, B4 H16 S4096 full 513/505 -> 582/526, causal 436/426 -> 507/482; session
    20 made it persistent and let it take key-padding masks: S1024 full 519, the padded Llama-like row 242 useful
    TFLOP/s (the Triton kernel 230). Head_dim 64, session 21, persistent, Triton kernel -> 3 stages (2 stages):
    B16 H32 S1024 full 375/362 -> 390/396 (395/385), causal 276/277 -> 255/256; B4 S4096 full 406/402 -> 437/435,
    causal 369/378 -> 377/369; B1 S16384 full 386/419 -> 464/452, causal 401/401 -> 430/422 (431/428).

    The output through TMA (``tma_store``) against plain stores, session 26, best of three or five alternating
    rounds: head_dim 128 B16 H16 S1024 causal 339 -> 395, full 534 -> 567, B8 S2048 causal 428 -> 458, B4 S4096
    causal 499 -> 514, full 587 -> 605, B1 S16384 causal 584 -> 602, the padded Llama-like row 245 -> 274; head_dim 64
    causal B2 H32 S8192 411 -> 433, B1 S16384 425 -> 435, but full B4 S4096 454 -> 423 and B1 S16384 449 -> 423, so
    head_dim 64 without a causal mask keeps the plain stores.

    Head_dim 256, session 28, Triton kernel -> 32-key blocks, 3 stages, TMA store -> 64-key blocks, 2 stages, plain
    stores, best of three alternating rounds: causal B32 H8/1 S256 72 -> 125 -> 85, B16 H16 S512 221 -> 277 -> 252,
    full 355 -> 421 -> 435, B8 S1024 causal 305 -> 359 -> 365, full 424 -> 462 -> 529, B4 S2048 causal 379 -> 423
    -> 474, B2 H8 S4096 causal 394 -> 473 -> 573 (cuDNN 519), B1 S16384 causal 507 -> 511 -> 651."""
    if capability != (9, 0) or itemsize != 2:
        return None
    if value_dim is not None and value_dim != head_dim:
        if (head_dim, value_dim) == (192, 128) and seqlen_q >= GLUON_MIN_QUERIES:
            # Two query slots of 64 x (128 + 64) columns per consumer and two stages of 64-key K (128 + 64) and V
            # tiles, the output through TMA: 213 KiB of shared memory (offline compile). Fastest of four
            # configurations on three of four rows (benchmarks/RESULTS.md, session 39, table 1): 1.02x cuDNN at
            # B4 H16 S4096 causal; 128-key blocks with one query slot were 4.5% faster on the full row only.
            return HopperForwardConfig(block_mw=64, block_n=64, stages=2, consumer_regs=240, max_registers=168,
                                       tma_store=True)
        return None
    if head_dim == 128 and seqlen_q >= GLUON_MIN_QUERIES:
        return HopperForwardConfig(block_mw=64, block_n=128, stages=2, consumer_regs=240, max_registers=168)
    if head_dim in (80, 96) and seqlen_q >= GLUON_MIN_QUERIES:
        # q/k, v and the output in tiles of 64 + 16 or 64 + 32 columns (head_dim_tiles, value_dim_tiles), as head_dim
        # 128 takes them: two query slots, two stages of 128-key K/V tiles, the output through TMA. H100, bf16, µs
        # (benchmarks/RESULTS.md, session 40): D80 B4 H16 S4096 causal 598 (Triton) -> 425 (cuDNN 520), full 1004 ->
        # 733 (902), B16 S1024 causal 212 -> 154 (155); D96 660 -> 498 (524), 1035 -> 789 (933), 232 -> 173 (158).
        # Within 1% of the best of four configurations but at D96 S4096 causal (plain stores 3% faster there, 2-11%
        # slower elsewhere).
        return HopperForwardConfig(block_mw=64, block_n=128, stages=2, consumer_regs=240, max_registers=168)
    if head_dim == 192 and seqlen_q >= GLUON_MIN_QUERIES:
        # Tiles of 128 + 64 columns; one query slot per consumer and two stages of 64-key K/V tiles, the output
        # through TMA: fastest of four configurations on all three rows, H100, bf16, µs (benchmarks/RESULTS.md,
        # session 40): B4 H16 S4096 causal 1054 (Triton) -> 731 (cuDNN 798), full 1896 -> 1357 (1373), B16 S1024
        # causal 383 -> 260 (241).
        return HopperForwardConfig(block_mw=64, block_n=64, stages=2, consumer_regs=240, max_registers=168,
                                   q_slots=1)
    if head_dim == 64 and seqlen_q >= GLUON_D64_MIN_QUERIES:
        return HopperForwardConfig(block_mw=64, block_n=128, stages=3, consumer_regs=240, max_registers=168,
                                   tma_store=causal)
    if head_dim == 256 and seqlen_q >= GLUON_D256_WIDE_MIN_QUERIES:
        # A (64, 256) tile is 32 KiB: one query slot per consumer and two stages of 64-key K/V tiles make 192 KiB
        # of shared memory, with no room for the output slots.
        return HopperForwardConfig(block_mw=64, block_n=64, stages=2, consumer_regs=240, max_registers=168,
                                   tma_store=False, q_slots=1)
    if head_dim == 256 and seqlen_q >= GLUON_MIN_QUERIES:
        return HopperForwardConfig(block_mw=64, block_n=32, stages=3, consumer_regs=240, max_registers=168,
                                   tma_store=True, q_slots=1)
    return None


# The Gluon dQ kernel (_kernels/bwd_dq_gluon.py) is taken where hopper_dq_config allows it, under the same switch as
# the Gluon forward.
GLUON_DQ = GLUON_FORWARD


@dataclass(frozen=True)
class HopperDQConfig:
    """The warp-specialised Gluon dQ kernel's launch: two consumer warpgroups of ``block_mw`` query rows each share a
    ring of ``stages`` K/V tiles of ``block_n`` keys that one loader warp fills; registers as in
    :class:`HopperForwardConfig`."""
    block_mw: int
    block_n: int
    stages: int
    consumer_regs: int = 240
    max_registers: int = 168


@functools.lru_cache(maxsize=64)
def hopper_dq_config(head_dim: int, itemsize: int, capability: tuple, seqlen_q: int,
                     value_dim: Optional[int] = None) -> Optional[HopperDQConfig]:
    """The Gluon dQ kernel's configuration, or None where the Triton dQ kernel (bwd.py) serves the call: only on
    Hopper (sm_90), 16-bit, head_dims 80, 96, 128 and 192 and multi-head latent attention's q/k 192 with v 128
    (``value_dim``; None: v's head dim is q's), from GLUON_MIN_QUERIES queries.

    H200, bf16, the dQ kernel's GPU time (torch.profiler, µs per backward; benchmarks/RESULTS.md, session 30), Triton
    kernel -> this one: B16 H16 S1024 causal 306 -> 238, full 437 -> 326, B32 S512 causal 225 -> 170, B8 S2048 causal
    480 -> 349, B4 S4096 causal 795 -> 582, B4 H32/8 S4096 causal 1546 -> 1152. At head_dim 64 it ties at best (B4
    H32/8 S4096 causal 740 against 738-885 over five tiles, B16 H32 S1024 causal 273 against 288, full B4 S4096 1392
    against 1469), so head_dim 64 keeps the Triton kernel."""
    if capability != (9, 0) or itemsize != 2 or seqlen_q < GLUON_MIN_QUERIES:
        return None
    if (head_dim, value_dim or head_dim) == (192, 128):
        # Q (128 + 64 columns), O and dO per consumer and two stages of 64-key K (128 + 64) and V tiles: 192 KiB of
        # shared memory, where three stages would need 232. H100, bf16, forward+backward µs with the Gluon dK/dV
        # kernel, Triton dQ -> this one (benchmarks/RESULTS.md, session 40): B4 H16 S4096 causal 3322 -> 3112, full
        # 6090 -> 5789, B1 H128 S4096 causal 6442 -> 6133, B16 S1024 causal 1144 -> 1142.
        return HopperDQConfig(block_mw=64, block_n=64, stages=2)
    if (head_dim, value_dim or head_dim) == (192, 192):
        # q/k, v, O, dO and dQ in tiles of 128 + 64 columns: Q, O and dO per consumer take 144 KiB of shared memory,
        # so 32-key blocks (three stages: 217 KiB). Offline (triton 3.9): 8 bytes of spills. H100, bf16, the dQ
        # kernel's GPU time (torch.profiler, µs per forward+backward; benchmarks/RESULTS.md, session 41), Triton
        # kernel -> this one: B32 S512 causal 417 -> 338, B16 S1024 causal 614 -> 428, full 984 -> 572, B16 H32/8
        # S1024 causal 1207 -> 841, B4 S4096 causal 1840 -> 1058.
        return HopperDQConfig(block_mw=64, block_n=32, stages=3)
    # At 80 and 96 q/k, v, O, dO and dQ in tiles of 64 + 16 or 64 + 32 columns (head_dim_tiles, value_dim_tiles),
    # as head_dim 128 takes them. H100, bf16, the dQ kernel's GPU time as above, Triton kernel -> this one: D80 B32
    # S512 causal 188 -> 154, B16 S1024 causal 259 -> 201, B4 S4096 causal 755 -> 473; D96 205 -> 184, 277 -> 238,
    # 785 -> 579 (and faster on every other row measured: full, GQA, S2048).
    if (head_dim, value_dim or head_dim) not in ((80, 80), (96, 96), (128, 128)):
        return None
    return HopperDQConfig(block_mw=64, block_n=64, stages=3)


# The Gluon dK/dV kernel (_kernels/bwd_dkdv_gluon.py) is taken where hopper_dkdv_config allows it, under the same
# switch as the Gluon forward.
GLUON_DKDV = GLUON_FORWARD


@dataclass(frozen=True)
class HopperDKDVConfig:
    """The warp-specialised Gluon dK/dV kernel's launch: two consumer warpgroups of ``block_nw`` keys each share a ring
    of ``stages`` Q/dO tiles of ``block_m`` queries that one loader warp fills; ``kv_slots`` K/V tiles per consumer
    (two: the next tile's are loaded while this one ends); ``stats_in_score_layout``: LSE and Delta loaded straight
    into the scores' column layout (registers for each of a thread's columns) rather than one row per thread and
    converted through shared memory every step; registers as in :class:`HopperForwardConfig`."""
    block_m: int
    block_nw: int
    stages: int
    kv_slots: int
    stats_in_score_layout: bool = False
    consumer_regs: int = 240
    max_registers: int = 168


# The Gluon dK/dV kernel is never taken below this many keys (without a causal mask fewer were not measured; under
# one, with GQA, 256 keys lost at head_dim 128).
GLUON_DKDV_MIN_KEYS = 512
# At head_dim 80 under a causal mask without GQA it is taken from more than these many keys (96 and 128: more than
# BWD_D128_SHORT_CAUSAL_MAX_KEYS).
GLUON_DKDV_D80_SHORT_CAUSAL_MAX_KEYS = 512
# At head_dim 64 without a causal mask it is taken from these many keys: without and with GQA.
GLUON_DKDV_D64_FULL_MIN_KEYS = 2048
GLUON_DKDV_D64_FULL_GQA_MIN_KEYS = 4096


@functools.lru_cache(maxsize=64)
def hopper_dkdv_config(head_dim: int, itemsize: int, capability: tuple, seqlen_k: int, group: int,
                       causal: bool, value_dim: Optional[int] = None) -> Optional[HopperDKDVConfig]:
    """The Gluon dK/dV kernel's configuration, or None where the Triton dK/dV kernel (bwd.py) serves the call: only on
    Hopper (sm_90), 16-bit; ``group`` is the number of query heads per kv head; ``value_dim`` v's head dim (None: q's).
    Multi-head latent attention's q/k 192 with v 128 from GLUON_DKDV_MIN_KEYS keys; head_dim 192 from as many without
    a causal mask only (under one it loses or ties). Head_dims 80, 96 and 128 from GLUON_DKDV_MIN_KEYS keys, but
    under a causal mask without GQA from more than BWD_D128_SHORT_CAUSAL_MAX_KEYS (where at 128 the Triton kernel's
    narrow tiles tie or win; at 80 from more than GLUON_DKDV_D80_SHORT_CAUSAL_MAX_KEYS).
    Head_dim 64: under a causal mask with GQA from GLUON_DKDV_MIN_KEYS keys, never without GQA (there the Triton
    kernel wins); without a causal mask from GLUON_DKDV_D64_FULL_MIN_KEYS keys, with GQA from
    GLUON_DKDV_D64_FULL_GQA_MIN_KEYS, LSE and Delta loaded in the scores' layout (which under a causal mask loses).

    H200, bf16, the dK/dV kernel's GPU time (torch.profiler, µs per backward; benchmarks/RESULTS.md, sessions 31 and
    32), Triton kernel -> this one. Head_dim 128 (3 stages, one K/V slot): B4 H16 S4096 causal 1153 -> 923, full
    2068 -> 1610, B4 H32/8 S4096 causal 2145 -> 1683, B8 S2048 causal 638 -> 539, B16 S1024 full 600 -> 493, B32
    S512 full 362 -> 316, with GQA (B, S, H, D) B16 H32/8 S1024 causal 636 -> 515, B32 H32/8 S512 causal 360 -> 319;
    but without GQA B16 S1024 causal 354 -> 356, B32 S512 causal 227 -> 264, B64 S256 causal 166 -> 225.
    Head_dim 64 (4 stages, two K/V slots; (B, S, H, D) inputs where GQA): causal B4 H32/8 S4096 1137-1153 ->
    1078-1096, B8 H32/8 S2048 616-620 -> 572-577, B16 H32/8 S1024 351 -> 321, B32 H12/4 S512 87 -> 83; but without
    GQA B2 H32 S8192 2346 -> 2468, B4 H32 S4096 1222 -> 1271, B8 S2048 676-677 -> 709, B16 S1024 402 -> 422. Without a
    causal mask (scores' layout; the other in brackets): B4 H32 S4096 2150 -> 1971-1994 [2049-2060], B8 H32 S2048
    1114 -> 1053 [1086], B4 H32/8 S4096 2210 -> 2154 [2444]; but B16 H32 S1024 596 -> 602 [599], B16 H32/8 S1024
    569 -> 608 [633]."""
    if capability != (9, 0) or itemsize != 2:
        return None
    if (head_dim, value_dim or head_dim) == (192, 128):
        # 32-query steps: dK (128 + 64 columns) and dV (128) take 160 registers of accumulators per thread, and
        # 64-query steps' scores and probabilities would not fit beside them. H100, bf16, forward+backward µs with
        # the Gluon dQ kernel, Triton dK/dV -> this one (benchmarks/RESULTS.md, session 40): B4 H16 S4096 causal 4326
        # -> 3112 (cuDNN 2991), full 8033 -> 5789 (7362), B1 H128 S4096 causal 8467 -> 6133 (5773), B16 S1024 causal
        # 1405 -> 1142 (1074).
        if seqlen_k < GLUON_DKDV_MIN_KEYS:
            return None
        return HopperDKDVConfig(block_m=32, block_nw=64, stages=4, kv_slots=1)
    if value_dim not in (None, head_dim):
        return None
    if head_dim == 192:
        # q/k, v, dK and dV in tiles of 128 + 64 columns, 32-query steps as at 192/128: dK and dV hold 192
        # accumulator registers per thread. Offline (triton 3.9): 828 bytes of spills causal, 504 full. H100, bf16,
        # the dK/dV kernel's GPU time (torch.profiler, µs per forward+backward; benchmarks/RESULTS.md, session 41),
        # Triton kernel -> this one: full B32 S512 951 -> 840, B16 S1024 1668 -> 1484, B8 S2048 3184 -> 2783; but
        # causal B32 S512 573 -> 698, B16 S1024 947 -> 1058, B16 H32/8 S1024 1815 -> 1917, B8 S2048 1694 -> 1805, B4
        # S4096 3203 -> 3194.
        if causal or seqlen_k < GLUON_DKDV_MIN_KEYS:
            return None
        return HopperDKDVConfig(block_m=32, block_nw=64, stages=4, kv_slots=1)
    if head_dim == 64:
        if causal and group > 1 and seqlen_k >= GLUON_DKDV_MIN_KEYS:
            return HopperDKDVConfig(block_m=64, block_nw=64, stages=4, kv_slots=2)
        if not causal and seqlen_k >= (GLUON_DKDV_D64_FULL_GQA_MIN_KEYS if group > 1 else GLUON_DKDV_D64_FULL_MIN_KEYS):
            return HopperDKDVConfig(block_m=64, block_nw=64, stages=4, kv_slots=2, stats_in_score_layout=True)
        return None
    # At 80 and 96 q/k, v, dK and dV in tiles of 64 + 16 or 64 + 32 columns (head_dim_tiles, value_dim_tiles). H100,
    # bf16, the dK/dV kernel's GPU time as at 192, Triton kernel -> this one: D80 B32 S512 causal 184 -> 201, full
    # 297 -> 247, B16 S1024 causal 284 -> 269, B16 H32/8 S1024 causal 519 -> 455, B4 S4096 causal 1027 -> 729; D96
    # 199 -> 240, 316 -> 269, 307 -> 328, 563 -> 470, 1054 -> 900.
    short_causal_max_keys = GLUON_DKDV_D80_SHORT_CAUSAL_MAX_KEYS if head_dim == 80 else BWD_D128_SHORT_CAUSAL_MAX_KEYS
    short_causal = causal and group == 1 and seqlen_k <= short_causal_max_keys
    if head_dim not in (80, 96, 128) or seqlen_k < GLUON_DKDV_MIN_KEYS or short_causal:
        return None
    return HopperDKDVConfig(block_m=64, block_nw=64, stages=3, kv_slots=1)


@dataclass(frozen=True)
class BackwardConfig:
    """dK/dV programs own ``dkdv.block_n`` keys and walk queries ``dkdv.block_m`` at a time; dQ programs own
    ``dq.block_m`` queries and walk keys ``dq.block_n`` at a time."""
    dkdv: LaunchConfig
    dq: LaunchConfig


# Head dim 128 under a causal mask takes narrower dK/dV tiles up to this many keys (see backward_config).
BWD_D128_SHORT_CAUSAL_MAX_KEYS = 1024


@functools.lru_cache(maxsize=1024)  # called on every backward; building its three dataclasses costs ~2 µs
def backward_config(block_d: int, itemsize: int, interpret: bool, dropout: bool = False, causal: bool = False,
                    seqlen_k: int = 0, split_tiles: bool = False) -> BackwardConfig:
    """Measured on an H100 with benchmarks/tune.py (bf16, S=4096, forward+backward time). float32 keeps the
    narrower tiles its doubled size fits in. ``split_tiles``: q/k and v each come in two tiles (head_dim_tiles,
    value_dim_tiles; 192 = 128 + 64 where ``block_d``, the padded head dim, is 256).

    Head dim 192 in two tiles, causal, 16-bit: dK/dV 32x128 tiles with 8 warps, 2 stages (offline, triton 3.9: 64
    bytes of spills, 148 KiB of shared memory). H200, bf16, the dK/dV kernel's GPU time (torch.profiler;
    benchmarks/RESULTS.md, session 41), the 64x64 tiles taken before (measured at 256 in one tile) -> these: B4 H16
    S4096 3142 -> 2111 µs, B16 H16 S1024 943 -> 695 (best of eight tiles on both rows); H100, forward+backward
    5041 -> 3935 µs (cuDNN 4226) and 1646 -> 1395 (cuDNN 1475). Not measured without a causal mask (the Gluon dK/dV
    kernel takes those rows on Hopper from 512 keys) nor for 192/128.

    Head dim 128, causal, at most BWD_D128_SHORT_CAUSAL_MAX_KEYS keys: dK/dV 32x64 tiles with 4 warps. H200, bf16
    (benchmarks/RESULTS.md, session 29): the dK/dV kernel's GPU time B16 H16 S1000 467 -> 405 µs, B32 H16 S512
    257 -> 227, B8 H16 S1024 192 -> 187; forward+backward B16 H16 S1024 867 -> 856 µs, best of five alternating
    rounds. They lose from S2048 on (B4 H16 S4096 2400 -> 2500 µs) and without a causal mask (B16 H16 S1024 1255 ->
    1285).

    Dropout at head_dim 64 (BERT-style training) regenerates the keep-mask in both kernels, and at the default
    tiles the dK/dV kernel spilled registers: smaller tiles there cut its time from 339 to 263 µs, and dQ's from
    262 to 197 µs, at B32 H12 S512 (benchmarks/NOTES.md)."""
    if interpret:
        # Unequal query and key blocks, so the tests exercise the block arithmetic the GPU shapes rely on.
        return BackwardConfig(LaunchConfig(16, 32, 1, 1), LaunchConfig(32, 16, 1, 1))
    if block_d > 256:
        # Head dims 257-512, from offline sm_90 compiles, not measured: bf16 dK/dV 160 KiB of shared memory and no
        # spills, dQ 160 KiB and 556 bytes of spills; float32 128-130 KiB.
        if itemsize <= 2:
            return BackwardConfig(LaunchConfig(32, 32, 8, 1), LaunchConfig(64, 16, 8, 1))
        return BackwardConfig(LaunchConfig(16, 16, 8, 1), LaunchConfig(16, 16, 8, 1))
    if itemsize > 2:
        if block_d <= 64:
            return BackwardConfig(LaunchConfig(32, 128, 4, 3), LaunchConfig(128, 32, 4, 3))
        if block_d <= 128:
            return BackwardConfig(LaunchConfig(32, 128, 8, 3), LaunchConfig(128, 32, 8, 3))
        return BackwardConfig(LaunchConfig(32, 32, 4, 1), LaunchConfig(32, 32, 4, 1))
    if block_d <= 64 and dropout:
        return BackwardConfig(LaunchConfig(64, 64, 4, 3), LaunchConfig(64, 32, 4, 3))
    if block_d <= 64:
        # dQ with 8 warps and at most 128 registers, two programs per multiprocessor, against the earlier 4 warps
        # (causal) or 2 stages (full), in one alternating run (benchmarks/NOTES.md, session 9): whole backward
        # B4 H32/8 S4096 causal 2349 -> 2288 µs, B32 H12 S512 full 259 -> 248, the same right-padded 267 -> 212.
        return BackwardConfig(LaunchConfig(32, 128, 4, 3), LaunchConfig(128, 64, 8, 3, max_registers=128))
    if block_d <= 128:
        short_causal = causal and not dropout and seqlen_k <= BWD_D128_SHORT_CAUSAL_MAX_KEYS
        return BackwardConfig(LaunchConfig(32, 64, 4, 3) if short_causal else LaunchConfig(64, 128, 8, 3),
                              LaunchConfig(128, 64, 8, 3))
    # Against 32x64 (dK/dV) and 64x32 with 8 warps, 2 stages (dQ), whole forward+backward B2 H8 S4096 full
    # 5234 -> 3572 µs; causal 2970 -> ~2170 with this dK/dV tile, where the two best dQ tiles time alike
    # (benchmarks/NOTES.md, session 13). Head dim 192 split in two tiles under a causal mask: 32x128 (docstring).
    split_causal = split_tiles and causal and not dropout
    return BackwardConfig(LaunchConfig(32, 128, 8, 2) if split_causal else LaunchConfig(64, 64, 8, 2),
                          LaunchConfig(64, 32, 4, 3))


# Under a causal mask the dK/dV grid takes key blocks on its outer axis up to this many programs per multiprocessor.
DKDV_KEY_BLOCKS_OUTER_MAX_PROGRAMS_PER_SM = 8


def dkdv_key_blocks_outer(causal: bool, programs: int, sm_count: int) -> bool:
    """Whether the dK/dV grid walks key blocks on its slower axis. Under a causal mask a key block's work falls
    with its index (fewer queries see later keys), and the GPU starts programs in grid order: key blocks outer
    start the heaviest programs of every (batch, kv head) first and leave the light ones to fill the tail. That
    pays where the grid is a few waves of programs. H200, backward alone, best of three alternating rounds
    (benchmarks/NOTES.md, session 23), at 7.8 programs per multiprocessor: B4 H32/8 S4096 head_dim 64 causal
    2151 -> 1968 µs, head_dim 128 3873 -> 3834, B2 H8 S4096 head_dim 256 1748 -> 1649. At 15.5 and more it read
    0.98-1.02 of the old order over two runs (B4 H16 S4096 head_dim 128, head_dim 64 MHA from S1024 to S16384),
    and without a causal mask 0.95-0.97 (likely L2 reuse, neighbouring programs reading the same queries; not
    profiled)."""
    return causal and programs <= DKDV_KEY_BLOCKS_OUTER_MAX_PROGRAMS_PER_SM * sm_count


# Split-KV (decoding) path: taken when every query head of a kv head fits one tile of packed rows.
SPLIT_KV_MAX_ROWS = 64
SPLIT_KV_MAX_QUERIES = 16
# A call that is not captured into a CUDA graph pays for each launch in host time: splitting the keys costs a merge
# launch and its workspace, 17-38 µs per call on the H100 host, while one program per (batch, kv head) streams
# this much K and V in ~6-17 µs (about 40 GB/s per program). So such calls take one split up to this size
# (benchmarks/NOTES.md, session 14).
SPLIT_KV_EAGER_SINGLE_BYTES = 512 * 1024


@dataclass(frozen=True)
class SplitKVPlan:
    block_r: int
    block_n: int
    split_size: int
    num_splits: int
    num_warps: int
    num_stages: int

    @property
    def block_s(self) -> int:
        """The merge kernel's tile over splits: a power of two, at least 2."""
        return max(2, next_power_of_2(self.num_splits))


@functools.lru_cache(maxsize=1024)  # called on every decoding step, where host time is what limits speed
def split_kv_plan(rows: int, programs_per_split: int, seqlen_k: int, block_d: int, itemsize: int, sm_count: int,
                  interpret: bool, *, host_bound: bool = False, programs_per_sm: int = 1,
                  block_n: Optional[int] = None, num_warps: int = 4, num_stages: int = 3) -> SplitKVPlan:
    """One wave of programs: as many splits as fill ``programs_per_sm`` programs per multiprocessor (rounded
    down), each streaming its keys through 3 pipeline stages of wide key blocks (``3 * 2 * block_n`` rows of K and
    V: 192 KiB of shared memory at 128 16-bit columns). A split shorter than two such blocks takes half-width ones.
    ``host_bound`` (a call launched eagerly, not captured into a CUDA graph): one split, hence no merge launch, while
    a program's K and V take at most ``SPLIT_KV_EAGER_SINGLE_BYTES``; B8 H32/8 L1024 D128 then takes ~48 µs of
    host time per call against ~66 with two splits, and 13.1 µs of GPU time against 10.4 (session 14).

    On an H100 (B8 H32/8 D128 bf16, CUDA-graph replay, µs; benchmarks/NOTES.md) this plan against the previous one
    (about 2 programs per multiprocessor, 64-key blocks, at least 4 per split) and cuDNN: L1024 10.1 / 11.5 / 11.0,
    L4096 50.0 / 54.4 / 50.6, L8192 93.2 / 101.4 / 94.6, L32768 352.9 / 357.9 / 351.3; B1 L131072 180.2 / 184.6 /
    179.9. The keyword arguments exist for benchmarks/tune.py."""
    block_r = max(16, next_power_of_2(rows))
    if interpret:
        block_n = 32
        split_size = 2 * block_n  # several splits even at test sizes, so the merge is exercised
        num_warps = num_stages = 1
    else:
        # 32 KiB per key block of K (and as much of V), whatever the head dim and dtype, within 32..128 keys.
        block_n = block_n or min(128, max(32, 32768 // (block_d * itemsize)))
        if block_d > 256:
            # Head dims 257-512 (not measured): a 64-row tile's accumulator over 8 warps, one stage of 32-key K/V
            # blocks (64 KiB at 16 bits, 128 at 32).
            num_warps, num_stages = 8, 1
        splits = max(1, min(programs_per_sm * sm_count // programs_per_split, cdiv(seqlen_k, block_n)))
        if host_bound and 2 * seqlen_k * block_d * itemsize <= SPLIT_KV_EAGER_SINGLE_BYTES:
            splits = 1
        if cdiv(seqlen_k, splits) < 2 * block_n and block_n > 32:
            block_n //= 2
        split_size = cdiv(cdiv(seqlen_k, splits), block_n) * block_n
    return SplitKVPlan(block_r, block_n, split_size, cdiv(seqlen_k, split_size), num_warps, num_stages)
