"""Flash-attention backward: probabilities are recomputed from the saved log-sum-exp, tile by tile.

dK/dV: one program per (key block, kv head) walks the query blocks of every query head that shares the kv head,
in one loop, so GQA gradients are summed in registers (deterministic, no atomics, no repeated K/V). It works on
key-major tiles (``k @ q^T``), so P^T and dS^T come out of the dot products in the orientation the dK/dV products
consume.
dQ: one program per (query block, query head), walking the same key range as the forward. It runs first and
also writes Delta = rowsum(O * dO), which both kernels need: one pass over O and dO inside a kernel that loads dO
anyway, instead of a separate launch.

Both kernels split their loop like the forward: tiles wholly inside the keys in use and clear of the causal
diagonal run without bounds or causal masks; only the diagonal and ragged tiles pay for them. The dK/dV kernel
applies a key-padding mask once, to its key block's rows of dK and dV, not per tile.
"""
import triton
import triton.language as tl

from .common import (_apply_masks, _block_loop, _block_start, _dropout_keep, _head_dim_tiles, _kept_key_range,
                     _key_block_ranges,
                     _plane, _scaled_scores, _tile_ptrs, _used_length, _visible_span, _within_clear_run)


@triton.jit
def _probs_and_dscores(
    qk, dp, lse, delta, start_m, offs_m, start_n, offs_n, kv_end, q_start, pid_b, pid_h, pid_bh,
    sm_scale, softcap, dropout_p, seed, Skv,
    KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn, Sq,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KEY_MAJOR: tl.constexpr,
    IS_CAUSAL: tl.constexpr, CHECK_BOUNDS: tl.constexpr, HAS_KEY_MASK: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """Return (probabilities after dropout, gradient w.r.t. the pre-softmax scores qk * scale) of the tile of raw
    products ``qk`` of queries ``offs_m`` and keys ``offs_n`` (= start_n + arange(BLOCK_N)), key-major (keys along
    rows) when KEY_MAJOR; ``dp`` is dO V^T and ``lse``/``delta`` come broadcast to the tile."""
    if KEY_MAJOR:
        rows = offs_m[None, :]
        cols = offs_n[:, None]
    else:
        rows = offs_m[:, None]
        cols = offs_n[None, :]
    s, t = _scaled_scores(qk, sm_scale, softcap, HAS_SOFTCAP)
    s = _apply_masks(s, rows, cols, kv_end, q_start, pid_b, pid_h,
                     KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn, Sq,
                     IS_CAUSAL, HAS_KEY_MASK, MASK_KIND, CHECK_BOUNDS)
    p = tl.exp2(s - lse)
    p_drop = p
    if HAS_DROPOUT:
        keep = _dropout_keep(seed, pid_bh, start_m, start_n, Skv, dropout_p, BLOCK_M, BLOCK_N, KEY_MAJOR)
        keep_scale = 1.0 / (1.0 - dropout_p)  # one scalar division, not one per element
        p_drop = tl.where(keep, p * keep_scale, 0.0)
        dp = tl.where(keep, dp * keep_scale, 0.0)
    ds = p * (dp - delta)
    if HAS_SOFTCAP:
        ds = ds * (1.0 - t * t)
    return p_drop, ds


@triton.jit
def _products(a, b, a_tail, b_tail, BLOCK_D_TAIL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``a @ b`` over the head dim's columns, taken in one tile or, where BLOCK_D_TAIL > 0, two (the forward's
    tiles: configs.head_dim_tiles)."""
    products = tl.dot(a, b, input_precision=DOT_PRECISION)
    if BLOCK_D_TAIL > 0:
        products = tl.dot(a_tail, b_tail, products, input_precision=DOT_PRECISION)
    return products


@triton.jit
def _attn_bwd_dkdv_step(
    dk, dk_tail, dv, dv_tail, k, k_tail, v, v_tail, q_base, do_base, lse_base, delta_base, start_m,
    offs_m0, start_n, offs_n, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, q_end, pid_b, pid_h, pid_bh,
    seed, sm_scale, softcap, dropout_p, Sq, Skv,
    stride_qm, stride_qd, stride_dom, stride_dod,
    KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D_TAIL: tl.constexpr, BLOCK_DV_TAIL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, CHECK_BOUNDS: tl.constexpr, HAS_KEY_MASK: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Add the query block at ``start_m`` of one query head to dK/dV (and to the tail columns' dK and dV, see
    _attn_bwd_dkdv). Query rows from q_end on (past Sq, or padding rows ``seqused_q`` leaves out) load as zeros with
    lse = delta = 0, so they add exactly nothing (dO = 0)."""
    offs_m = start_m + offs_m0
    m_ok = offs_m < q_end
    d_ok = offs_d < HEAD_DIM
    q_t = tl.load(q_base + offs_m[None, :].to(tl.int64) * stride_qm + offs_d[:, None] * stride_qd,
                  mask=m_ok[None, :] & d_ok[:, None], other=0.0)
    q_tail_t = q_t
    if BLOCK_D_TAIL > 0:
        q_tail_t = tl.load(q_base + offs_m[None, :].to(tl.int64) * stride_qm + offs_d_tail[:, None] * stride_qd,
                           mask=m_ok[None, :] & (offs_d_tail < HEAD_DIM)[:, None], other=0.0)
    do = tl.load(do_base + offs_m[:, None].to(tl.int64) * stride_dom + offs_dv[None, :] * stride_dod,
                 mask=m_ok[:, None] & (offs_dv < VALUE_DIM)[None, :], other=0.0)
    lse = tl.load(lse_base + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
    dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
    do_tail = do
    if BLOCK_DV_TAIL > 0:
        do_tail = tl.load(do_base + offs_m[:, None].to(tl.int64) * stride_dom + offs_dv_tail[None, :] * stride_dod,
                          mask=m_ok[:, None] & (offs_dv_tail < VALUE_DIM)[None, :], other=0.0)
        dp_t = tl.dot(v_tail, tl.trans(do_tail), dp_t, input_precision=DOT_PRECISION)
    p_t, ds_t = _probs_and_dscores(
        _products(k, q_t, k_tail, q_tail_t, BLOCK_D_TAIL, DOT_PRECISION), dp_t, lse[None, :], delta[None, :],
        start_m, offs_m, start_n, offs_n, kv_end, q_start, pid_b, pid_h, pid_bh, sm_scale, softcap, dropout_p, seed,
        Skv, KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn, Sq, BLOCK_M, BLOCK_N,
        True, IS_CAUSAL, CHECK_BOUNDS, HAS_KEY_MASK, MASK_KIND, HAS_SOFTCAP, HAS_DROPOUT)
    dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)
    if BLOCK_DV_TAIL > 0:
        dv_tail += tl.dot(p_t.to(do.dtype), do_tail, input_precision=DOT_PRECISION)
    dk += tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), input_precision=DOT_PRECISION)
    if BLOCK_D_TAIL > 0:
        dk_tail += tl.dot(ds_t.to(q_t.dtype), tl.trans(q_tail_t), input_precision=DOT_PRECISION)
    return dk, dk_tail, dv, dv_tail


@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dk_tail, dv, dv_tail, k, k_tail, v, v_tail, Q, DO, LSE, Delta, lo, hi, skip_lo, skip_hi,
    offs_m0, start_n, offs_n, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, q_end, pid_b, pid_hk, seed,
    sm_scale, softcap, dropout_p, H, Sq, Skv, GROUP,
    stride_qb, stride_qh, stride_qm, stride_qd, stride_dob, stride_doh, stride_dom, stride_dod,
    KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D_TAIL: tl.constexpr, BLOCK_DV_TAIL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPED: tl.constexpr,
    IS_CAUSAL: tl.constexpr, CHECK_BOUNDS: tl.constexpr, HAS_KEY_MASK: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, HAS_GAP: tl.constexpr,
):
    """Accumulate the contributions to dK/dV of the GROUP query heads of kv head ``pid_hk`` over the query blocks
    of [lo, hi) outside [skip_lo, skip_hi) of each (see _block_loop; with HAS_GAP, since a dense mask may leave
    one, otherwise lo == skip_lo).

    GROUPED (GROUP > 1): one loop over (head, query block), so one software pipeline serves all the heads. With a
    loop per head, each refilled its pipeline, and under a causal mask the diagonal's loop has only BLOCK_N /
    BLOCK_M blocks per head, too few to fill one: B16 H32/8 S1024 head_dim 64 causal, backward 752 -> 698 µs;
    B4 S4096 2229 -> 2170 µs (benchmarks/RESULTS.md). A single head keeps the plain loop, where the head
    bookkeeping cost ~2% (B32 H12 S512)."""
    pid_h = pid_hk * GROUP
    pid_bh = pid_b * H + pid_h
    q_base = _plane(Q, pid_b, pid_h, stride_qb, stride_qh)
    do_base = _plane(DO, pid_b, pid_h, stride_dob, stride_doh)
    lse_base = LSE + pid_bh.to(tl.int64) * Sq
    delta_base = Delta + pid_bh.to(tl.int64) * Sq
    first, end = _block_loop(lo, hi, skip_lo, skip_hi, BLOCK_M, HAS_GAP)
    if GROUPED:
        start = first
        for _ in range(0, GROUP * ((end - first + BLOCK_M - 1) // BLOCK_M)):
            dk, dk_tail, dv, dv_tail = _attn_bwd_dkdv_step(
                dk, dk_tail, dv, dv_tail, k, k_tail, v, v_tail, q_base, do_base, lse_base, delta_base,
                _block_start(start, skip_lo, skip_hi, HAS_GAP),
                offs_m0, start_n, offs_n, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, q_end, pid_b,
                pid_h, pid_bh, seed, sm_scale, softcap, dropout_p, Sq, Skv, stride_qm, stride_qd, stride_dom,
                stride_dod, KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
                HEAD_DIM, VALUE_DIM, BLOCK_D_TAIL, BLOCK_DV_TAIL, BLOCK_M, BLOCK_N, IS_CAUSAL, CHECK_BOUNDS,
                HAS_KEY_MASK, MASK_KIND, HAS_SOFTCAP, HAS_DROPOUT, DOT_PRECISION)
            # On to the next query block, or to the next head's first: bases stepped, not recomputed (the
            # recomputation made the loop ~10% longer in instructions).
            start += BLOCK_M
            next_head = start >= end
            start = tl.where(next_head, first, start)
            pid_h += next_head.to(tl.int32)
            pid_bh += next_head.to(tl.int32)
            q_base += tl.where(next_head, stride_qh, 0)
            do_base += tl.where(next_head, stride_doh, 0)
            lse_base += tl.where(next_head, Sq, 0)
            delta_base += tl.where(next_head, Sq, 0)
    else:
        for start in range(first, end, BLOCK_M):
            dk, dk_tail, dv, dv_tail = _attn_bwd_dkdv_step(
                dk, dk_tail, dv, dv_tail, k, k_tail, v, v_tail, q_base, do_base, lse_base, delta_base,
                _block_start(start, skip_lo, skip_hi, HAS_GAP),
                offs_m0, start_n, offs_n, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, q_end, pid_b,
                pid_h, pid_bh, seed, sm_scale, softcap, dropout_p, Sq, Skv, stride_qm, stride_qd, stride_dom,
                stride_dod, KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
                HEAD_DIM, VALUE_DIM, BLOCK_D_TAIL, BLOCK_DV_TAIL, BLOCK_M, BLOCK_N, IS_CAUSAL, CHECK_BOUNDS,
                HAS_KEY_MASK, MASK_KIND, HAS_SOFTCAP, HAS_DROPOUT, DOT_PRECISION)
    return dk, dk_tail, dv, dv_tail


@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, DK, DV, LSE, Delta, KeyMask, KeyRange, SeqUsedK, SeqUsedQ, Mask, MaskSpans, Seed,
    sm_scale, softcap, dropout_p,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_kmb, stride_kmn,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_msb, stride_msh, stride_msr,
    H, Hkv, Sq, Skv, GROUP,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D_TAIL: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_DV_TAIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    GROUPED: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr, HAS_SEQUSED: tl.constexpr, HAS_SEQUSED_Q: tl.constexpr,
    MASK_KIND: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    KEY_BLOCKS_OUTER: tl.constexpr,
):
    """GROUPED: GROUP > 1 query heads share each kv head. HAS_SEQUSED_Q: query rows from SeqUsedQ[b] on are padding
    (zero output in the forward), which the query loops stop before. KEY_BLOCKS_OUTER: the grid is (B * Hkv, key
    blocks) rather than (key blocks, B * Hkv), so programs start in key-block order across every (batch, kv head).
    V, dO and dV have VALUE_DIM columns, in a tile of BLOCK_DV and, where BLOCK_DV_TAIL > 0, one of BLOCK_DV_TAIL
    past it (configs.value_dim_tiles); Q, K and dK HEAD_DIM, in a tile of BLOCK_D and, where BLOCK_D_TAIL > 0, one
    of BLOCK_D_TAIL past it (the forward's tiles: configs.head_dim_tiles)."""
    if KEY_BLOCKS_OUTER:
        pid_n = tl.program_id(1)
        pid_bhk = tl.program_id(0)
    else:
        pid_n = tl.program_id(0)
        pid_bhk = tl.program_id(1)
    pid_b = pid_bhk // Hkv
    pid_hk = pid_bhk % Hkv

    kv_end = _used_length(SeqUsedK, pid_b, Skv, HAS_SEQUSED)
    q_start = kv_end - Sq
    q_end = _used_length(SeqUsedQ, pid_b, Sq, HAS_SEQUSED_Q)

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < HEAD_DIM
    dv_ok = offs_dv < VALUE_DIM
    n_ok = offs_n < kv_end

    k, k_tail, offs_d_tail = _head_dim_tiles(_plane(K, pid_b, pid_hk, stride_kb, stride_kh), offs_n, n_ok, stride_kn,
                                             stride_kd, HEAD_DIM, BLOCK_D, BLOCK_D_TAIL)
    dk_tail = 0.0
    if BLOCK_D_TAIL > 0:
        dk_tail = tl.zeros([BLOCK_N, BLOCK_D_TAIL], tl.float32)
    v, v_tail, offs_dv_tail = _head_dim_tiles(_plane(V, pid_b, pid_hk, stride_vb, stride_vh), offs_n, n_ok, stride_vn,
                                              stride_vd, VALUE_DIM, BLOCK_DV, BLOCK_DV_TAIL)
    dv_tail = 0.0
    if BLOCK_DV_TAIL > 0:
        dv_tail = tl.zeros([BLOCK_N, BLOCK_DV_TAIL], tl.float32)

    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(Seed)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)

    # Query blocks [lo, masked_end) need the bounds/causal masks, [masked_end, q_end) do not. A ragged key block
    # (past kv_end) is masked throughout.
    lo = 0
    masked_end = 0
    if IS_CAUSAL:
        # Queries before lo see none of this block's keys; from the first query that sees its last key on,
        # every key of the block is visible.
        lo = tl.maximum(start_n - q_start, 0) // BLOCK_M * BLOCK_M
        masked_end = lo + (tl.maximum(start_n + BLOCK_N - 1 - q_start - lo, 0) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    masked_end = tl.where(start_n + BLOCK_N <= kv_end, tl.minimum(masked_end, q_end), q_end)
    if HAS_KEY_MASK:
        # A key block of padding only (the mask drops all its keys) has zero gradients: skip its query loops.
        key_lo, key_hi, _ = _kept_key_range(KeyRange, pid_b)
        padding_only = (start_n >= key_hi) | (start_n + BLOCK_N <= key_lo)
        lo = tl.where(padding_only, q_end, lo)
        masked_end = tl.where(padding_only, q_end, masked_end)
    # The masked loop walks [lo, masked_hi) outside [skip_lo, skip_hi), the clean loop [clean_lo, clean_end).
    masked_hi = masked_end
    skip_lo = lo
    skip_hi = lo
    clean_lo = masked_end
    clean_end = q_end
    if MASK_KIND != 0:
        # Query blocks outside the span of queries that see this block's keys through the dense mask add nothing;
        # those inside every key's clear run need no mask at all (``MaskSpans`` holds, per key, the span and the
        # clear run over the query heads of this kv head). The rest take every mask, in one loop with a gap.
        span_lo, masked_hi, clear_lo, clear_end = _visible_span(MaskSpans, stride_msb, stride_msh, stride_msr,
                                                                pid_b, pid_hk, offs_n, Skv, Sq)
        masked_hi = tl.minimum(masked_hi, q_end)
        lo = tl.maximum(lo, span_lo // BLOCK_M * BLOCK_M)
        clean_lo, clean_end = _within_clear_run(clean_lo, clean_end, clear_lo, clear_end, lo, BLOCK_M)
        skip_lo = clean_lo
        skip_hi = clean_end
    dk, dk_tail, dv, dv_tail = _attn_bwd_dkdv_inner(
        dk, dk_tail, dv, dv_tail, k, k_tail, v, v_tail, Q, DO, LSE, Delta, lo, masked_hi, skip_lo, skip_hi,
        offs_m0, start_n, offs_n, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, q_end, pid_b, pid_hk,
        seed,
        sm_scale, softcap, dropout_p, H, Sq, Skv, GROUP,
        stride_qb, stride_qh, stride_qm, stride_qd, stride_dob, stride_doh, stride_dom, stride_dod,
        KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
        HEAD_DIM, VALUE_DIM, BLOCK_D_TAIL, BLOCK_DV_TAIL, BLOCK_M, BLOCK_N, GROUPED, IS_CAUSAL, True, False, MASK_KIND,
        HAS_SOFTCAP, HAS_DROPOUT, DOT_PRECISION, MASK_KIND != 0)
    dk, dk_tail, dv, dv_tail = _attn_bwd_dkdv_inner(
        dk, dk_tail, dv, dv_tail, k, k_tail, v, v_tail, Q, DO, LSE, Delta, clean_lo, clean_end, clean_lo, clean_lo,
        offs_m0, start_n, offs_n, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, q_end, pid_b, pid_hk,
        seed,
        sm_scale, softcap, dropout_p, H, Sq, Skv, GROUP,
        stride_qb, stride_qh, stride_qm, stride_qd, stride_dob, stride_doh, stride_dom, stride_dod,
        KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
        HEAD_DIM, VALUE_DIM, BLOCK_D_TAIL, BLOCK_DV_TAIL, BLOCK_M, BLOCK_N, GROUPED, False, False, False, 0,
        HAS_SOFTCAP, HAS_DROPOUT, DOT_PRECISION, False)

    dk *= sm_scale
    if BLOCK_D_TAIL > 0:
        dk_tail *= sm_scale
    if HAS_KEY_MASK:
        # The loops leave the key mask out: a dropped key's probabilities are zero for every query, so its rows of
        # dK and dV are zero, and nothing else depends on them (each row sums over its own key's column of P and
        # dS). Zeroing the rows here replaces a key-mask load and select per query block; it also discards whatever
        # the unmasked scores of those rows gave, inf or NaN included.
        kept = tl.load(KeyMask + pid_b.to(tl.int64) * stride_kmb + offs_n * stride_kmn, mask=n_ok, other=0) != 0
        dk = tl.where(kept[:, None], dk, 0.0)
        dv = tl.where(kept[:, None], dv, 0.0)
        if BLOCK_D_TAIL > 0:
            dk_tail = tl.where(kept[:, None], dk_tail, 0.0)
        if BLOCK_DV_TAIL > 0:
            dv_tail = tl.where(kept[:, None], dv_tail, 0.0)
    row_ok = offs_n[:, None] < Skv
    dk_plane = _plane(DK, pid_b, pid_hk, stride_dkb, stride_dkh)
    tl.store(_tile_ptrs(dk_plane, offs_n, offs_d, stride_dkn, stride_dkd), dk.to(DK.dtype.element_ty),
             mask=row_ok & d_ok[None, :])
    if BLOCK_D_TAIL > 0:
        tl.store(_tile_ptrs(dk_plane, offs_n, offs_d_tail, stride_dkn, stride_dkd),
                 dk_tail.to(DK.dtype.element_ty), mask=row_ok & (offs_d_tail < HEAD_DIM)[None, :])
    tl.store(_tile_ptrs(_plane(DV, pid_b, pid_hk, stride_dvb, stride_dvh), offs_n, offs_dv, stride_dvn, stride_dvd),
             dv.to(DV.dtype.element_ty), mask=row_ok & dv_ok[None, :])
    if BLOCK_DV_TAIL > 0:
        tl.store(_tile_ptrs(_plane(DV, pid_b, pid_hk, stride_dvb, stride_dvh), offs_n, offs_dv_tail, stride_dvn,
                            stride_dvd), dv_tail.to(DV.dtype.element_ty),
                 mask=row_ok & (offs_dv_tail < VALUE_DIM)[None, :])


@triton.jit
def _attn_bwd_dq_inner(
    dq, dq_tail, q, q_tail, do, do_tail, lse, delta, k_base, v_base, DescK, DescV, lo, hi, skip_lo, skip_hi,
    start_m, offs_m, offs_n0, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, pid_b, pid_h, pid_hk, pid_bh,
    seed,
    sm_scale, softcap, dropout_p, Sq, Skv,
    stride_kn, stride_kd, stride_vn, stride_vd,
    KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D_TAIL: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_DV_TAIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, CHECK_BOUNDS: tl.constexpr, HAS_KEY_MASK: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    HAS_GAP: tl.constexpr,
):
    """Accumulate dQ (and the tail columns' dQ, see _attn_bwd_dq) over the key blocks of [lo, hi) outside
    [skip_lo, skip_hi) (see _block_loop; with HAS_GAP, since a key mask or a dense mask may leave one, otherwise
    lo == skip_lo)."""
    first, end = _block_loop(lo, hi, skip_lo, skip_hi, BLOCK_N, HAS_GAP)
    for start in range(first, end, BLOCK_N):
        start_n = _block_start(start, skip_lo, skip_hi, HAS_GAP)
        offs_n = start_n + offs_n0
        if USE_TMA:
            k_t = tl.trans(DescK.load([pid_b, pid_hk, start_n, 0]).reshape(BLOCK_N, BLOCK_D))
            v_t = tl.trans(DescV.load([pid_b, pid_hk, start_n, 0]).reshape(BLOCK_N, BLOCK_DV))
            if CHECK_BOUNDS:
                # Rows past Skv arrive as zeros, but unused cache rows in [kv_end, Skv) may hold anything, NaN
                # included, and 0 * NaN would reach dQ.
                n_ok = offs_n[None, :] < kv_end
                k_t = tl.where(n_ok, k_t, 0.0)
                v_t = tl.where(n_ok, v_t, 0.0)
        else:
            k_ptrs = k_base + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None] * stride_kd
            v_ptrs = v_base + offs_n[None, :].to(tl.int64) * stride_vn + offs_dv[:, None] * stride_vd
            if CHECK_BOUNDS or BLOCK_D > HEAD_DIM or BLOCK_DV != VALUE_DIM:
                n_ok = offs_n[None, :] < kv_end
                k_t = tl.load(k_ptrs, mask=n_ok & (offs_d[:, None] < HEAD_DIM), other=0.0)
                v_t = tl.load(v_ptrs, mask=n_ok & (offs_dv[:, None] < VALUE_DIM), other=0.0)
            else:
                k_t = tl.load(k_ptrs)
                v_t = tl.load(v_ptrs)
        k_tail_t = k_t
        if BLOCK_D_TAIL > 0:
            k_tail_t = tl.load(k_base + offs_n[None, :].to(tl.int64) * stride_kn + offs_d_tail[:, None] * stride_kd,
                               mask=(offs_n[None, :] < kv_end) & (offs_d_tail[:, None] < HEAD_DIM), other=0.0)
        dp = tl.dot(do, v_t, input_precision=DOT_PRECISION)
        if BLOCK_DV_TAIL > 0:
            v_tail_t = tl.load(v_base + offs_n[None, :].to(tl.int64) * stride_vn + offs_dv_tail[:, None] * stride_vd,
                               mask=(offs_n[None, :] < kv_end) & (offs_dv_tail[:, None] < VALUE_DIM), other=0.0)
            dp = tl.dot(do_tail, v_tail_t, dp, input_precision=DOT_PRECISION)
        _, ds = _probs_and_dscores(
            _products(q, k_t, q_tail, k_tail_t, BLOCK_D_TAIL, DOT_PRECISION), dp, lse[:, None], delta[:, None],
            start_m, offs_m, start_n, offs_n, kv_end, q_start, pid_b, pid_h, pid_bh, sm_scale, softcap, dropout_p, seed,
            Skv, KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn, Sq, BLOCK_M,
            BLOCK_N, False, IS_CAUSAL, CHECK_BOUNDS, HAS_KEY_MASK, MASK_KIND, HAS_SOFTCAP, HAS_DROPOUT)
        dq += tl.dot(ds.to(k_t.dtype), tl.trans(k_t), input_precision=DOT_PRECISION)
        if BLOCK_D_TAIL > 0:
            dq_tail += tl.dot(ds.to(k_t.dtype), tl.trans(k_tail_t), input_precision=DOT_PRECISION)
    return dq, dq_tail


@triton.jit
def _attn_bwd_dq(
    Q, K, V, DescK, DescV, Out, DO, DQ, LSE, Delta, KeyMask, KeyRange, SeqUsedK, SeqUsedQ, Mask, MaskSpans, Seed,
    sm_scale, softcap, dropout_p,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_kmb, stride_kmn,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_msb, stride_msh, stride_msr,
    H, Sq, Skv, GROUP,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D_TAIL: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_DV_TAIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr, HAS_SEQUSED: tl.constexpr, HAS_SEQUSED_Q: tl.constexpr,
    MASK_KIND: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr,
):
    """USE_TMA: the K and V tiles of the key loop come through the tensor descriptors DescK/DescV (over
    (B, Hkv, S, D)), as in the forward. HAS_SEQUSED_Q: query rows from SeqUsedQ[b] on are padding: their dQ and
    Delta are zero, and a block of them only skips the key loop. V, Out and dO have VALUE_DIM columns (in a tile of
    BLOCK_DV and, where BLOCK_DV_TAIL > 0, one of BLOCK_DV_TAIL past it: configs.value_dim_tiles), Q, K and dQ
    HEAD_DIM, in a tile of BLOCK_D and, where BLOCK_D_TAIL > 0, one of BLOCK_D_TAIL past it
    (the forward's tiles: configs.head_dim_tiles)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_b = pid_bh // H
    pid_h = pid_bh % H
    pid_hk = pid_h // GROUP

    kv_end = _used_length(SeqUsedK, pid_b, Skv, HAS_SEQUSED)
    q_start = kv_end - Sq
    q_end = _used_length(SeqUsedQ, pid_b, Sq, HAS_SEQUSED_Q)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < HEAD_DIM
    m_ok = offs_m < Sq
    # Padding rows (from q_end on) load as zeros, so their dQ and Delta come out zero (dO = 0).
    row_used = offs_m < q_end

    q, q_tail, offs_d_tail = _head_dim_tiles(_plane(Q, pid_b, pid_h, stride_qb, stride_qh), offs_m, row_used,
                                             stride_qm, stride_qd, HEAD_DIM, BLOCK_D, BLOCK_D_TAIL)
    dq_tail = 0.0
    if BLOCK_D_TAIL > 0:
        dq_tail = tl.zeros([BLOCK_M, BLOCK_D_TAIL], tl.float32)
    do, do_tail, offs_dv_tail = _head_dim_tiles(_plane(DO, pid_b, pid_h, stride_dob, stride_doh), offs_m, row_used,
                                                stride_dom, stride_dod, VALUE_DIM, BLOCK_DV, BLOCK_DV_TAIL)
    o, o_tail, _ = _head_dim_tiles(_plane(Out, pid_b, pid_h, stride_ob, stride_oh), offs_m, row_used, stride_om,
                                   stride_od, VALUE_DIM, BLOCK_DV, BLOCK_DV_TAIL)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if BLOCK_DV_TAIL > 0:
        delta += tl.sum(o_tail.to(tl.float32) * do_tail.to(tl.float32), 1)
    tl.store(Delta + pid_bh.to(tl.int64) * Sq + offs_m, delta, mask=m_ok)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * Sq + offs_m, mask=row_used, other=0.0)
    k_base = _plane(K, pid_b, pid_hk, stride_kb, stride_kh)
    v_base = _plane(V, pid_b, pid_hk, stride_vb, stride_vh)

    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(Seed)

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # The forward's split of the key blocks (see _key_block_ranges).
    lo, clean_lo, clean_end, hi = _key_block_ranges(pid_m * BLOCK_M, q_start, kv_end, q_end, KeyRange, pid_b,
                                                    pid_h, Sq, MaskSpans, stride_msb, stride_msh, stride_msr,
                                                    BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_KEY_MASK, MASK_KIND,
                                                    HAS_SEQUSED_Q)
    dq, dq_tail = _attn_bwd_dq_inner(
        dq, dq_tail, q, q_tail, do, do_tail, lse, delta, k_base, v_base, DescK, DescV, clean_lo, clean_end, clean_lo,
        clean_lo,
        pid_m * BLOCK_M, offs_m, offs_n0, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, pid_b, pid_h,
        pid_hk, pid_bh, seed, sm_scale, softcap, dropout_p, Sq, Skv, stride_kn, stride_kd, stride_vn, stride_vd,
        KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
        HEAD_DIM, VALUE_DIM, BLOCK_D, BLOCK_D_TAIL, BLOCK_DV, BLOCK_DV_TAIL, BLOCK_M, BLOCK_N, False, False, False, 0,
        HAS_SOFTCAP, HAS_DROPOUT, DOT_PRECISION, USE_TMA, False)
    dq, dq_tail = _attn_bwd_dq_inner(
        dq, dq_tail, q, q_tail, do, do_tail, lse, delta, k_base, v_base, DescK, DescV, lo, hi, clean_lo, clean_end,
        pid_m * BLOCK_M, offs_m, offs_n0, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, pid_b, pid_h,
        pid_hk, pid_bh, seed, sm_scale, softcap, dropout_p, Sq, Skv, stride_kn, stride_kd, stride_vn, stride_vd,
        KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
        HEAD_DIM, VALUE_DIM, BLOCK_D, BLOCK_D_TAIL, BLOCK_DV, BLOCK_DV_TAIL, BLOCK_M, BLOCK_N, IS_CAUSAL, True,
        HAS_KEY_MASK, MASK_KIND, HAS_SOFTCAP, HAS_DROPOUT, DOT_PRECISION, USE_TMA, HAS_KEY_MASK or MASK_KIND != 0)

    dq *= sm_scale
    dq_plane = _plane(DQ, pid_b, pid_h, stride_dqb, stride_dqh)
    tl.store(_tile_ptrs(dq_plane, offs_m, offs_d, stride_dqm, stride_dqd), dq.to(DQ.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    if BLOCK_D_TAIL > 0:
        dq_tail *= sm_scale
        tl.store(_tile_ptrs(dq_plane, offs_m, offs_d_tail, stride_dqm, stride_dqd), dq_tail.to(DQ.dtype.element_ty),
                 mask=m_ok[:, None] & (offs_d_tail < HEAD_DIM)[None, :])
