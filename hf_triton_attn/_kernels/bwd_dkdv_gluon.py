"""Warp-specialised, persistent dK/dV kernel of the flash-attention backward for Hopper, written in Gluon.

The Triton dK/dV kernel (bwd.py) runs one program per (key block, kv head) whose two warpgroups take turns between
their products and the arithmetic between them, and whose loads of each query block wait in its own software
pipeline. Here, as in the Gluon dQ kernel (bwd_dq_gluon.py), one loader warp streams each query block's Q and dO by
TMA through a ring of shared-memory stages, while two consumer warpgroups of BLOCK_NW keys each work on them, and
programs are persistent (one per SM, tiles of 2 * BLOCK_NW keys of one (batch, kv head) from a shared counter; under
a causal mask the key blocks with the most queries first).

A consumer keeps its K and V tile in shared memory (in one of KV_SLOTS slots: with two, the loader brings the next
tile's while this one ends) and dK, dV in registers; per query block j (of any query head that
shares its kv head) it issues S^T_j = K Q_j^T, then dK += dS^T_{j-1} Q_{j-1} (the previous block's product), then
dP^T_j = V dO_j^T, all asynchronous, computes P^T_j = exp2(S^T_j * scale - LSE_j) while the last two run, issues
dV += P^T_j dO_j, and computes dS^T_j = P^T_j (dP^T_j - Delta_j) while that one runs. LSE and Delta (Delta from the dQ
kernel, which runs first) are fetched one query block ahead.

Scope, as the Gluon dQ kernel's: no mask, causal (bottom-right aligned, Skv >= Sq) and a (B, Skv) key-padding mask (key
rows it drops get zero gradients; tiles outside its kept key range do no work); no dropout, no softcap, no
seqused_q/seqused_k, 16-bit inputs, tensors a TMA descriptor can describe. Head_dims 64 and 128, q/k in two tiles
with v at its own head dim (multi-head latent attention's 192 = 128 + 64 with v 128; ``HEAD_DIM_TAIL``, ``VALUE_DIM``),
and v, dO and dV in two tiles too (80 = 64 + 16, 96 = 64 + 32, 192 = 128 + 64; ``VALUE_DIM_TAIL``: dP^T and dV as
two products each); the op layer decides when to take it (configs.hopper_dkdv_config). Tested on triton 3.6 (H200
and H100); compiles for sm_90 with triton 3.9.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from .fwd_gluon import (CONSUMERS, _causal_tile, _copy_rows, _load_rows, _next_tile, _publish_tile, _scores,
                        _stop_consumers, _store_rows, _tail_tiles, _wait_tile)


@gluon.jit
def _key_tile(t, sizes, KeyRange, BLOCK_M: gl.constexpr, BLOCK_NW: gl.constexpr, IS_CAUSAL: gl.constexpr,
              HAS_KEY_MASK: gl.constexpr):
    """Work tile ``t``: (batch, kv head, first key, first query block, query blocks per head, steps). A step is one
    query block of one of the GROUP query heads of the kv head, heads one after another. Causal tiles go by sections
    of (batch, kv head)s, key block 0 (which every query sees) first, as the Gluon forward's tiles go longest first;
    the others kv head by kv head, so the programs running at once share its queries in L2."""
    Sq, Skv, H, GROUP, n_kb, n_tiles, HEADS_PER_SECTION = sizes
    if IS_CAUSAL:
        last_first, pid_bhk = _causal_tile(t, n_kb, n_tiles // n_kb, HEADS_PER_SECTION)
        key_block = n_kb - 1 - last_first
    else:
        pid_bhk = t // n_kb
        key_block = t - pid_bhk * n_kb
    hkv = H // GROUP
    pid_b = pid_bhk // hkv
    pid_hk = pid_bhk % hkv
    start_n = key_block * (CONSUMERS * BLOCK_NW)
    m_first = 0
    if IS_CAUSAL:
        m_first = gl.maximum(start_n - (Skv - Sq), 0) // BLOCK_M
    steps_per_head = gl.cdiv(Sq, BLOCK_M) - m_first
    n_steps = GROUP * steps_per_head
    if HAS_KEY_MASK:
        key_lo = gl.load(KeyRange + pid_b * 3)
        key_hi = gl.load(KeyRange + pid_b * 3 + 1)
        n_steps = gl.where((start_n < key_hi) & (start_n + CONSUMERS * BLOCK_NW > key_lo), n_steps, 0)
    return pid_b, pid_hk, start_n, m_first, steps_per_head, n_steps


@gluon.jit
def _query_block(step, steps_per_head, m_first, pid_hk, GROUP):
    """(query head, first query row / BLOCK_M) of a tile's step."""
    g = step // steps_per_head
    return pid_hk * GROUP + g, m_first + step - g * steps_per_head


@gluon.jit
def _loader(descs, DK, DV, LSE, Delta, KeyMask, KeyRange, TileCounter, buffers, sizes, strides, qk_scale, sm_scale,
            HEAD_DIM: gl.constexpr, HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM: gl.constexpr,
            VALUE_DIM_TAIL: gl.constexpr, BLOCK_M: gl.constexpr,
            BLOCK_NW: gl.constexpr, STAGES: gl.constexpr, KV_SLOTS: gl.constexpr, IS_CAUSAL: gl.constexpr,
            HAS_KEY_MASK: gl.constexpr, STATS_IN_SCORE_LAYOUT: gl.constexpr, WG: gl.constexpr):
    """One warp (the partitions share one signature, hence the arguments it does not use): for each tile the program
    takes, once the consumers released their K/V slot, the tile's index and each consumer's K and V rows into the
    slot, then each step's Q and dO rows into the ring slots the consumers released (ring positions count on across
    tiles). Tiles come as in the Gluon forward's loader: the program's id first, then the counter, which the last
    fetch sets back to zero."""
    desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_do, desc_do_tail = descs
    q_smem, q_tail_smem, do_smem, do_tail_smem, k_smem, k_tail_smem, v_smem, v_tail_smem, tile_ids, kv_ready, \
        kv_empty, q_ready, q_empty = buffers
    Sq, Skv, H, GROUP, n_kb, n_tiles, HEADS_PER_SECTION = sizes
    # V's bytes arrive on K's barrier, dO's on Q's (each in one or two column tiles).
    if VALUE_DIM_TAIL > 0:
        V_BYTES: gl.constexpr = desc_v.block_type.nbytes + desc_v_tail.block_type.nbytes
        DO_BYTES: gl.constexpr = desc_do.block_type.nbytes + desc_do_tail.block_type.nbytes
    else:
        V_BYTES: gl.constexpr = desc_v.block_type.nbytes
        DO_BYTES: gl.constexpr = desc_do.block_type.nbytes
    programs = gl.num_programs(0)
    loaded = 0
    tiles_done = 0
    t = gl.program_id(0)
    while t < n_tiles:
        pid_b, pid_hk, start_n, m_first, steps_per_head, n_steps = _key_tile(t, sizes, KeyRange, BLOCK_M, BLOCK_NW,
                                                                             IS_CAUSAL, HAS_KEY_MASK)
        kv_slot = _publish_tile(t, tiles_done, tile_ids, kv_empty, KV_SLOTS)
        for w in gl.static_range(CONSUMERS):
            coords = (pid_b, pid_hk, start_n + w * BLOCK_NW)
            index = kv_slot * CONSUMERS + w
            _load_rows(desc_k, desc_k_tail, coords, kv_ready.index(index), k_smem, k_tail_smem, index, BLOCK_NW,
                       HEAD_DIM, HEAD_DIM_TAIL, V_BYTES)
            _copy_rows(desc_v, desc_v_tail, coords, kv_ready.index(index), v_smem, v_tail_smem, index, BLOCK_NW,
                       VALUE_DIM, VALUE_DIM_TAIL)
        for step in range(n_steps):
            slot = loaded % STAGES
            head, m_block = _query_block(step, steps_per_head, m_first, pid_hk, GROUP)
            mbarrier.wait(q_empty.index(slot), ((loaded // STAGES) & 1) ^ 1)
            coords = (pid_b, head, m_block * BLOCK_M)
            _load_rows(desc_q, desc_q_tail, coords, q_ready.index(slot), q_smem, q_tail_smem, slot, BLOCK_M, HEAD_DIM,
                       HEAD_DIM_TAIL, DO_BYTES)
            _copy_rows(desc_do, desc_do_tail, coords, q_ready.index(slot), do_smem, do_tail_smem, slot, BLOCK_M,
                       VALUE_DIM, VALUE_DIM_TAIL)
            loaded += 1
        t = _next_tile(TileCounter, programs)
        tiles_done += 1
    _stop_consumers(t, n_tiles, programs, TileCounter, tiles_done, tile_ids, kv_empty, kv_ready, KV_SLOTS)


@gluon.jit
def _row_stats(LSE, Delta, step, tile, H, GROUP, Sq, BLOCK_M: gl.constexpr, layout: gl.constexpr):
    """LSE and Delta of a step's query rows in ``layout``, and the step's query block; rows past Sq give LSE +inf,
    so P = 0 there, and a step past the tile's last reads nothing. The layout is either one row per thread (compact,
    so that a step's fetch in flight during the step before costs two registers, then converted to the scores'
    layout through shared memory) or the scores' column layout itself (no conversion, a register per column a
    thread holds: faster without a causal mask at head_dim 64, slower with one, spills at head_dim 128)."""
    pid_b, pid_hk, m_first, steps_per_head, n_steps = tile
    head, m_block = _query_block(step, steps_per_head, m_first, pid_hk, GROUP)
    rows = m_block * BLOCK_M + gl.arange(0, BLOCK_M, layout=layout)
    base = (pid_b * H + head).to(gl.int64) * Sq
    valid = (rows < Sq) & (step < n_steps)
    lse = gl.load(LSE + base + rows, mask=valid, other=float("inf"))
    delta = gl.load(Delta + base + rows, mask=valid, other=0.0)
    return lse, delta, m_block


@gluon.jit
def _probs(st, lse, qk_scale, key_first, m_block, q_start, BLOCK_M: gl.constexpr, BLOCK_NW: gl.constexpr,
           s_layout: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """P^T of one step from the raw scores S^T (keys along rows), with the causal mask where the query block meets
    the consumer's keys' diagonal."""
    if IS_CAUSAL:
        if q_start + m_block * BLOCK_M < key_first + BLOCK_NW - 1:
            keys = key_first + gl.arange(0, BLOCK_NW, layout=gl.SliceLayout(1, s_layout))
            queries = m_block * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, s_layout))
            st = gl.where(keys[:, None] <= q_start + queries[None, :], st, float("-inf"))
    return gl.exp2(st * qk_scale - gl.convert_layout(lse, gl.SliceLayout(0, s_layout))[None, :])


@gluon.jit
def _dv_and_dst(pt, pt_op, dpt, delta, do_tile, do_tail_tile, dv, dv_tail, s_layout: gl.constexpr,
                op_layout: gl.constexpr, pt_tail_layout: gl.constexpr, VALUE_DIM_TAIL: gl.constexpr):
    """Issues dV += P^T dO (and the tail's product into ``dv_tail`` where VALUE_DIM_TAIL > 0; else it passes through)
    and computes dS^T = P^T (dP^T - Delta) while it runs; returns dV, its tail and dS^T as the operand of the next dK
    product."""
    dv = warpgroup_mma(pt_op, do_tile, dv, is_async=True)
    if VALUE_DIM_TAIL > 0:
        pt_tail = gl.convert_layout(pt_op, pt_tail_layout)
        dv_tail = warpgroup_mma(pt_tail, do_tail_tile, dv_tail, is_async=True)
    dst = pt * (dpt - gl.convert_layout(delta, gl.SliceLayout(0, s_layout))[None, :])
    dst_op = gl.convert_layout(dst.to(pt_op.dtype), op_layout)
    if VALUE_DIM_TAIL > 0:
        dv, dv_tail, pt_op, pt_tail = warpgroup_mma_wait(0, deps=(dv, dv_tail, pt_op, pt_tail))
    else:
        dv, pt_op = warpgroup_mma_wait(0, deps=(dv, pt_op))
    return dv, dv_tail, dst_op


@gluon.jit
def _consumer(descs, DK, DV, LSE, Delta, KeyMask, KeyRange, TileCounter, buffers, sizes, strides, qk_scale, sm_scale,
              HEAD_DIM: gl.constexpr, HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM: gl.constexpr,
              VALUE_DIM_TAIL: gl.constexpr, BLOCK_M: gl.constexpr,
              BLOCK_NW: gl.constexpr, STAGES: gl.constexpr, KV_SLOTS: gl.constexpr, IS_CAUSAL: gl.constexpr,
              HAS_KEY_MASK: gl.constexpr, STATS_IN_SCORE_LAYOUT: gl.constexpr, WG: gl.constexpr):
    """One warpgroup: for each of the program's tiles, keys [start_n + WG * BLOCK_NW, + BLOCK_NW) of one (batch, kv
    head) against the query blocks the loader streams; dK and dV stored by pointer, zero on the key rows past Skv or
    dropped by the key mask. Where HEAD_DIM_TAIL > 0, q, k and dK come in two tiles (S^T and dK as two products each);
    where VALUE_DIM_TAIL > 0, v, dO and dV do (dP^T and dV as two products each)."""
    desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_do, desc_do_tail = descs
    q_smem, q_tail_smem, do_smem, do_tail_smem, k_smem, k_tail_smem, v_smem, v_tail_smem, tile_ids, kv_ready, \
        kv_empty, q_ready, q_empty = buffers
    Sq, Skv, H, GROUP, n_kb, n_tiles, HEADS_PER_SECTION = sizes
    stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn, stride_kmb = strides
    dtype: gl.constexpr = desc_q.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_M, 16])
    dk_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, HEAD_DIM, 16])
    dv_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, VALUE_DIM, 16])
    dst_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dk_layout, k_width=2)
    pt_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dv_layout, k_width=2)
    # dK's second tile, where HEAD_DIM_TAIL > 0 (else these stand in for it, unused).
    TAIL_COLUMNS: gl.constexpr = HEAD_DIM_TAIL if HEAD_DIM_TAIL > 0 else HEAD_DIM
    dk_tail_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, TAIL_COLUMNS, 16])
    dst_tail_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dk_tail_layout, k_width=2)
    DK_GROUPS: gl.constexpr = 2 if HEAD_DIM_TAIL > 0 else 1
    # dV's second tile, where VALUE_DIM_TAIL > 0 (else these stand in for it, unused).
    VALUE_TAIL_COLUMNS: gl.constexpr = VALUE_DIM_TAIL if VALUE_DIM_TAIL > 0 else VALUE_DIM
    dv_tail_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, VALUE_TAIL_COLUMNS, 16])
    pt_tail_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dv_tail_layout, k_width=2)
    DP_GROUPS: gl.constexpr = 2 if VALUE_DIM_TAIL > 0 else 1
    if STATS_IN_SCORE_LAYOUT:
        stats_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    else:
        stats_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])  # one row per thread
    zeros_s = gl.zeros([BLOCK_NW, BLOCK_M], gl.float32, layout=s_layout)
    q_start = Skv - Sq

    consumed = 0
    tiles_done = 0
    t, kv_index = _wait_tile(tiles_done, tile_ids, kv_ready, WG, KV_SLOTS)
    while t < n_tiles:
        k = k_smem.index(kv_index)
        k_tail = k_tail_smem.index(kv_index)
        v = v_smem.index(kv_index)
        v_tail = v_tail_smem.index(kv_index)
        pid_b, pid_hk, start_n, m_first, steps_per_head, n_steps = _key_tile(t, sizes, KeyRange, BLOCK_M, BLOCK_NW,
                                                                             IS_CAUSAL, HAS_KEY_MASK)
        key_first = start_n + WG * BLOCK_NW
        dk = gl.zeros([BLOCK_NW, HEAD_DIM], gl.float32, layout=dk_layout)
        dk_tail = gl.zeros([BLOCK_NW, TAIL_COLUMNS], gl.float32, layout=dk_tail_layout)
        dv = gl.zeros([BLOCK_NW, VALUE_DIM], gl.float32, layout=dv_layout)
        dv_tail = gl.zeros([BLOCK_NW, VALUE_TAIL_COLUMNS], gl.float32, layout=dv_tail_layout)
        if n_steps > 0:
            tile = (pid_b, pid_hk, m_first, steps_per_head, n_steps)
            lse, delta, m_block = _row_stats(LSE, Delta, 0, tile, H, GROUP, Sq, BLOCK_M, stats_layout)
            slot = consumed % STAGES
            mbarrier.wait(q_ready.index(slot), (consumed // STAGES) & 1)
            st_token = _scores(k, k_tail, q_smem, q_tail_smem, slot, zeros_s, HEAD_DIM_TAIL, True)
            dpt_token = _scores(v, v_tail, do_smem, do_tail_smem, slot, zeros_s, VALUE_DIM_TAIL, True)
            next_lse, next_delta, next_m_block = _row_stats(LSE, Delta, 1, tile, H, GROUP, Sq, BLOCK_M, stats_layout)
            st = warpgroup_mma_wait(DP_GROUPS, deps=(st_token,))
            pt = _probs(st, lse, qk_scale, key_first, m_block, q_start, BLOCK_M, BLOCK_NW, s_layout, IS_CAUSAL)
            pt_op = gl.convert_layout(pt.to(dtype), pt_layout)
            dpt = warpgroup_mma_wait(0, deps=(dpt_token,))
            dv, dv_tail, dst_op = _dv_and_dst(pt, pt_op, dpt, delta, do_smem.index(slot), do_tail_smem.index(slot), dv,
                                              dv_tail, s_layout, dst_layout, pt_tail_layout, VALUE_DIM_TAIL)
            for step in range(1, n_steps):
                prev = slot
                slot = (consumed + step) % STAGES
                lse, delta, m_block = next_lse, next_delta, next_m_block
                mbarrier.wait(q_ready.index(slot), ((consumed + step) // STAGES) & 1)
                st_token = _scores(k, k_tail, q_smem, q_tail_smem, slot, zeros_s, HEAD_DIM_TAIL, True)
                dk = warpgroup_mma(dst_op, q_smem.index(prev), dk, is_async=True)
                if HEAD_DIM_TAIL > 0:
                    dst_tail = gl.convert_layout(dst_op, dst_tail_layout)
                    dk_tail = warpgroup_mma(dst_tail, q_tail_smem.index(prev), dk_tail, is_async=True)
                dpt_token = _scores(v, v_tail, do_smem, do_tail_smem, slot, zeros_s, VALUE_DIM_TAIL, True)
                next_lse, next_delta, next_m_block = _row_stats(LSE, Delta, step + 1, tile, H, GROUP, Sq, BLOCK_M,
                                                                stats_layout)
                # S^T's groups done, dK's and dP^T's running
                st = warpgroup_mma_wait(DK_GROUPS + DP_GROUPS, deps=(st_token,))
                pt = _probs(st, lse, qk_scale, key_first, m_block, q_start, BLOCK_M, BLOCK_NW, s_layout, IS_CAUSAL)
                pt_op = gl.convert_layout(pt.to(dtype), pt_layout)
                if HEAD_DIM_TAIL > 0:
                    dk, dk_tail, dst_op, dst_tail, dpt = warpgroup_mma_wait(
                        0, deps=(dk, dk_tail, dst_op, dst_tail, dpt_token))
                else:
                    dk, dst_op, dpt = warpgroup_mma_wait(0, deps=(dk, dst_op, dpt_token))
                mbarrier.arrive(q_empty.index(prev), count=1)  # Q_prev and dO_prev are read
                dv, dv_tail, dst_op = _dv_and_dst(pt, pt_op, dpt, delta, do_smem.index(slot),
                                                  do_tail_smem.index(slot), dv, dv_tail, s_layout, dst_layout,
                                                  pt_tail_layout, VALUE_DIM_TAIL)
            consumed += n_steps
            last = (consumed - 1) % STAGES
            dk = warpgroup_mma(dst_op, q_smem.index(last), dk)
            if HEAD_DIM_TAIL > 0:
                dk_tail = warpgroup_mma(gl.convert_layout(dst_op, dst_tail_layout), q_tail_smem.index(last), dk_tail)
            mbarrier.arrive(q_empty.index(last), count=1)
        mbarrier.arrive(kv_empty.index(kv_index), count=1)

        if HAS_KEY_MASK:
            keys = key_first + gl.arange(0, BLOCK_NW, layout=gl.SliceLayout(1, dk_layout))
            kept = gl.load(KeyMask + pid_b.to(gl.int64) * stride_kmb + keys, mask=keys < Skv, other=0) != 0
            dk = gl.where(kept[:, None], dk, 0.0)
            dv = gl.where(gl.convert_layout(kept, gl.SliceLayout(1, dv_layout))[:, None], dv, 0.0)
            if HEAD_DIM_TAIL > 0:
                dk_tail = gl.where(gl.convert_layout(kept, gl.SliceLayout(1, dk_tail_layout))[:, None], dk_tail, 0.0)
            if VALUE_DIM_TAIL > 0:
                dv_tail = gl.where(gl.convert_layout(kept, gl.SliceLayout(1, dv_tail_layout))[:, None], dv_tail, 0.0)
        _store_rows(DK, dk * sm_scale, pid_b, pid_hk, key_first, Skv, stride_dkb, stride_dkh, stride_dkn, 0, BLOCK_NW,
                    HEAD_DIM, dk_layout)
        if HEAD_DIM_TAIL > 0:
            _store_rows(DK, dk_tail * sm_scale, pid_b, pid_hk, key_first, Skv, stride_dkb, stride_dkh, stride_dkn,
                        HEAD_DIM, BLOCK_NW, HEAD_DIM_TAIL, dk_tail_layout)
        _store_rows(DV, dv, pid_b, pid_hk, key_first, Skv, stride_dvb, stride_dvh, stride_dvn, 0, BLOCK_NW, VALUE_DIM,
                    dv_layout)
        if VALUE_DIM_TAIL > 0:
            _store_rows(DV, dv_tail, pid_b, pid_hk, key_first, Skv, stride_dvb, stride_dvh, stride_dvn, VALUE_DIM,
                        BLOCK_NW, VALUE_DIM_TAIL, dv_tail_layout)
        tiles_done += 1
        t, kv_index = _wait_tile(tiles_done, tile_ids, kv_ready, WG, KV_SLOTS)


@gluon.jit
def _attn_bwd_dkdv_ws(desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_do, desc_do_tail, DK, DV,
                      LSE, Delta, KeyMask, KeyRange, TileCounter, qk_scale, sm_scale, stride_dkb, stride_dkh,
                      stride_dkn, stride_dvb, stride_dvh, stride_dvn, stride_kmb, H, Sq, Skv, GROUP, n_tiles,
                      HEADS_PER_SECTION, HEAD_DIM: gl.constexpr, HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM: gl.constexpr,
                      VALUE_DIM_TAIL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_NW: gl.constexpr,
                      STAGES: gl.constexpr, KV_SLOTS: gl.constexpr, IS_CAUSAL: gl.constexpr,
                      HAS_KEY_MASK: gl.constexpr, STATS_IN_SCORE_LAYOUT: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                      num_warps: gl.constexpr):
    """Persistent: grid (programs,), each taking tile pid, then the next of the n_tiles =
    cdiv(Skv, CONSUMERS * BLOCK_NW) * B * Hkv from TileCounter (a zeroed int32, left zeroed; shared with the other Gluon
    kernels), in _key_tile's order. q/do through 4D descriptors over (B, H, Sq, D) with boxes (1, 1, BLOCK_M,
    HEAD_DIM|VALUE_DIM), k/v over (B, Hkv, Skv, D) with boxes (1, 1, BLOCK_NW, HEAD_DIM|VALUE_DIM); where HEAD_DIM_TAIL
    > 0, q and k have HEAD_DIM + HEAD_DIM_TAIL columns, desc_q_tail/desc_k_tail bring those past HEAD_DIM (as in the
    Gluon forward) and dK is computed in two tiles too (multi-head latent attention's 192 = 128 + 64 with v at 128);
    where VALUE_DIM_TAIL > 0, v and do have VALUE_DIM + VALUE_DIM_TAIL columns (the tail through desc_v_tail and
    desc_do_tail) and dV is computed in two tiles; DK,
    DV (B, Hkv, Skv, D) with unit last stride, written by pointer; LSE (B, H, Sq) float32 in log2 units (the forward's),
    Delta (B, H, Sq) float32 (the dQ kernel's rowsum(O * dO)); qk_scale is the softmax scale times log2(e), sm_scale the
    softmax scale. HAS_KEY_MASK: KeyMask (B, Skv) uint8 keep-flags (unit stride along the keys) and KeyRange its (B, 3)
    kept ranges."""
    dtype: gl.constexpr = desc_q.dtype
    k_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_NW, HEAD_DIM], dtype)
    v_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_NW, VALUE_DIM], dtype)
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, HEAD_DIM], dtype)
    do_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, VALUE_DIM], dtype)

    q_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, HEAD_DIM], q_layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, VALUE_DIM], do_layout)
    k_smem = gl.allocate_shared_memory(dtype, [KV_SLOTS * CONSUMERS, BLOCK_NW, HEAD_DIM], k_layout)
    v_smem = gl.allocate_shared_memory(dtype, [KV_SLOTS * CONSUMERS, BLOCK_NW, VALUE_DIM], v_layout)
    q_tail_smem = _tail_tiles(dtype, STAGES, BLOCK_M, HEAD_DIM_TAIL, q_smem)
    k_tail_smem = _tail_tiles(dtype, KV_SLOTS * CONSUMERS, BLOCK_NW, HEAD_DIM_TAIL, k_smem)
    do_tail_smem = _tail_tiles(dtype, STAGES, BLOCK_M, VALUE_DIM_TAIL, do_smem)
    v_tail_smem = _tail_tiles(dtype, KV_SLOTS * CONSUMERS, BLOCK_NW, VALUE_DIM_TAIL, v_smem)
    tile_ids = gl.allocate_shared_memory(gl.int32, [KV_SLOTS, 1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    kv_ready = gl.allocate_shared_memory(gl.int64, [KV_SLOTS * CONSUMERS, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [KV_SLOTS * CONSUMERS, 1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(KV_SLOTS * CONSUMERS):
        mbarrier.init(kv_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=CONSUMERS)

    descs = (desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_do, desc_do_tail)
    buffers = (q_smem, q_tail_smem, do_smem, do_tail_smem, k_smem, k_tail_smem, v_smem, v_tail_smem, tile_ids, kv_ready,
               kv_empty, q_ready, q_empty)
    sizes = (Sq, Skv, H, GROUP, gl.cdiv(Skv, CONSUMERS * BLOCK_NW), n_tiles, HEADS_PER_SECTION)
    strides = (stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn, stride_kmb)
    gl.warp_specialize([
        (_consumer, (descs, DK, DV, LSE, Delta, KeyMask, KeyRange, TileCounter, buffers, sizes, strides, qk_scale,
                     sm_scale, HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_M, BLOCK_NW, STAGES, KV_SLOTS,
                     IS_CAUSAL, HAS_KEY_MASK, STATS_IN_SCORE_LAYOUT, 0)),
        (_consumer, (descs, DK, DV, LSE, Delta, KeyMask, KeyRange, TileCounter, buffers, sizes, strides, qk_scale,
                     sm_scale, HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_M, BLOCK_NW, STAGES, KV_SLOTS,
                     IS_CAUSAL, HAS_KEY_MASK, STATS_IN_SCORE_LAYOUT, 1)),
        (_loader, (descs, DK, DV, LSE, Delta, KeyMask, KeyRange, TileCounter, buffers, sizes, strides, qk_scale,
                   sm_scale, HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_M, BLOCK_NW, STAGES, KV_SLOTS,
                   IS_CAUSAL, HAS_KEY_MASK, STATS_IN_SCORE_LAYOUT, 0))],
        [4, 1], [CONSUMER_REGS, 24])
