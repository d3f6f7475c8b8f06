"""Warp-specialised, persistent dQ kernel of the flash-attention backward for Hopper, written in Gluon.

The Triton dQ kernel (bwd.py) runs one program per (query block, head), one program per SM at its tile size: each
program's loads of Q, dO and O and its store of dQ leave the tensor cores idle, which on short rows (a few key blocks
per program) is a large part of its time. Here, as in the Gluon forward (fwd_gluon.py, whose tile order, counter and
masks this kernel shares), one loader warp streams each tile's Q, dO and O and then its K/V tiles through a ring of
shared-memory stages, while two consumer warpgroups of BLOCK_MW query rows each work: the loads of the next tile's
K/V overlap the end of this one, and programs are persistent (one per SM, tiles from the shared counter).

Per key block j a consumer issues S_j = Q K_j^T, then dQ += dS_{j-1} K_{j-1} (the previous block's product), then
dP_j = dO V_j^T, all asynchronous, and computes P_j = exp2(S_j * scale - LSE) while the last two run; then
dS_j = P_j (dP_j - Delta). Delta = rowsum(O * dO) comes from the tile's O and dO in shared memory, and is written
out for the dK/dV kernel, as the Triton dQ kernel does.

Scope, as the Gluon forward's: no mask, causal (bottom-right aligned, Skv >= Sq) and a (B, Skv) key-padding mask
with its kept key ranges; no dropout, no softcap, no seqused_q/seqused_k, a positive scale, 16-bit inputs, tensors a
TMA descriptor can describe. It compiles for head_dims 64 and 128, for q/k in two tiles with v at its own head dim
(multi-head latent attention's 192 = 128 + 64 with v 128; ``HEAD_DIM_TAIL``, ``VALUE_DIM``), and for v, O and dO in
two tiles too (80 = 64 + 16, 96 = 64 + 32, 192 = 128 + 64; ``VALUE_DIM_TAIL``: dP and Delta over both); the op
layer takes it where configs.hopper_dq_config does. Tested on triton 3.6 (H200); compiles for sm_90 with triton 3.9.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from .fwd_gluon import (CONSUMERS, _clean_blocks, _copy_rows, _load_key_blocks, _load_rows, _masked, _next_tile,
                        _publish_tile, _scores, _stop_consumers, _store_rows, _tail_tiles, _tile, _wait_tile)


@gluon.jit
def _loader(descs, DQ, LSE, Delta, KeyMask, KeyRange, TileCounter, buffers, sizes, strides, qk_scale, sm_scale,
            HEAD_DIM: gl.constexpr, HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM: gl.constexpr,
            VALUE_DIM_TAIL: gl.constexpr, BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
            IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr, WG: gl.constexpr):
    """One warp (the partitions share one signature, hence the arguments it does not use): for each tile the
    program takes, once the consumers released their query slot, the tile's index and its Q, O and dO rows into the
    slot, then the K and V tiles of its key blocks into the ring slots the consumers released (ring positions count
    on across tiles). Tiles come as in the Gluon forward's loader: the program's id first, then the counter, which
    the last fetch sets back to zero."""
    desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_o, desc_o_tail, desc_do, desc_do_tail = descs
    q_smem, q_tail_smem, o_smem, o_tail_smem, do_smem, do_tail_smem, k_smem, k_tail_smem, v_smem, v_tail_smem, \
        tile_ids, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty = buffers
    Sq, Skv, H, GROUP, n_m, n_tiles, HEADS_PER_SECTION = sizes
    if VALUE_DIM_TAIL > 0:
        ROW_BYTES: gl.constexpr = desc_o.block_type.nbytes + desc_o_tail.block_type.nbytes
    else:
        ROW_BYTES: gl.constexpr = desc_o.block_type.nbytes
    programs = gl.num_programs(0)
    loaded = 0
    tiles_done = 0
    t = gl.program_id(0)
    while t < n_tiles:
        pid_b, pid_h, pid_hk, pid_bh, start_m, first_block, n_blocks, key_lo, key_hi, one_run = _tile(
            t, sizes, KeyRange, BLOCK_MW, BLOCK_N, IS_CAUSAL, HAS_KEY_MASK)
        _publish_tile(t, tiles_done, tile_ids, q_empty, 1)
        for w in gl.static_range(CONSUMERS):
            coords = (pid_b, pid_h, start_m + w * BLOCK_MW)
            # Q, O and dO (each in one or two column tiles) on one barrier: O's and dO's bytes as Q's extra.
            _load_rows(desc_q, desc_q_tail, coords, q_ready.index(w), q_smem, q_tail_smem, w, BLOCK_MW, HEAD_DIM,
                       HEAD_DIM_TAIL, 2 * ROW_BYTES)
            _copy_rows(desc_o, desc_o_tail, coords, q_ready.index(w), o_smem, o_tail_smem, w, BLOCK_MW, VALUE_DIM,
                       VALUE_DIM_TAIL)
            _copy_rows(desc_do, desc_do_tail, coords, q_ready.index(w), do_smem, do_tail_smem, w, BLOCK_MW, VALUE_DIM,
                       VALUE_DIM_TAIL)
        loaded = _load_key_blocks(desc_k, desc_k_tail, desc_v, desc_v_tail, k_smem, k_tail_smem, v_smem, v_tail_smem,
                                  k_ready, k_empty, v_ready, v_empty, pid_b, pid_hk, first_block, n_blocks, loaded,
                                  HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_N, STAGES)
        t = _next_tile(TileCounter, programs)
        tiles_done += 1
    _stop_consumers(t, n_tiles, programs, TileCounter, tiles_done, tile_ids, q_empty, q_ready, 1)


@gluon.jit
def _consume(q, q_tail, do, do_tail, k_smem, k_tail_smem, v_smem, v_tail_smem, k_ready, k_empty, v_ready, v_empty,
             i_lo, i_hi, ring_base, first_block, dq, dq_tail, ds_op, lse, delta, zeros_s, qk_scale, row_first,
             q_start, Skv, KeyMask, stride_kmb, pid_b, HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM_TAIL: gl.constexpr,
             BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, s_layout: gl.constexpr,
             ds_layout: gl.constexpr, ds_tail_layout: gl.constexpr, IS_CAUSAL: gl.constexpr,
             HAS_KEY_MASK: gl.constexpr, MASKED: gl.constexpr):
    """Key blocks [i_lo, i_hi) of the tile (key block first_block + i, ring position ring_base + i), each after a
    first: issue S_i, dQ += dS_{i-1} K_{i-1} and dP_i together, take P_i while the last two run, then dS_i. K_{i-1}
    goes back to the loader once its dQ product is done, V_i once dP_i is. Where HEAD_DIM_TAIL > 0, q, k and dQ come
    in two tiles (``dq_tail`` the second; else it passes through), S and dQ as two products each; where
    VALUE_DIM_TAIL > 0, dO and V do, dP as two products."""
    DQ_GROUPS: gl.constexpr = 2 if HEAD_DIM_TAIL > 0 else 1
    DP_GROUPS: gl.constexpr = 2 if VALUE_DIM_TAIL > 0 else 1
    for i in range(i_lo, i_hi):
        slot = (ring_base + i) % STAGES
        prev = (ring_base + i - 1) % STAGES
        phase = ((ring_base + i) // STAGES) & 1
        mbarrier.wait(k_ready.index(slot), phase)
        s_token = _scores(q, q_tail, k_smem, k_tail_smem, slot, zeros_s, HEAD_DIM_TAIL, True)
        dq_token = warpgroup_mma(ds_op, k_smem.index(prev), dq, is_async=True)
        if HEAD_DIM_TAIL > 0:
            ds_tail = gl.convert_layout(ds_op, ds_tail_layout)
            dq_tail_token = warpgroup_mma(ds_tail, k_tail_smem.index(prev), dq_tail, is_async=True)
        mbarrier.wait(v_ready.index(slot), phase)
        dp_token = _scores(do, do_tail, v_smem, v_tail_smem, slot, zeros_s, VALUE_DIM_TAIL, True)
        s = warpgroup_mma_wait(DQ_GROUPS + DP_GROUPS, deps=(s_token,))  # S's groups done, dQ's and dP's running
        if MASKED:
            s = _masked(s, row_first, (first_block + i) * BLOCK_N, q_start, Skv, KeyMask, stride_kmb, pid_b,
                        BLOCK_MW, BLOCK_N, s_layout, IS_CAUSAL, HAS_KEY_MASK)
        p = gl.exp2(s * qk_scale - lse[:, None])
        if HEAD_DIM_TAIL > 0:
            dq, dq_tail, ds_op, ds_tail, dp = warpgroup_mma_wait(
                0, deps=(dq_token, dq_tail_token, ds_op, ds_tail, dp_token))
        else:
            dq, ds_op, dp = warpgroup_mma_wait(0, deps=(dq_token, ds_op, dp_token))
        mbarrier.arrive(k_empty.index(prev), count=1)
        mbarrier.arrive(v_empty.index(slot), count=1)
        ds_op = gl.convert_layout((p * (dp - delta[:, None])).to(ds_op.dtype), ds_layout)
    return dq, dq_tail, ds_op


@gluon.jit
def _consumer(descs, DQ, LSE, Delta, KeyMask, KeyRange, TileCounter, buffers, sizes, strides, qk_scale, sm_scale,
              HEAD_DIM: gl.constexpr, HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM: gl.constexpr,
              VALUE_DIM_TAIL: gl.constexpr, BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr, WG: gl.constexpr):
    """One warpgroup: for each of the program's tiles, query rows [start_m + WG * BLOCK_MW, + BLOCK_MW): Delta from
    the tile's O and dO, then dQ over the key blocks the loader streams, split as in the Gluon forward's consumer
    (the first block masked where it needs it, then the blocks every row sees in full, then the masked rest)."""
    desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_o, desc_o_tail, desc_do, desc_do_tail = descs
    q_smem, q_tail_smem, o_smem, o_tail_smem, do_smem, do_tail_smem, k_smem, k_tail_smem, v_smem, v_tail_smem, \
        tile_ids, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty = buffers
    Sq, Skv, H, GROUP, n_m, n_tiles, HEADS_PER_SECTION = sizes
    stride_dqb, stride_dqh, stride_dqm, stride_kmb = strides
    dtype: gl.constexpr = desc_q.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                        instr_shape=[16, HEAD_DIM, 16])
    ds_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dq_layout, k_width=2)
    # dQ's second tile, where HEAD_DIM_TAIL > 0 (else these stand in for it, unused).
    TAIL_COLUMNS: gl.constexpr = HEAD_DIM_TAIL if HEAD_DIM_TAIL > 0 else HEAD_DIM
    dq_tail_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, TAIL_COLUMNS, 16])
    ds_tail_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=dq_tail_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    rows_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    zeros_s = gl.zeros([BLOCK_MW, BLOCK_N], gl.float32, layout=s_layout)
    q_start = Skv - Sq
    q = q_smem.index(WG)
    q_tail = q_tail_smem.index(WG)
    do = do_smem.index(WG)
    do_tail = do_tail_smem.index(WG)

    consumed = 0
    tiles_done = 0
    t, _ = _wait_tile(tiles_done, tile_ids, q_ready, WG, 1)
    while t < n_tiles:
        pid_b, pid_h, pid_hk, pid_bh, start_m, first_block, n_blocks, key_lo, key_hi, one_run = _tile(
            t, sizes, KeyRange, BLOCK_MW, BLOCK_N, IS_CAUSAL, HAS_KEY_MASK)
        row_first = start_m + WG * BLOCK_MW
        clean_lo, clean_hi = _clean_blocks(row_first, q_start, Skv, first_block, key_lo, key_hi, one_run, BLOCK_N,
                                           IS_CAUSAL, HAS_KEY_MASK)

        # Delta = rowsum(O * dO) in float32, as the Triton dQ kernel computes it; rows past Sq load as zeros.
        o_rows = o_smem.index(WG).load(rows_layout).to(gl.float32)
        do_rows = do.load(rows_layout).to(gl.float32)
        delta = gl.sum(o_rows * do_rows, axis=1)
        if VALUE_DIM_TAIL > 0:
            # The tail's own layout: VALUE_DIM_TAIL // 4 threads of 4 columns each along a row.
            rows_tail_layout: gl.constexpr = gl.BlockedLayout(
                [1, 4], [32 // (VALUE_DIM_TAIL // 4), VALUE_DIM_TAIL // 4], [4, 1], [1, 0])
            o_tail_rows = o_tail_smem.index(WG).load(rows_tail_layout).to(gl.float32)
            do_tail_rows = do_tail.load(rows_tail_layout).to(gl.float32)
            delta += gl.convert_layout(gl.sum(o_tail_rows * do_tail_rows, axis=1), gl.SliceLayout(1, rows_layout))
        delta_rows = row_first + gl.arange(0, BLOCK_MW, layout=gl.SliceLayout(1, rows_layout))
        gl.store(Delta + pid_bh.to(gl.int64) * Sq + delta_rows, delta, mask=delta_rows < Sq)
        delta = gl.convert_layout(delta, row_s)
        lse_rows = row_first + gl.arange(0, BLOCK_MW, layout=row_s)
        lse = gl.load(LSE + pid_bh.to(gl.int64) * Sq + lse_rows, mask=lse_rows < Sq, other=0.0)

        dq = gl.zeros([BLOCK_MW, HEAD_DIM], gl.float32, layout=dq_layout)
        dq_tail = gl.zeros([BLOCK_MW, TAIL_COLUMNS], gl.float32, layout=dq_tail_layout)
        if n_blocks > 0:
            slot = consumed % STAGES
            phase = (consumed // STAGES) & 1
            mbarrier.wait(k_ready.index(slot), phase)
            s_token = _scores(q, q_tail, k_smem, k_tail_smem, slot, zeros_s, HEAD_DIM_TAIL, True)
            mbarrier.wait(v_ready.index(slot), phase)
            dp = _scores(do, do_tail, v_smem, v_tail_smem, slot, zeros_s, VALUE_DIM_TAIL, False)
            s = warpgroup_mma_wait(0, deps=(s_token,))
            mbarrier.arrive(v_empty.index(slot), count=1)
            if (clean_lo > 0) | (clean_hi < 1):
                s = _masked(s, row_first, first_block * BLOCK_N, q_start, Skv, KeyMask, stride_kmb, pid_b, BLOCK_MW,
                            BLOCK_N, s_layout, IS_CAUSAL, HAS_KEY_MASK)
            p = gl.exp2(s * qk_scale - lse[:, None])
            ds_op = gl.convert_layout((p * (dp - delta[:, None])).to(dtype), ds_layout)

            clean_stop = gl.maximum(gl.minimum(clean_hi, n_blocks), 1)
            dq, dq_tail, ds_op = _consume(
                q, q_tail, do, do_tail, k_smem, k_tail_smem, v_smem, v_tail_smem, k_ready, k_empty, v_ready, v_empty,
                1, clean_stop, consumed, first_block, dq, dq_tail, ds_op, lse, delta, zeros_s, qk_scale, row_first,
                q_start, Skv, KeyMask, stride_kmb, pid_b, HEAD_DIM_TAIL, VALUE_DIM_TAIL, BLOCK_MW, BLOCK_N, STAGES,
                s_layout, ds_layout, ds_tail_layout, IS_CAUSAL, HAS_KEY_MASK, False)
            dq, dq_tail, ds_op = _consume(
                q, q_tail, do, do_tail, k_smem, k_tail_smem, v_smem, v_tail_smem, k_ready, k_empty, v_ready, v_empty,
                clean_stop, n_blocks, consumed, first_block, dq, dq_tail, ds_op, lse, delta, zeros_s, qk_scale,
                row_first, q_start, Skv, KeyMask, stride_kmb, pid_b, HEAD_DIM_TAIL, VALUE_DIM_TAIL, BLOCK_MW, BLOCK_N,
                STAGES, s_layout, ds_layout, ds_tail_layout, IS_CAUSAL, HAS_KEY_MASK, True)
            # Q, O and dO are read: the loader may fetch the next tile's while the last product runs.
            mbarrier.arrive(q_empty.index(WG), count=1)
            consumed += n_blocks
            last = (consumed - 1) % STAGES
            dq = warpgroup_mma(ds_op, k_smem.index(last), dq)
            if HEAD_DIM_TAIL > 0:
                dq_tail = warpgroup_mma(gl.convert_layout(ds_op, ds_tail_layout), k_tail_smem.index(last), dq_tail)
            mbarrier.arrive(k_empty.index(last), count=1)
        else:
            mbarrier.arrive(q_empty.index(WG), count=1)

        _store_rows(DQ, dq * sm_scale, pid_b, pid_h, row_first, Sq, stride_dqb, stride_dqh, stride_dqm, 0, BLOCK_MW,
                    HEAD_DIM, dq_layout)
        if HEAD_DIM_TAIL > 0:
            _store_rows(DQ, dq_tail * sm_scale, pid_b, pid_h, row_first, Sq, stride_dqb, stride_dqh, stride_dqm,
                        HEAD_DIM, BLOCK_MW, HEAD_DIM_TAIL, dq_tail_layout)
        tiles_done += 1
        t, _ = _wait_tile(tiles_done, tile_ids, q_ready, WG, 1)


@gluon.jit
def _attn_bwd_dq_ws(desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_o, desc_o_tail, desc_do,
                    desc_do_tail, DQ, LSE, Delta, KeyMask, KeyRange, TileCounter, qk_scale, sm_scale, stride_dqb,
                    stride_dqh, stride_dqm, stride_kmb, H, Sq, Skv, GROUP, n_tiles, HEADS_PER_SECTION,
                    HEAD_DIM: gl.constexpr, HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM: gl.constexpr,
                    VALUE_DIM_TAIL: gl.constexpr, BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                    IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                    num_warps: gl.constexpr):
    """Persistent: grid (programs,), each taking tile pid, then the next of the n_tiles =
    cdiv(Sq, CONSUMERS * BLOCK_MW) * B * H from TileCounter (a zeroed int32, left zeroed), in the Gluon forward's
    order. q/k/v/o/do through 4D descriptors over (B, H|Hkv, S, D) with boxes (1, 1, rows, HEAD_DIM) for q and k and
    (1, 1, rows, VALUE_DIM) for v, o and do; where HEAD_DIM_TAIL > 0, q and k have HEAD_DIM + HEAD_DIM_TAIL columns,
    desc_q_tail/desc_k_tail bring those past HEAD_DIM (as in the Gluon forward) and dQ is computed in two tiles too
    (multi-head latent attention's 192 = 128 + 64 with v at 128); where VALUE_DIM_TAIL > 0, v, o and do have
    VALUE_DIM + VALUE_DIM_TAIL columns, the columns past VALUE_DIM through desc_v_tail/desc_o_tail/desc_do_tail;
    DQ (B, H, Sq, D) with unit last stride, written by pointer; LSE (B, H, Sq) float32 in log2 units (the
    forward's); Delta (B, H, Sq) float32, written; qk_scale is the softmax scale times log2(e), sm_scale the softmax
    scale. HAS_KEY_MASK: KeyMask (B, Skv) uint8 keep-flags (unit stride along the keys) and KeyRange its (B, 3) kept
    ranges."""
    dtype: gl.constexpr = desc_q.dtype
    k_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    v_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, VALUE_DIM], dtype)
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_MW, HEAD_DIM], dtype)
    o_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_MW, VALUE_DIM], dtype)

    q_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, BLOCK_MW, HEAD_DIM], q_layout)
    o_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, BLOCK_MW, VALUE_DIM], o_layout)
    do_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, BLOCK_MW, VALUE_DIM], o_layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_layout)
    q_tail_smem = _tail_tiles(dtype, CONSUMERS, BLOCK_MW, HEAD_DIM_TAIL, q_smem)
    k_tail_smem = _tail_tiles(dtype, STAGES, BLOCK_N, HEAD_DIM_TAIL, k_smem)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, VALUE_DIM], v_layout)
    o_tail_smem = _tail_tiles(dtype, CONSUMERS, BLOCK_MW, VALUE_DIM_TAIL, o_smem)
    do_tail_smem = _tail_tiles(dtype, CONSUMERS, BLOCK_MW, VALUE_DIM_TAIL, do_smem)
    v_tail_smem = _tail_tiles(dtype, STAGES, BLOCK_N, VALUE_DIM_TAIL, v_smem)
    tile_ids = gl.allocate_shared_memory(gl.int32, [1, 1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    q_ready = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [CONSUMERS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(CONSUMERS):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(v_empty.index(i), count=CONSUMERS)

    descs = (desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_o, desc_o_tail, desc_do, desc_do_tail)
    buffers = (q_smem, q_tail_smem, o_smem, o_tail_smem, do_smem, do_tail_smem, k_smem, k_tail_smem, v_smem,
               v_tail_smem, tile_ids, q_ready, q_empty, k_ready, k_empty, v_ready, v_empty)
    sizes = (Sq, Skv, H, GROUP, gl.cdiv(Sq, CONSUMERS * BLOCK_MW), n_tiles, HEADS_PER_SECTION)
    strides = (stride_dqb, stride_dqh, stride_dqm, stride_kmb)
    gl.warp_specialize([
        (_consumer, (descs, DQ, LSE, Delta, KeyMask, KeyRange, TileCounter, buffers, sizes, strides, qk_scale, sm_scale,
                     HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_MW, BLOCK_N, STAGES, IS_CAUSAL,
                     HAS_KEY_MASK, 0)),
        (_consumer, (descs, DQ, LSE, Delta, KeyMask, KeyRange, TileCounter, buffers, sizes, strides, qk_scale, sm_scale,
                     HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_MW, BLOCK_N, STAGES, IS_CAUSAL,
                     HAS_KEY_MASK, 1)),
        (_loader, (descs, DQ, LSE, Delta, KeyMask, KeyRange, TileCounter, buffers, sizes, strides, qk_scale, sm_scale,
                   HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_MW, BLOCK_N, STAGES, IS_CAUSAL,
                   HAS_KEY_MASK, 0))],
        [4, 1], [CONSUMER_REGS, 24])
