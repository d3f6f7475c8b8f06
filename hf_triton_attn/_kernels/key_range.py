"""Where each batch row's key mask keeps keys: one small launch per call, read by every attention program.

The attention kernels skip the key blocks of padding and leave the key mask out of the blocks inside one run of
kept keys. Each of their programs used to find that range itself, a serial pass over the row's mask before its
first key block; one program per batch row now does it once. On an H100, right-padded B16 H16 S2048 D128 causal
bf16: forward 568 -> 557 µs, backward 1690 -> 1641 (benchmarks/NOTES.md, session 9).
"""
import triton
import triton.language as tl

from .common import _used_length


@triton.jit
def _key_ranges(
    KeyMask, SeqUsedK, KeyRange,
    stride_kmb, stride_kmn, Skv,
    HAS_SEQUSED: tl.constexpr, BLOCK: tl.constexpr,
):
    """Write (first, last + 1, one_run) of the keys that row ``program_id(0)``'s key mask keeps in [0, kv_end) as
    three int32 at KeyRange + 3 * row: first >= last + 1 when it keeps none; one_run = 1 when it keeps every key
    in between (left or right padding, no holes)."""
    pid_b = tl.program_id(0)
    kv_end = _used_length(SeqUsedK, pid_b, Skv, HAS_SEQUSED)
    offs = tl.arange(0, BLOCK)
    base = KeyMask + pid_b.to(tl.int64) * stride_kmb
    first = tl.zeros([], tl.int32) + kv_end
    last = tl.zeros([], tl.int32) - 1
    count = tl.zeros([], tl.int32)
    for start in range(0, kv_end, BLOCK):
        cols = start + offs
        kept = tl.load(base + cols * stride_kmn, mask=cols < kv_end, other=0) != 0
        first = tl.minimum(first, tl.min(tl.where(kept, cols, kv_end), 0))
        last = tl.maximum(last, tl.max(tl.where(kept, cols, -1), 0))
        count += tl.sum(kept.to(tl.int32), 0)
    out = KeyRange + pid_b * 3
    tl.store(out, first)
    tl.store(out + 1, last + 1)
    tl.store(out + 2, (count == last + 1 - first).to(tl.int32))
