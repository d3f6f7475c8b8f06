"""Helpers shared by the forward and backward kernels.

Scores are kept in the log2 domain (``qk * scale * log2(e)``) so the softmax uses ``exp2``. The masking
helpers take 2D-broadcastable index tensors, ``rows`` (query index) and ``cols`` (key index), so the same code
serves query-major tiles (rows ``[:, None]``, cols ``[None, :]``) and the key-major tiles of the dK/dV kernel.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _plane(X, pid_b, pid_h, stride_b, stride_h):
    """The (batch, head) plane of X, in 64-bit offsets: a (B, H, S, D) tensor may hold 2**31 elements or more."""
    return X + pid_b.to(tl.int64) * stride_b + pid_h.to(tl.int64) * stride_h


@triton.jit
def _tile_ptrs(plane, rows, cols, stride_row, stride_col):
    """Pointers to the (rows, cols) tile of a plane (1D ``rows`` and ``cols``), rows in 64-bit offsets."""
    return plane + rows[:, None].to(tl.int64) * stride_row + cols[None, :] * stride_col


@triton.jit
def _head_dim_tiles(plane, rows, rows_ok, stride_row, stride_col, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_D_TAIL: tl.constexpr):
    """The ``rows`` of a plane of HEAD_DIM columns as (tile, tail tile, the tail's column offsets): columns [0,
    BLOCK_D) and, where BLOCK_D_TAIL > 0, [BLOCK_D, BLOCK_D + BLOCK_D_TAIL) (see configs.head_dim_tiles), zero past
    HEAD_DIM and in rows not ``rows_ok``. Without a tail, the first tile and its offsets stand in for it."""
    offs_d = tl.arange(0, BLOCK_D)
    tile = tl.load(_tile_ptrs(plane, rows, offs_d, stride_row, stride_col),
                   mask=rows_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    tail = tile
    offs_tail = offs_d
    if BLOCK_D_TAIL > 0:
        offs_tail = BLOCK_D + tl.arange(0, BLOCK_D_TAIL)
        tail = tl.load(_tile_ptrs(plane, rows, offs_tail, stride_row, stride_col),
                       mask=rows_ok[:, None] & (offs_tail < HEAD_DIM)[None, :], other=0.0)
    return tile, tail, offs_tail


@triton.jit
def _used_length(SeqUsed, pid_b, S, HAS_SEQUSED: tl.constexpr):
    """end: positions [0, end) of batch row ``pid_b`` are in use, keys (``seqused_k``) or queries
    (``seqused_q``); all S without the tensor. Always int32: an int64 ``seqused`` would make every offset derived
    from it 64-bit, which tensor-descriptor loads refuse."""
    end = S
    if HAS_SEQUSED:
        end = tl.minimum(tl.load(SeqUsed + pid_b), S).to(tl.int32)
    return end


@triton.jit
def _kept_key_range(KeyRange, pid_b):
    """(first, last + 1, one_run) of the keys that the key mask of row ``pid_b`` keeps among the keys in use, as
    :func:`hf_triton_attn._kernels.key_range._key_ranges` wrote them: empty (first >= the end) when it keeps none;
    ``one_run`` when it keeps every key in between (left or right padding, no holes)."""
    base = KeyRange + pid_b * 3
    return tl.load(base), tl.load(base + 1), tl.load(base + 2) != 0


@triton.jit
def _visible_span(Spans, stride_sb, stride_sh, stride_sr, pid_b, pid_h, offs, R, C):
    """From what :func:`hf_triton_attn._kernels.mask_range._visible_spans` wrote for rows ``offs`` (those past R
    ignored): the union of their spans, (first visible column, last + 1) or (C, 0) when none of them sees
    anything; then the intersection of their clear runs, the columns where the mask changes none of the rows
    (empty, first >= last + 1, when a row has no clear run)."""
    ptrs = _plane(Spans, pid_b, pid_h, stride_sb, stride_sh) + offs.to(tl.int64) * stride_sr
    in_range = offs < R
    first = tl.min(tl.load(ptrs, mask=in_range, other=C), 0)
    end = tl.max(tl.load(ptrs + 1, mask=in_range, other=0), 0)
    clear_first = tl.max(tl.load(ptrs + 2, mask=in_range, other=0), 0)
    clear_end = tl.min(tl.load(ptrs + 3, mask=in_range, other=C), 0)
    return first, end, clear_first, clear_end


@triton.jit
def _key_block_ranges(start_m, q_start, kv_end, q_end, KeyRange, pid_b, pid_h, Sq,
                      MaskSpans, stride_msb, stride_msh, stride_msr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      IS_CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr, MASK_KIND: tl.constexpr,
                      HAS_SEQUSED_Q: tl.constexpr):
    """(lo, clean_lo, clean_end, hi): the key blocks the query block at ``start_m`` walks (forward and dQ).

    [clean_lo, clean_end) need no mask at all (wholly inside the keys in use, left of every query's causal
    diagonal, inside the one run of kept keys and inside every row's clear run of a dense mask); [lo, clean_lo)
    (the start of the kept keys, the left edge of a sliding window) and [clean_end, hi) (the diagonal, the ragged
    tail, the end of the kept keys) need the masks, and the kernels walk them in one loop (see
    :func:`_block_loop`): a third loop made the head_dim 128 forward spill registers. Keys outside [lo, hi) are
    invisible to every query of the block: the blocks of padding before the first and after the last kept key,
    those past the diagonal, and those outside the span a dense mask lets the block's rows see (``MaskSpans``,
    see _kernels/mask_range.py). When the kept keys have holes, or the dense mask leaves no clear run common to
    the block's rows, [clean_lo, clean_end) is empty and the masked loop takes every block. A query block wholly
    past ``q_end`` (the rows ``seqused_q`` leaves out) walks no key block at all."""
    full_end = kv_end // BLOCK_N * BLOCK_N
    hi = kv_end
    if IS_CAUSAL:
        first_query_pos = q_start + start_m
        full_end = tl.minimum(full_end, tl.maximum(first_query_pos + 1, 0) // BLOCK_N * BLOCK_N)
        hi = tl.maximum(tl.minimum(hi, first_query_pos + BLOCK_M), 0)
    lo = 0
    clean_lo = 0
    clean_end = full_end
    if HAS_KEY_MASK:
        key_lo, key_hi, one_run = _kept_key_range(KeyRange, pid_b)
        lo = key_lo // BLOCK_N * BLOCK_N
        full_end = tl.minimum(full_end, (key_hi + BLOCK_N - 1) // BLOCK_N * BLOCK_N)
        hi = tl.minimum(hi, key_hi)
        boundary = tl.maximum(lo, full_end)
        clean_lo = tl.maximum(lo, tl.minimum((key_lo + BLOCK_N - 1) // BLOCK_N * BLOCK_N, full_end))
        clean_end = tl.maximum(clean_lo, tl.minimum(full_end, key_hi // BLOCK_N * BLOCK_N))
        clean_lo = tl.where(one_run, clean_lo, boundary)
        clean_end = tl.where(one_run, clean_end, boundary)
    if MASK_KIND != 0:
        # Blocks outside the span the block's rows see are skipped: the mask hides them from every query. Inside
        # it, only the blocks within every row's clear run can go without the mask.
        span_lo, span_hi, clear_lo, clear_end = _visible_span(MaskSpans, stride_msb, stride_msh, stride_msr,
                                                              pid_b, pid_h, start_m + tl.arange(0, BLOCK_M), Sq,
                                                              kv_end)
        lo = tl.maximum(lo, span_lo // BLOCK_N * BLOCK_N)
        hi = tl.minimum(hi, span_hi)
        clean_lo, clean_end = _within_clear_run(clean_lo, clean_end, clear_lo, clear_end, lo, BLOCK_N)
    if HAS_SEQUSED_Q:
        unused_block = start_m >= q_end
        lo = tl.where(unused_block, 0, lo)
        clean_lo = tl.where(unused_block, 0, clean_lo)
        clean_end = tl.where(unused_block, 0, clean_end)
        hi = tl.where(unused_block, 0, hi)
    return lo, clean_lo, clean_end, hi


@triton.jit
def _within_clear_run(clean_lo, clean_end, clear_lo, clear_end, lo, BLOCK: tl.constexpr):
    """The whole blocks of [clean_lo, clean_end) inside the clear run [clear_lo, clear_end) of a dense mask (see
    :func:`_visible_span`), or the empty range (lo, lo) when no block is left, so that the masked loop, which
    starts at ``lo``, leaves no gap."""
    clean_lo = tl.maximum(clean_lo, (clear_lo + BLOCK - 1) // BLOCK * BLOCK)
    clean_end = tl.minimum(clean_end, clear_end // BLOCK * BLOCK)
    no_clean_block = clean_end <= clean_lo
    return tl.where(no_clean_block, lo, clean_lo), tl.where(no_clean_block, lo, clean_end)


@triton.jit
def _block_loop(lo, hi, skip_lo, skip_hi, BLOCK_N: tl.constexpr, HAS_GAP: tl.constexpr):
    """(first, end): ``for start in range(first, end, BLOCK_N)``, each start mapped by :func:`_block_start`, walks
    the key blocks of [lo, hi) outside [skip_lo, skip_hi): those starting in [lo, skip_lo), then those in
    [skip_hi, hi). lo, skip_lo and skip_hi lie on the block grid, lo <= skip_lo. Without HAS_GAP the caller
    guarantees lo == skip_lo, and the loop is plainly [skip_hi, hi)."""
    if HAS_GAP:
        count = (skip_lo - lo) // BLOCK_N + tl.maximum(hi - skip_hi + BLOCK_N - 1, 0) // BLOCK_N
        return lo, lo + count * BLOCK_N
    else:
        return skip_hi, hi


@triton.jit
def _block_start(start, skip_lo, skip_hi, HAS_GAP: tl.constexpr):
    """The first key of the block a :func:`_block_loop` loop reaches at ``start``."""
    if HAS_GAP:
        return tl.where(start >= skip_lo, start + (skip_hi - skip_lo), start)
    else:
        return start


@triton.jit
def _normalized_rows(acc, l_i, m_i):
    """(output rows, their log-sum-exp in log2 units) from an online softmax's accumulator, row sums and row maxima.
    Rows that saw no key (all masked) give 0, and an LSE of 0 makes the backward's probabilities 0 too."""
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), 0.0)
    return out, lse


@triton.jit
def _sink_logits(Sinks, pid_b, heads, rows, stride_sb, stride_sh, stride_sm, rows_ok):
    """The attention-sink logits of batch row ``pid_b``'s query ``heads`` and ``rows`` (broadcast dims have stride
    0), in the scores' scaled log2 units."""
    ptrs = Sinks + pid_b.to(tl.int64) * stride_sb + heads.to(tl.int64) * stride_sh + rows.to(tl.int64) * stride_sm
    return tl.load(ptrs, mask=rows_ok, other=0.0).to(tl.float32) * LOG2E


@triton.jit
def _join_sink(acc, l_i, m_i, sink):
    """An online softmax's state with an attention sink joined: ``sink`` (in the scores' scaled log2 units, per
    row) is one more logit of each row whose value row is zero, so it adds to the row sum and to nothing else."""
    m_new = tl.maximum(m_i, sink)
    # Both -inf (no key seen, a -inf sink): subtracting 0 instead keeps -inf - -inf = NaN out.
    m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_shift)
    return acc * alpha[:, None], l_i * alpha + tl.exp2(sink - m_shift), m_new


@triton.jit
def _tanh(x):
    # 1 - 2 / (exp(2x) + 1): exact in fp32, saturates cleanly, and runs in the interpreter (no libdevice).
    return 1.0 - 2.0 / (tl.exp2(x * (2.0 * LOG2E)) + 1.0)


@triton.jit
def _scaled_scores(s, sm_scale, softcap, HAS_SOFTCAP: tl.constexpr):
    """Return (log2-domain scores of the raw products ``s``, tanh of the capped scores or None)."""
    if HAS_SOFTCAP:
        t = _tanh(s * (sm_scale / softcap))
        return t * (softcap * LOG2E), t
    else:
        # One multiply per score: scale and log2(e) are folded into one scalar.
        return s * (sm_scale * LOG2E), s


@triton.jit
def _apply_masks(
    s, rows, cols, kv_end, q_start, pid_b, pid_h,
    KeyMask, stride_kmb, stride_kmn,
    Mask, stride_mb, stride_mh, stride_mm, stride_mn, Sq,
    IS_CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr, MASK_KIND: tl.constexpr, CHECK_BOUNDS: tl.constexpr = True,
):
    """Set masked scores to -inf. ``kv_end`` bounds the keys in use, ``q_start`` is query 0's key position.

    MASK_KIND: 0 no dense mask, 1 boolean keep-mask, 2 additive float mask (added in log2 units).
    CHECK_BOUNDS=False (with IS_CAUSAL=False) is for tiles the caller knows to lie wholly inside the keys in use
    and left of the causal diagonal: only the explicit masks remain to apply there.
    """
    if MASK_KIND != 0:
        mask_ptrs = (_plane(Mask, pid_b, pid_h, stride_mb, stride_mh) + rows.to(tl.int64) * stride_mm
                     + cols * stride_mn)
        in_bounds = (rows < Sq) & (cols < kv_end)
        if MASK_KIND == 1:
            s = tl.where(tl.load(mask_ptrs, mask=in_bounds, other=0) != 0, s, float("-inf"))
        else:
            s = s + tl.load(mask_ptrs, mask=in_bounds, other=0.0).to(tl.float32) * LOG2E
    if HAS_KEY_MASK:
        km_ptrs = KeyMask + pid_b.to(tl.int64) * stride_kmb + cols * stride_kmn
        if CHECK_BOUNDS:
            km = tl.load(km_ptrs, mask=cols < kv_end, other=0)
        else:
            km = tl.load(km_ptrs)
        s = tl.where(km != 0, s, float("-inf"))
    if IS_CAUSAL:
        s = tl.where((cols < kv_end) & (cols <= q_start + rows), s, float("-inf"))
    elif CHECK_BOUNDS:
        s = tl.where(cols < kv_end, s, float("-inf"))
    return s


@triton.jit
def _dropout_keep(seed, pid_bh, start_q, start_k, Skv, dropout_p,
                  BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, KEY_MAJOR: tl.constexpr):
    """Keep-flags of the tile (queries ``[start_q, start_q + BLOCK_Q)``) x (keys ``[start_k, start_k + BLOCK_K)``),
    query-major, or key-major when KEY_MAJOR. Starts and block sizes are multiples of 16.

    Counter-based (Philox, keyed by the seed and the head): the backward regenerates exactly the forward's mask
    from (query, key), in whichever tile orientation it works. One Philox call yields four 32-bit words and each
    word two 16-bit uniforms; a flag is kept when its uniform is at least ``round(p * 2**16)``, so the drop
    probability is p rounded to a multiple of 2**-16.

    Which 8 elements share a call follows the layout of Hopper's MMA accumulator, where a thread holds rows r and
    r + 8 and pairs of adjacent columns 8 apart. With q = 16a + 8b + c and k = 16a' + 8b' + 2c'' + e (b, b', e in
    {0, 1}), one call serves (a, c, a', c''): queries q0, q0 + 8 times keys k0, k0 + 1, k0 + 8, k0 + 9, word
    2b + b', half e. Query-major, one thread holds all 8, so the flags are made where the probabilities are; key-
    major (the dK/dV kernel) two lanes of a warp hold them. Measured against 8 consecutive keys per call, the
    layout conversions this avoids took the forward+backward with dropout from 673 to 545 µs at B32 H12 S512 D64
    (benchmarks/NOTES.md).
    """
    rows = start_q // 2 + tl.arange(0, BLOCK_Q // 2)  # a call's index among the queries: 8a + c
    cols = start_k // 4 + tl.arange(0, BLOCK_K // 4)  # and among the keys: 4a' + c''
    counter = rows[:, None] * ((Skv + 15) // 16 * 4) + cols[None, :]
    r0, r1, r2, r3 = tl.randint4x(seed + pid_bh, counter)
    threshold = tl.cast(dropout_p * 65536.0 + 0.5, tl.uint32)
    shape: tl.constexpr = [BLOCK_Q // 16, 8, BLOCK_K // 16, 4, 2]
    w0 = tl.reshape(tl.join((r0 & 0xFFFF) >= threshold, (r0 >> 16) >= threshold), shape)
    w1 = tl.reshape(tl.join((r1 & 0xFFFF) >= threshold, (r1 >> 16) >= threshold), shape)
    w2 = tl.reshape(tl.join((r2 & 0xFFFF) >= threshold, (r2 >> 16) >= threshold), shape)
    w3 = tl.reshape(tl.join((r3 & 0xFFFF) >= threshold, (r3 >> 16) >= threshold), shape)
    keep = tl.join(tl.join(w0, w1), tl.join(w2, w3))  # (a, c, a', c'', e, b', b)
    if KEY_MAJOR:
        keep = tl.reshape(tl.permute(keep, (2, 5, 3, 4, 0, 6, 1)), [BLOCK_K, BLOCK_Q])  # (a', b', c'', e, a, b, c)
    else:
        keep = tl.reshape(tl.permute(keep, (0, 6, 1, 2, 5, 3, 4)), [BLOCK_Q, BLOCK_K])  # (a, b, c, a', b', c'', e)
    return keep
