"""Warp-specialised flash-attention forward for Hopper, written in Gluon (Triton's lower-level dialect).

The plain Triton forward (fwd.py) leaves the softmax and the tensor cores to take turns within each program; Gluon
lets a kernel say what Triton's compiler does not: one loader warp streams K/V tiles through a ring of shared-memory
stages with TMA and mbarriers, and each consumer warpgroup overlaps its softmax of key block j with the tensor
cores' P_{j-1} @ V_{j-1} (FA3's intra-warpgroup overlap; P stays in registers as the wgmma A operand).

Scope: causal (bottom-right aligned, Skv >= Sq) and a (B, Skv) key-padding mask with its kept key ranges (the
blocks before the first and after the last kept key skipped; holes masked element by element), no other mask, no
dropout, no softcap, 16-bit inputs, tensors (B, H, S, D) with a unit last stride and 16-byte aligned other strides
(TMA), any lengths. Rows that see no key give zeros and a log-sum-exp of 0, as the Triton forward. The op layer decides
when to take it (ops.py). Tested on triton 3.6 (H200); it also compiles for sm_90 with triton 3.7 and 3.9 (3.9's
Gluon renamed the TMA load, see ``_tma_load``).
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

# Triton 3.6 names the TMA load async_copy_global_to_shared; later releases renamed it async_load.
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared

# Consumer warpgroups per program; each owns BLOCK_MW query rows of the program's tile and both read every K/V tile.
CONSUMERS = gl.constexpr(2)


@gluon.jit
def _tma_view(buffers, index, BLOCK: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Slot ``index`` of a ring of (BLOCK, HEAD_DIM) tiles as the (1, 1, BLOCK, HEAD_DIM) box a 4D descriptor writes."""
    return buffers.index(index).reshape([1, 1, BLOCK, HEAD_DIM])


@gluon.jit
def _masked(s, row_first, col_first, q_start, Skv, KeyMask, stride_kmb, pid_b,
            BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, s_layout: gl.constexpr, IS_CAUSAL: gl.constexpr,
            HAS_KEY_MASK: gl.constexpr):
    rows = row_first + gl.arange(0, BLOCK_MW, layout=gl.SliceLayout(1, s_layout))
    cols = col_first + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
    keep = cols < Skv
    if HAS_KEY_MASK:
        keep = keep & (gl.load(KeyMask + pid_b.to(gl.int64) * stride_kmb + cols, mask=keep, other=0) != 0)
    visible = keep[None, :]
    if IS_CAUSAL:
        visible = visible & (cols[None, :] <= q_start + rows[:, None])
    return gl.where(visible, s, float("-inf"))


@gluon.jit
def _loader(desc_q, desc_k, desc_v, Out, LSE, buffers, coords, sizes, strides, masks, qk_scale,
            HEAD_DIM: gl.constexpr, BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
            IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr, WG: gl.constexpr):
    """One warp (the partitions share one signature, hence the arguments it does not use): the consumers' query
    tiles, then the K and V tiles of key blocks first_block.. (n_blocks of them), each into the ring slot its
    consumers have released; nothing at all when n_blocks is 0."""
    q_smem, k_smem, v_smem, q_ready, k_ready, k_empty, v_ready, v_empty = buffers
    pid_b, pid_h, pid_hk, pid_bh, start_m, first_block, n_blocks = coords
    for w in gl.static_range(CONSUMERS):
        mbarrier.expect(q_ready.index(w), desc_q.block_type.nbytes, pred=n_blocks > 0)
        _tma_load(desc_q, [pid_b, pid_h, start_m + w * BLOCK_MW, 0], q_ready.index(w),
                  _tma_view(q_smem, w, BLOCK_MW, HEAD_DIM), pred=n_blocks > 0)
    for i in range(n_blocks):
        slot = i % STAGES
        free_phase = ((i // STAGES) & 1) ^ 1  # a new mbarrier counts its phase before 0 as complete
        start_n = (first_block + i) * BLOCK_N
        mbarrier.wait(k_empty.index(slot), free_phase)
        mbarrier.expect(k_ready.index(slot), desc_k.block_type.nbytes)
        _tma_load(desc_k, [pid_b, pid_hk, start_n, 0], k_ready.index(slot),
                  _tma_view(k_smem, slot, BLOCK_N, HEAD_DIM))
        mbarrier.wait(v_empty.index(slot), free_phase)
        mbarrier.expect(v_ready.index(slot), desc_v.block_type.nbytes)
        _tma_load(desc_v, [pid_b, pid_hk, start_n, 0], v_ready.index(slot),
                  _tma_view(v_smem, slot, BLOCK_N, HEAD_DIM))


@gluon.jit
def _online_softmax(s, m_i, l_i, qk_scale, MASKED: gl.constexpr):
    """(probabilities, new row maxima, row sums, rescale factor) after one more key block of raw scores ``s``;
    maxima in scaled log2 units. MASKED: a row may still have seen no key (maximum -inf), and subtracting 0 instead
    keeps -inf - -inf = NaN out."""
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    m_shift = m_new
    if MASKED:
        m_shift = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_shift)
    p = gl.exp2(s * qk_scale - m_shift[:, None])
    return p, m_new, l_i * alpha + gl.sum(p, axis=1), alpha


@gluon.jit
def _consume(q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, i_lo, i_hi, first_block, acc, p_op, m_i, l_i,
             zeros_s, qk_scale, row_first, q_start, Skv, KeyMask, stride_kmb, pid_b,
             BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, s_layout: gl.constexpr,
             p_layout: gl.constexpr, row_o: gl.constexpr, IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr,
             MASKED: gl.constexpr):
    """The loader's blocks [i_lo, i_hi) (key block first_block + i): issue S_i = Q K_i^T and P_{i-1} V_{i-1}
    together, take the softmax of S_i while the second runs, then rescale the output by the new maxima."""
    for i in range(i_lo, i_hi):
        slot = i % STAGES
        prev = (i - 1) % STAGES
        mbarrier.wait(k_ready.index(slot), (i // STAGES) & 1)
        s_token = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), zeros_s, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), ((i - 1) // STAGES) & 1)
        acc_token = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=(s_token,))
        mbarrier.arrive(k_empty.index(slot), count=1)
        if MASKED:
            s = _masked(s, row_first, (first_block + i) * BLOCK_N, q_start, Skv, KeyMask, stride_kmb, pid_b,
                        BLOCK_MW, BLOCK_N, s_layout, IS_CAUSAL, HAS_KEY_MASK)
        p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, qk_scale, MASKED)
        acc, p_op = warpgroup_mma_wait(0, deps=(acc_token, p_op))
        mbarrier.arrive(v_empty.index(prev), count=1)
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        p_op = gl.convert_layout(p.to(p_op.dtype), p_layout)
    return acc, p_op, m_i, l_i


@gluon.jit
def _consumer(desc_q, desc_k, desc_v, Out, LSE, buffers, coords, sizes, strides, masks, qk_scale,
              HEAD_DIM: gl.constexpr, BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr, WG: gl.constexpr):
    """One warpgroup: query rows [start_m + WG * BLOCK_MW, + BLOCK_MW) against the key blocks the loader
    streams. The first may be partly masked (the start of the kept keys); then come the blocks that need no mask
    (wholly inside one run of kept keys and left of the row block's causal diagonal), then the masked rest (the
    diagonal, the ragged end, the end of the kept keys, holes)."""
    q_smem, k_smem, v_smem, q_ready, k_ready, k_empty, v_ready, v_empty = buffers
    pid_b, pid_h, pid_hk, pid_bh, start_m, first_block, n_blocks = coords
    Sq, Skv = sizes
    stride_ob, stride_om, stride_oh = strides
    KeyMask, stride_kmb, key_lo, key_hi, one_run = masks
    dtype: gl.constexpr = desc_q.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)

    row_first = start_m + WG * BLOCK_MW
    q_start = Skv - Sq
    # Loader blocks [clean_lo, clean_hi) are visible in full to every row of this warpgroup.
    clean_end = gl.minimum(Skv, key_hi)
    if IS_CAUSAL:
        clean_end = gl.minimum(clean_end, q_start + row_first + 1)
    clean_lo = (key_lo + BLOCK_N - 1) // BLOCK_N - first_block
    if HAS_KEY_MASK:
        clean_hi = gl.where(one_run, clean_end // BLOCK_N - first_block, clean_lo)
    else:
        clean_hi = clean_end // BLOCK_N
    acc = gl.zeros([BLOCK_MW, HEAD_DIM], gl.float32, layout=o_layout)
    m_i = gl.full([BLOCK_MW], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([BLOCK_MW], gl.float32, layout=row_s)
    if n_blocks > 0:
        q = q_smem.index(WG)
        zeros_s = gl.zeros([BLOCK_MW, BLOCK_N], gl.float32, layout=s_layout)
        mbarrier.wait(q_ready.index(WG), 0)
        mbarrier.wait(k_ready.index(0), 0)
        s = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), zeros_s, use_acc=False)
        mbarrier.arrive(k_empty.index(0), count=1)
        if (clean_lo > 0) | (clean_hi < 1):
            s = _masked(s, row_first, first_block * BLOCK_N, q_start, Skv, KeyMask, stride_kmb, pid_b, BLOCK_MW,
                        BLOCK_N, s_layout, IS_CAUSAL, HAS_KEY_MASK)
        p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, qk_scale, True)
        p_op = gl.convert_layout(p.to(dtype), p_layout)

        clean_stop = gl.maximum(gl.minimum(clean_hi, n_blocks), 1)
        acc, p_op, m_i, l_i = _consume(q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, 1, clean_stop,
                                       first_block, acc, p_op, m_i, l_i, zeros_s, qk_scale, row_first, q_start, Skv,
                                       KeyMask, stride_kmb, pid_b, BLOCK_MW, BLOCK_N, STAGES, s_layout, p_layout,
                                       row_o, IS_CAUSAL, HAS_KEY_MASK, False)
        acc, p_op, m_i, l_i = _consume(q, k_smem, v_smem, k_ready, k_empty, v_ready, v_empty, clean_stop, n_blocks,
                                       first_block, acc, p_op, m_i, l_i, zeros_s, qk_scale, row_first, q_start, Skv,
                                       KeyMask, stride_kmb, pid_b, BLOCK_MW, BLOCK_N, STAGES, s_layout, p_layout,
                                       row_o, IS_CAUSAL, HAS_KEY_MASK, True)
        last = (n_blocks - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((n_blocks - 1) // STAGES) & 1)
        acc = warpgroup_mma(p_op, v_smem.index(last), acc)
        mbarrier.arrive(v_empty.index(last), count=1)

    # Rows that saw no key (left padding under a causal mask, a row whose mask keeps nothing) give 0 and LSE 0.
    has_keys = l_i > 0.0
    out = acc / gl.convert_layout(gl.where(has_keys, l_i, 1.0), row_o)[:, None]
    rows = row_first + gl.arange(0, BLOCK_MW, layout=row_o)
    cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    o_ptrs = (Out + pid_b.to(gl.int64) * stride_ob + pid_h.to(gl.int64) * stride_oh
              + rows[:, None].to(gl.int64) * stride_om + cols[None, :])
    gl.store(o_ptrs, out.to(dtype), mask=(rows < Sq)[:, None])
    lse_rows = row_first + gl.arange(0, BLOCK_MW, layout=row_s)
    lse = gl.where(has_keys, m_i + gl.log2(gl.where(has_keys, l_i, 1.0)), 0.0)
    gl.store(LSE + pid_bh.to(gl.int64) * Sq + lse_rows, lse, mask=lse_rows < Sq)


@gluon.jit
def _attn_fwd_ws(desc_q, desc_k, desc_v, Out, LSE, KeyMask, KeyRange, qk_scale, stride_ob, stride_om, stride_oh,
                 stride_kmb, H, Sq, Skv, GROUP,
                 HEAD_DIM: gl.constexpr, BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                 IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                 num_warps: gl.constexpr):
    """Grid (cdiv(Sq, CONSUMERS * BLOCK_MW), B * H). q/k/v through 4D descriptors over (B, H|Hkv, S, D) with
    boxes (1, 1, rows, HEAD_DIM); Out is (B, Sq, H, D) with unit last stride; LSE (B, H, Sq) float32, log2 units;
    qk_scale is the softmax scale times log2(e). HAS_KEY_MASK: KeyMask (B, Skv) uint8 keep-flags (unit stride
    along the keys) and KeyRange its (B, 3) kept ranges (see _kernels/key_range.py)."""
    pid_m = gl.program_id(0)
    pid_bh = gl.program_id(1)
    pid_b = pid_bh // H
    pid_h = pid_bh % H
    pid_hk = pid_h // GROUP
    start_m = pid_m * (CONSUMERS * BLOCK_MW)
    dtype: gl.constexpr = desc_q.dtype
    tile_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_MW, HEAD_DIM], dtype)

    q_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, BLOCK_MW, HEAD_DIM], q_layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], tile_layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], tile_layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(CONSUMERS):
        mbarrier.init(q_ready.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(v_empty.index(i), count=CONSUMERS)

    kv_end = Skv
    if IS_CAUSAL:
        kv_end = gl.minimum(Skv, Skv - Sq + start_m + CONSUMERS * BLOCK_MW)
    key_lo = 0
    key_hi = Skv
    one_run = True
    if HAS_KEY_MASK:
        key_lo = gl.load(KeyRange + pid_b * 3)
        key_hi = gl.load(KeyRange + pid_b * 3 + 1)
        one_run = gl.load(KeyRange + pid_b * 3 + 2) != 0
        kv_end = gl.minimum(kv_end, key_hi)
    first_block = key_lo // BLOCK_N
    n_blocks = gl.maximum(gl.cdiv(kv_end, BLOCK_N) - first_block, 0)
    buffers = (q_smem, k_smem, v_smem, q_ready, k_ready, k_empty, v_ready, v_empty)
    coords = (pid_b, pid_h, pid_hk, pid_bh, start_m, first_block, n_blocks)
    sizes = (Sq, Skv)
    strides = (stride_ob, stride_om, stride_oh)
    masks = (KeyMask, stride_kmb, key_lo, key_hi, one_run)
    gl.warp_specialize([
        (_consumer, (desc_q, desc_k, desc_v, Out, LSE, buffers, coords, sizes, strides, masks, qk_scale,
                     HEAD_DIM, BLOCK_MW, BLOCK_N, STAGES, IS_CAUSAL, HAS_KEY_MASK, 0)),
        (_consumer, (desc_q, desc_k, desc_v, Out, LSE, buffers, coords, sizes, strides, masks, qk_scale,
                     HEAD_DIM, BLOCK_MW, BLOCK_N, STAGES, IS_CAUSAL, HAS_KEY_MASK, 1)),
        (_loader, (desc_q, desc_k, desc_v, Out, LSE, buffers, coords, sizes, strides, masks, qk_scale,
                   HEAD_DIM, BLOCK_MW, BLOCK_N, STAGES, IS_CAUSAL, HAS_KEY_MASK, 0))],
        [4, 1], [CONSUMER_REGS, 24])
