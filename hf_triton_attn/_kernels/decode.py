"""Split-KV forward for short query lengths (decoding): flash-decoding with GQA packing.

One program per (key split, batch, kv head) stacks the ``GROUP * Sq`` query rows that share the kv head into one
tile, so each K/V element is read once per kv head, and the key range is split so that enough programs stream
the cache in parallel. A second kernel merges the splits' partial results with their log-sum-exps; when one split
holds every key (enough batch rows and kv heads to fill the GPU, or a call launched outside a CUDA graph with
little K/V per program: see ``configs.split_kv_plan``), the split kernel writes the output itself.
"""
import triton
import triton.language as tl

from .common import _join_sink, _normalized_rows, _plane, _sink_logits, _used_length, _visible_span
from .fwd import _attn_fwd_inner


@triton.jit
def _split_workspace(Work, num_splits, BLOCK_R: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Carve one float32 buffer (one allocation per call) into the partial outputs, row maxima and row sums of
    every (batch * kv head, split, packed row); both kernels run on a grid whose axis 1 is batch * kv head."""
    parts = tl.num_programs(1).to(tl.int64) * num_splits * BLOCK_R
    return Work, Work + parts * BLOCK_DV, Work + parts * (BLOCK_DV + 1)


@triton.jit
def _attn_fwd_split(
    Q, K, V, Work, Out, LSE, KeyMask, SeqUsedK, Mask, MaskSpans, Sinks,
    sm_scale, softcap,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_kmb, stride_kmn,
    stride_mb, stride_mh, stride_mm, stride_mn,
    stride_msb, stride_msh, stride_msr,
    stride_sb, stride_sh, stride_sm,
    H, Hkv, Sq, Skv, GROUP, split_size, num_splits,
    HEAD_DIM: tl.constexpr, VALUE_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_KEY_MASK: tl.constexpr,
    HAS_SEQUSED: tl.constexpr, MASK_KIND: tl.constexpr, HAS_SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    WRITE_OUT: tl.constexpr, HAS_SINKS: tl.constexpr,
):
    """WRITE_OUT (a single split): normalise and write Out and LSE here, as the merge kernel would (joining the
    rows' attention sinks where HAS_SINKS, see _join_sink); Work is unused.
    Otherwise write the split's partial output, row maxima and row sums to Work for the merge. A dense mask
    (MASK_KIND as in the forward) is read per packed row, at the row's own head and query, and the split's key
    blocks outside the span its rows see (``MaskSpans``, see _kernels/mask_range.py) are skipped. q and k have
    HEAD_DIM columns (padded to BLOCK_D), v and Out VALUE_DIM (padded to BLOCK_DV; multi-head latent attention's
    differ)."""
    pid_s = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    pid_b = pid_bhk // Hkv
    pid_hk = pid_bhk % Hkv

    kv_end = _used_length(SeqUsedK, pid_b, Skv, HAS_SEQUSED)
    q_start = kv_end - Sq

    rows = tl.arange(0, BLOCK_R)
    row_ok = rows < GROUP * Sq
    query = rows % Sq  # the row's query index: what the causal mask compares against
    head = pid_hk * GROUP + rows // Sq
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + pid_b.to(tl.int64) * stride_qb + head[:, None].to(tl.int64) * stride_qh
                + query[:, None].to(tl.int64) * stride_qm + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = _plane(K, pid_b, pid_hk, stride_kb, stride_kh)
    v_base = _plane(V, pid_b, pid_hk, stride_vb, stride_vh)

    lo = pid_s * split_size
    hi = tl.minimum(lo + split_size, kv_end)
    if IS_CAUSAL:
        hi = tl.minimum(hi, q_start + Sq)
    if MASK_KIND != 0:
        span_lo, span_hi, _, _ = _visible_span(MaskSpans, stride_msb, stride_msh, stride_msr, pid_b, head,
                                               tl.where(row_ok, query, Sq), Sq, kv_end)
        lo = tl.maximum(lo, span_lo // BLOCK_N * BLOCK_N)
        hi = tl.minimum(hi, span_hi)
    # The tile's rows past the packed ones would address heads past H: they read head 0's mask (their results are
    # never stored).
    mask_head = tl.where(row_ok, head, 0)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_DV], tl.float32)
    acc, _, l_i, m_i = _attn_fwd_inner(
        acc, acc, l_i, m_i, q, q, k_base, v_base, None, None, lo, hi, lo, lo,
        0, query, tl.arange(0, BLOCK_N), offs_d, offs_d, offs_dv, offs_dv, kv_end, q_start, pid_b, mask_head[:, None],
        pid_hk, 0, 0, sm_scale, softcap, 0.0, Sq, Skv,
        stride_kn, stride_kd, stride_vn, stride_vd,
        KeyMask, stride_kmb, stride_kmn, Mask, stride_mb, stride_mh, stride_mm, stride_mn,
        HEAD_DIM, VALUE_DIM, BLOCK_D, 0, BLOCK_DV, 0, BLOCK_N, IS_CAUSAL, True, HAS_KEY_MASK, MASK_KIND, HAS_SOFTCAP,
        False, DOT_PRECISION, False, False, HAS_KEY_MASK)

    if WRITE_OUT:
        if HAS_SINKS:
            sink = _sink_logits(Sinks, pid_b, head, query, stride_sb, stride_sh, stride_sm, row_ok)
            acc, l_i, m_i = _join_sink(acc, l_i, m_i, sink)
        out, lse = _normalized_rows(acc, l_i, m_i)
        tl.store(LSE + (pid_b * H + head).to(tl.int64) * Sq + query, lse, mask=row_ok)
        tl.store(Out + pid_b.to(tl.int64) * stride_ob + head[:, None].to(tl.int64) * stride_oh
                 + query[:, None].to(tl.int64) * stride_om + offs_dv[None, :] * stride_od,
                 out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_dv < VALUE_DIM)[None, :])
    else:
        part_out, part_max, part_sum = _split_workspace(Work, num_splits, BLOCK_R, BLOCK_DV)
        part = (pid_bhk * num_splits + pid_s).to(tl.int64) * BLOCK_R + rows
        tl.store(part_max + part, m_i)
        tl.store(part_sum + part, l_i)
        tl.store(part_out + part[:, None] * BLOCK_DV + offs_dv[None, :], acc)


@triton.jit
def _attn_combine_splits(
    Work, Out, LSE, Sinks,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_sb, stride_sh, stride_sm,
    H, Hkv, Sq, GROUP, num_splits,
    VALUE_DIM: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr,
    HAS_SINKS: tl.constexpr,
):
    """One program per (batch, kv head, packed row): rescale each split by exp2(its max - the overall max). With
    HAS_SINKS, the row's attention sink (Sinks, strides stride_s* as in the split kernel) joins the sum as a split
    with a zero output and a row sum of one at the sink. Out has VALUE_DIM columns (v's head dim, padded to
    BLOCK_DV)."""
    pid_row = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    pid_b = pid_bhk // Hkv
    head = (pid_bhk % Hkv) * GROUP + pid_row // Sq
    query = pid_row % Sq

    splits = tl.arange(0, BLOCK_S)
    split_ok = splits < num_splits
    offs_dv = tl.arange(0, BLOCK_DV)
    part_out, part_max, part_sum = _split_workspace(Work, num_splits, BLOCK_R, BLOCK_DV)
    part = (pid_bhk * num_splits + splits).to(tl.int64) * BLOCK_R + pid_row
    m = tl.load(part_max + part, mask=split_ok, other=float("-inf"))
    l = tl.load(part_sum + part, mask=split_ok, other=0.0)
    m_max = tl.max(m, 0)
    if HAS_SINKS:
        sink = _sink_logits(Sinks, pid_b, head, query, stride_sb, stride_sh, stride_sm, True)
        m_max = tl.maximum(m_max, sink)
    m_shift = tl.where(m_max == float("-inf"), 0.0, m_max)
    weight = tl.exp2(m - m_shift)
    total = tl.sum(l * weight, 0)
    if HAS_SINKS:
        total += tl.exp2(sink - m_shift)
    acc = tl.load(part_out + part[:, None] * BLOCK_DV + offs_dv[None, :], mask=split_ok[:, None], other=0.0)
    acc = tl.sum(acc * weight[:, None], 0)

    has_keys = total > 0.0
    out = acc / tl.where(has_keys, total, 1.0)
    lse = tl.where(has_keys, m_shift + tl.log2(tl.where(has_keys, total, 1.0)), 0.0)
    tl.store(LSE + (pid_b * H + head).to(tl.int64) * Sq + query, lse)
    tl.store(Out + pid_b.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh + query.to(tl.int64) * stride_om
             + offs_dv * stride_od, out.to(Out.dtype.element_ty), mask=offs_dv < VALUE_DIM)
