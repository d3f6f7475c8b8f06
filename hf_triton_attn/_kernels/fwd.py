"""Flash-attention forward: tiled over queries, online softmax over key blocks, never an Sq x Skv matrix."""
import triton
import triton.language as tl

from .common import (LOG2E, _apply_masks, _block_loop, _block_start, _dropout_keep, _head_dim_tiles, _join_sink,
                     _key_block_ranges, _normalized_rows, _plane, _scaled_scores, _sink_logits, _tile_ptrs,
                     _used_length)


@triton.jit
def _attn_fwd_inner(
    acc, acc_tail, l_i, m_i, q, q_tail, k_base, v_base, DescK, DescV, lo, hi, skip_lo, skip_hi,
    start_m, offs_m, offs_n0, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, pid_b, pid_h, pid_hk,
    pid_bh, seed, sm_scale, softcap, dropout_p, Sq, Skv,
    stride_kn, stride_kd, stride_vn, stride_vd,
    KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D_TAIL: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_DV_TAIL: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr,
    CHECK_BOUNDS: tl.constexpr,
    HAS_KEY_MASK: tl.constexpr, MASK_KIND: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr, SCALE_IN_EXP: tl.constexpr, HAS_GAP: tl.constexpr,
):
    """Online-softmax update over the key blocks of [lo, hi) outside [skip_lo, skip_hi) (see _block_loop; with
    HAS_GAP, since a key mask or a dense mask may leave one, otherwise lo == skip_lo). Masking work is compiled in
    only where the caller asks. q and k have HEAD_DIM columns: offs_d (BLOCK_D of them, padded past HEAD_DIM), and
    with BLOCK_D_TAIL > 0 the columns past BLOCK_D in a second tile (q_tail, offs_d_tail, padded past HEAD_DIM): a
    head dim such as 192 or 96 multiplies 128 + 64 or 64 + 32 columns rather than 256 or 128. v has VALUE_DIM
    (offs_dv, within BLOCK_DV; multi-head latent attention's differs from HEAD_DIM), and with BLOCK_DV_TAIL > 0 the
    columns past BLOCK_DV in a second tile (offs_dv_tail) whose products accumulate in acc_tail (else acc_tail is
    passed through); the accumulators' columns past VALUE_DIM stay zero."""
    first, end = _block_loop(lo, hi, skip_lo, skip_hi, BLOCK_N, HAS_GAP)
    for start in range(first, end, BLOCK_N):
        start_n = _block_start(start, skip_lo, skip_hi, HAS_GAP)
        offs_n = start_n + offs_n0
        n_ok = offs_n < kv_end
        if USE_TMA:
            # Rows past the tensor's end arrive as zeros; rows in [kv_end, Skv) are masked below.
            k_t = tl.trans(DescK.load([pid_b, pid_hk, start_n, 0]).reshape(BLOCK_N, BLOCK_D))
        else:
            k_ptrs = k_base + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None] * stride_kd
            if CHECK_BOUNDS or BLOCK_D > HEAD_DIM:
                k_t = tl.load(k_ptrs, mask=n_ok[None, :] & (offs_d < HEAD_DIM)[:, None], other=0.0)
            else:
                k_t = tl.load(k_ptrs)
        s = tl.dot(q, k_t, input_precision=DOT_PRECISION)
        if BLOCK_D_TAIL > 0:
            k_tail_ptrs = k_base + offs_n[None, :].to(tl.int64) * stride_kn + offs_d_tail[:, None] * stride_kd
            k_tail = tl.load(k_tail_ptrs, mask=n_ok[None, :] & (offs_d_tail < HEAD_DIM)[:, None], other=0.0)
            s = tl.dot(q_tail, k_tail, s, input_precision=DOT_PRECISION)
        # With SCALE_IN_EXP the masks apply to the raw products and the scale goes into the exponent's multiply-add
        # below: a positive scale leaves the row maximum where it was, so max(s) * scale is the scaled scores' maximum.
        if not SCALE_IN_EXP:
            s, _ = _scaled_scores(s, sm_scale, softcap, HAS_SOFTCAP)
        s = _apply_masks(s, offs_m[:, None], offs_n[None, :], kv_end, q_start, pid_b, pid_h,
                         KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn, Sq,
                         IS_CAUSAL, HAS_KEY_MASK, MASK_KIND, CHECK_BOUNDS)
        if SCALE_IN_EXP:
            m_new = tl.maximum(m_i, tl.max(s, 1) * (sm_scale * LOG2E))
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
        m_shift = m_new
        if IS_CAUSAL or CHECK_BOUNDS or HAS_KEY_MASK or MASK_KIND != 0:
            # A row with no visible key yet keeps m = -inf; subtracting 0 instead avoids inf - inf = NaN.
            m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        if SCALE_IN_EXP:
            p = tl.exp2(s * (sm_scale * LOG2E) - m_shift[:, None])
        else:
            p = tl.exp2(s - m_shift[:, None])
        alpha = tl.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, pid_bh, start_m, start_n, Skv, dropout_p, q.shape[0], BLOCK_N, False)
            p = tl.where(keep, p * (1.0 / (1.0 - dropout_p)), 0.0)  # a scalar division, not one per element
        if USE_TMA:
            v = DescV.load([pid_b, pid_hk, start_n, 0]).reshape(BLOCK_N, BLOCK_DV)
            if CHECK_BOUNDS:
                # Unused cache rows may hold anything, NaN included, and 0 * NaN would reach the output.
                v = tl.where(n_ok[:, None], v, 0.0)
        else:
            v_ptrs = v_base + offs_n[:, None].to(tl.int64) * stride_vn + offs_dv[None, :] * stride_vd
            if CHECK_BOUNDS or BLOCK_DV != VALUE_DIM:
                v = tl.load(v_ptrs, mask=n_ok[:, None] & (offs_dv < VALUE_DIM)[None, :], other=0.0)
            else:
                v = tl.load(v_ptrs)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        if BLOCK_DV_TAIL > 0:
            v_tail = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vn + offs_dv_tail[None, :] * stride_vd,
                             mask=n_ok[:, None] & (offs_dv_tail < VALUE_DIM)[None, :], other=0.0)
            acc_tail = acc_tail * alpha[:, None] + tl.dot(p.to(v_tail.dtype), v_tail, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, acc_tail, l_i, m_i


@triton.jit
def _attn_fwd(
    Q, K, V, DescQ, DescK, DescV, Out, LSE, KeyMask, KeyRange, SeqUsedK, SeqUsedQ, Mask, MaskSpans, Seed, Sinks,
    sm_scale, softcap, dropout_p,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_kmb, stride_kmn,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_msb, stride_msh, stride_msr,
    stride_sb, stride_sh, stride_sm,
    H, Sq, Skv, GROUP,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D_TAIL: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_DV_TAIL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr, HAS_SEQUSED: tl.constexpr, HAS_SEQUSED_Q: tl.constexpr,
    MASK_KIND: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    USE_TMA: tl.constexpr, SCALE_IN_EXP: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    """USE_TMA: Q, K and V tiles come through the tensor descriptors DescQ/DescK/DescV (over (B, H, S, D)) rather
    than pointer arithmetic on Q/K/V. SCALE_IN_EXP: the caller guarantees a positive scale, no softcap and no
    additive mask, so the scale can be folded into the exponent (see _attn_fwd_inner). HAS_SEQUSED_Q: query rows
    from SeqUsedQ[b] on are padding; their output and LSE are zero, and a block of them only skips the key loop.
    HAS_SINKS: Sinks holds an attention-sink logit per (batch, query head, query row), strides stride_s* (0 where
    it broadcasts; see _join_sink). Q and K have HEAD_DIM columns, in a tile of BLOCK_D and, where BLOCK_D_TAIL > 0,
    one of BLOCK_D_TAIL past it (see _attn_fwd_inner); V and Out have VALUE_DIM (multi-head latent attention's v head
    dim; HEAD_DIM otherwise), in a tile of BLOCK_DV and, where BLOCK_DV_TAIL > 0, one of BLOCK_DV_TAIL past it."""
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
    m_ok = offs_m < Sq

    if USE_TMA:  # head dims that are powers of two: no tail
        q = DescQ.load([pid_b, pid_h, pid_m * BLOCK_M, 0]).reshape(BLOCK_M, BLOCK_D)
        q_tail = q
        offs_d_tail = offs_d
    else:
        q, q_tail, offs_d_tail = _head_dim_tiles(_plane(Q, pid_b, pid_h, stride_qb, stride_qh), offs_m, m_ok,
                                                 stride_qm, stride_qd, HEAD_DIM, BLOCK_D, BLOCK_D_TAIL)
    k_base = _plane(K, pid_b, pid_hk, stride_kb, stride_kh)
    v_base = _plane(V, pid_b, pid_hk, stride_vb, stride_vh)

    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(Seed)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    acc_tail = acc  # passed through unchanged without a tail
    offs_dv_tail = offs_dv
    if BLOCK_DV_TAIL > 0:
        acc_tail = tl.zeros([BLOCK_M, BLOCK_DV_TAIL], tl.float32)
        offs_dv_tail = BLOCK_DV + tl.arange(0, BLOCK_DV_TAIL)

    lo, clean_lo, clean_end, hi = _key_block_ranges(pid_m * BLOCK_M, q_start, kv_end, q_end, KeyRange, pid_b,
                                                    pid_h, Sq, MaskSpans, stride_msb, stride_msh, stride_msr,
                                                    BLOCK_M, BLOCK_N, IS_CAUSAL, HAS_KEY_MASK, MASK_KIND,
                                                    HAS_SEQUSED_Q)
    acc, acc_tail, l_i, m_i = _attn_fwd_inner(
        acc, acc_tail, l_i, m_i, q, q_tail, k_base, v_base, DescK, DescV, clean_lo, clean_end, clean_lo, clean_lo,
        pid_m * BLOCK_M, offs_m, offs_n0, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, pid_b, pid_h,
        pid_hk, pid_bh, seed, sm_scale, softcap, dropout_p, Sq, Skv,
        stride_kn, stride_kd, stride_vn, stride_vd,
        KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
        HEAD_DIM, VALUE_DIM, BLOCK_D, BLOCK_D_TAIL, BLOCK_DV, BLOCK_DV_TAIL, BLOCK_N, False, False, False, 0,
        HAS_SOFTCAP, HAS_DROPOUT, DOT_PRECISION, USE_TMA, SCALE_IN_EXP, False)
    acc, acc_tail, l_i, m_i = _attn_fwd_inner(
        acc, acc_tail, l_i, m_i, q, q_tail, k_base, v_base, DescK, DescV, lo, hi, clean_lo, clean_end,
        pid_m * BLOCK_M, offs_m, offs_n0, offs_d, offs_d_tail, offs_dv, offs_dv_tail, kv_end, q_start, pid_b, pid_h,
        pid_hk, pid_bh, seed, sm_scale, softcap, dropout_p, Sq, Skv,
        stride_kn, stride_kd, stride_vn, stride_vd,
        KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
        HEAD_DIM, VALUE_DIM, BLOCK_D, BLOCK_D_TAIL, BLOCK_DV, BLOCK_DV_TAIL, BLOCK_N, IS_CAUSAL, True, HAS_KEY_MASK,
        MASK_KIND, HAS_SOFTCAP, HAS_DROPOUT, DOT_PRECISION, USE_TMA, SCALE_IN_EXP, HAS_KEY_MASK or MASK_KIND != 0)

    if HAS_SINKS:
        sink = _sink_logits(Sinks, pid_b, pid_h, offs_m, stride_sb, stride_sh, stride_sm, m_ok)
        if BLOCK_DV_TAIL > 0:
            acc_tail, _, _ = _join_sink(acc_tail, l_i, m_i, sink)  # the same rescale; the row state joins below
        acc, l_i, m_i = _join_sink(acc, l_i, m_i, sink)
    out, lse = _normalized_rows(acc, l_i, m_i)
    if HAS_SEQUSED_Q:
        # The block holding q_end computed its padding rows like the others; whatever they gave is dropped.
        row_used = offs_m < q_end
        out = tl.where(row_used[:, None], out, 0.0)
        lse = tl.where(row_used, lse, 0.0)
    tl.store(LSE + pid_bh.to(tl.int64) * Sq + offs_m, lse, mask=m_ok)
    tl.store(_tile_ptrs(_plane(Out, pid_b, pid_h, stride_ob, stride_oh), offs_m, offs_dv, stride_om, stride_od),
             out.to(Out.dtype.element_ty), mask=m_ok[:, None] & (offs_dv < VALUE_DIM)[None, :])
    if BLOCK_DV_TAIL > 0:
        out_tail, _ = _normalized_rows(acc_tail, l_i, m_i)
        if HAS_SEQUSED_Q:
            out_tail = tl.where(row_used[:, None], out_tail, 0.0)
        tl.store(_tile_ptrs(_plane(Out, pid_b, pid_h, stride_ob, stride_oh), offs_m, offs_dv_tail, stride_om,
                            stride_od),
                 out_tail.to(Out.dtype.element_ty), mask=m_ok[:, None] & (offs_dv_tail < VALUE_DIM)[None, :])
