"""Where a dense mask lets each query row see keys: the span the attention kernels walk instead of every block.

A dense (B, H, Sq, Skv) mask is applied tile by tile, so without a summary every key block is computed even when
the mask hides it from a whole query block: the upper triangle of a causal or sliding-window mask, the other
segments of a packed batch, the far past of a sliding window. One launch per mask writes, per row of the mask,
the first visible column and one past the last; the kernels take the union over their tile's rows and skip the
blocks outside it. It also writes the row's clear run: the same span when the mask passes every entry of it
through unchanged (a keep-flag, or an additive 0), else an empty one. Inside the intersection of its rows' clear
runs a tile needs no dense mask at all (the bulk of a sliding window or of a packed segment), so the kernels
load and apply the mask only on the blocks at the edges of the runs. Read with rows and columns swapped, the
same kernel gives per key the span of queries that see it (the dK/dV kernel).
"""
import triton
import triton.language as tl

from .common import _plane


@triton.jit
def _visible_spans(
    Mask, Spans,
    stride_mb, stride_mh, stride_mr, stride_mc,
    stride_sb, stride_sh, stride_sr,
    H, R, C,
    IS_ADDITIVE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """For rows [program_id(0) * BLOCK_R, + BLOCK_R) of the (R, C) matrix of (batch, head) program_id(1), write
    four int32 at Spans + row offset: (first visible column, last + 1), (C, 0) for a row that sees nothing; then
    the clear run, the same pair when every entry between them passes through unchanged, else (C, 0).
    Visible: a non-zero keep-flag, or an additive entry other than -inf. Passing through: a non-zero keep-flag,
    or an additive 0."""
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_b = pid_bh // H
    pid_h = pid_bh % H
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols0 = tl.arange(0, BLOCK_C)
    base = _plane(Mask, pid_b, pid_h, stride_mb, stride_mh) + rows[:, None].to(tl.int64) * stride_mr
    first = tl.full([BLOCK_R], C, tl.int32)
    end = tl.zeros([BLOCK_R], tl.int32)
    passing = tl.zeros([BLOCK_R], tl.int32)
    for start in range(0, C, BLOCK_C):
        cols = start + cols0
        ok = (rows[:, None] < R) & (cols[None, :] < C)
        if IS_ADDITIVE:
            entries = tl.load(base + cols[None, :] * stride_mc, mask=ok, other=float("-inf"))
            visible = entries != float("-inf")
            passes = entries == 0.0
        else:
            visible = tl.load(base + cols[None, :] * stride_mc, mask=ok, other=0) != 0
            passes = visible
        visible = visible & ok
        first = tl.minimum(first, tl.min(tl.where(visible, cols[None, :], C), 1))
        end = tl.maximum(end, tl.max(tl.where(visible, cols[None, :] + 1, 0), 1))
        passing += tl.sum((passes & ok).to(tl.int32), 1)
    # Passing entries are visible ones, so as many of them as the span is wide means all of the span passes.
    clear = passing == end - first
    out = _plane(Spans, pid_b, pid_h, stride_sb, stride_sh) + rows * stride_sr
    tl.store(out, first, mask=rows < R)
    tl.store(out + 1, end, mask=rows < R)
    tl.store(out + 2, tl.where(clear, first, C), mask=rows < R)
    tl.store(out + 3, tl.where(clear, end, 0), mask=rows < R)
