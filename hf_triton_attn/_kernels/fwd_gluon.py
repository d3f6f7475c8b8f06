"""Warp-specialised flash-attention forward for Hopper, written in Gluon (Triton's lower-level dialect).

The plain Triton forward (fwd.py) leaves the softmax and the tensor cores to take turns within each program; Gluon
lets a kernel say what Triton's compiler does not: one loader warp streams K/V tiles through a ring of shared-memory
stages with TMA and mbarriers, and each consumer warpgroup overlaps its softmax of key block j with the tensor
cores' P_{j-1} @ V_{j-1} (FA3's intra-warpgroup overlap; P stays in registers as the wgmma A operand).

Programs are persistent, one per SM: each takes (query block, head) tiles from a shared counter as it finishes
the last (``_tile`` gives their order: under a causal mask the longest first, so that the programs end together),
its K/V ring and its consumers' query slots carried from one tile to the next, so a tile's last blocks overlap the
next tile's first loads. Where ``TMA_STORE``, a tile's output leaves through shared memory by TMA and its store
overlaps the next tile's work too.

Scope: causal (bottom-right aligned, Skv >= Sq) and a (B, Skv) key-padding mask with its kept key ranges (the
blocks before the first and after the last kept key skipped; holes masked element by element), no other mask, no
dropout, no softcap, attention sinks (joined in the epilogue, as the Triton forward joins them), 16-bit inputs,
head_dim 64, 128 or 256, or q/k in two tiles (192 as 128 + 64; ``HEAD_DIM_TAIL``) with v at its own head dim
(multi-head latent attention's 192/128; ``VALUE_DIM``) or in two tiles too (80, 96, 192 as 64 + 16, 64 + 32, 128 + 64;
``VALUE_DIM_TAIL``), tensors (B, H, S, D) with a unit last stride and 16-byte aligned other strides (TMA), any
lengths. Rows that see no key (and no sink) give zeros and a log-sum-exp of 0, as
the Triton forward. The op layer decides when to take it (ops.py). Tested on triton 3.6 (H200); it also compiles
for sm_90 with triton 3.7 and 3.9 (3.9's Gluon renamed the TMA copies, see ``_tma_load`` and ``_tma_store``).
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

from .common import LOG2E

# Triton 3.6 names the TMA copies async_copy_global_to_shared and async_copy_shared_to_global; later releases renamed
# them async_load and async_store.
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global

# Consumer warpgroups per program; each owns BLOCK_MW query rows of the program's tile and both read every K/V tile.
CONSUMERS = gl.constexpr(2)


@gluon.jit
def _tma_view(buffers, index, BLOCK: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Slot ``index`` of a ring of (BLOCK, HEAD_DIM) tiles as the (1, 1, BLOCK, HEAD_DIM) box a 4D descriptor writes."""
    return buffers.index(index).reshape([1, 1, BLOCK, HEAD_DIM])


@gluon.jit
def _load_rows(desc, desc_tail, coords, bar, smem, tail_smem, index, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr,
               HEAD_DIM_TAIL: gl.constexpr, EXTRA_BYTES: gl.constexpr = 0):
    """Rows ``coords`` (batch, head, first row) of a q or k tile into slot ``index``: the first HEAD_DIM columns
    into ``smem`` and, where HEAD_DIM_TAIL > 0, the next HEAD_DIM_TAIL into ``tail_smem``, both arriving on ``bar``,
    which also expects EXTRA_BYTES from the loads the caller issues onto it next (one arrival per phase)."""
    if HEAD_DIM_TAIL > 0:
        mbarrier.expect(bar, desc.block_type.nbytes + desc_tail.block_type.nbytes + EXTRA_BYTES)
    else:
        mbarrier.expect(bar, desc.block_type.nbytes + EXTRA_BYTES)
    _copy_rows(desc, desc_tail, coords, bar, smem, tail_smem, index, ROWS, HEAD_DIM, HEAD_DIM_TAIL)


@gluon.jit
def _copy_rows(desc, desc_tail, coords, bar, smem, tail_smem, index, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr,
               HEAD_DIM_TAIL: gl.constexpr):
    """_load_rows' copies without its ``expect``: for the loads that arrive on a barrier another load's expect
    counted (its EXTRA_BYTES)."""
    pid_b, pid_h, row = coords
    _tma_load(desc, [pid_b, pid_h, row, 0], bar, _tma_view(smem, index, ROWS, HEAD_DIM))
    if HEAD_DIM_TAIL > 0:
        _tma_load(desc_tail, [pid_b, pid_h, row, HEAD_DIM], bar, _tma_view(tail_smem, index, ROWS, HEAD_DIM_TAIL))


@gluon.jit
def _tail_tiles(dtype: gl.constexpr, SLOTS: gl.constexpr, ROWS: gl.constexpr, COLUMNS: gl.constexpr, unused):
    """SLOTS (ROWS, COLUMNS) tiles of shared memory for the columns past a head dim's first tile; where COLUMNS is 0
    (the head dim in one tile), ``unused``, a buffer that stands in for them and is never read."""
    if COLUMNS > 0:
        tiles = gl.allocate_shared_memory(dtype, [SLOTS, ROWS, COLUMNS],
                                          gl.NVMMASharedLayout.get_default_for([ROWS, COLUMNS], dtype))
    else:
        tiles = unused
    return tiles


@gluon.jit
def _scores(q, q_tail, k_smem, k_tail_smem, slot, zeros_s, HEAD_DIM_TAIL: gl.constexpr, IS_ASYNC: gl.constexpr):
    """S = Q K^T of the K tile in ring slot ``slot``, over the tail tiles too where HEAD_DIM_TAIL > 0: a token to
    wait on where IS_ASYNC (one product group per tile), else the scores. The backward kernels take their dP = dO V^T
    (dP^T = V dO^T) through it too, with v's tiles."""
    s = warpgroup_mma(q, k_smem.index(slot).permute((1, 0)), zeros_s, use_acc=False, is_async=IS_ASYNC)
    if HEAD_DIM_TAIL > 0:
        s = warpgroup_mma(q_tail, k_tail_smem.index(slot).permute((1, 0)), s, is_async=IS_ASYNC)
    return s


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
def _causal_tile(t, n_m, BH, HEADS_PER_SECTION):
    """(query block, batch*head) of causal tile ``t``: sections of HEADS_PER_SECTION heads (their K/V sharing L2)
    one after another, and within one the query blocks from the last (the most key blocks) to the first, the
    section's heads side by side. Programs take the next tile in this order whenever they finish one, so the
    longest tiles start first and the shortest fill in at the end."""
    section_tiles = HEADS_PER_SECTION * n_m
    section = t // section_tiles
    rest = t - section * section_tiles
    section_heads = gl.minimum(HEADS_PER_SECTION, BH - section * HEADS_PER_SECTION)
    return n_m - 1 - rest // section_heads, section * HEADS_PER_SECTION + rest % section_heads


@gluon.jit
def _tile(t, sizes, KeyRange, BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr,
          HAS_KEY_MASK: gl.constexpr):
    """Work tile ``t`` of the persistent schedule: its (batch, head, kv head, batch*head, first query row) and its
    key blocks (first_block, n_blocks, kept range lo, hi, one run). Causal tiles go longest first within sections
    of heads (_causal_tile); the others head by head, each head's query blocks (last first) side by side, so the
    programs running at once share its K/V in L2."""
    Sq, Skv, H, GROUP, n_m, n_tiles, HEADS_PER_SECTION = sizes
    if IS_CAUSAL:
        m_block, pid_bh = _causal_tile(t, n_m, n_tiles // n_m, HEADS_PER_SECTION)
    else:
        pid_bh = t // n_m
        m_block = n_m - 1 - (t - pid_bh * n_m)
    pid_b = pid_bh // H
    pid_h = pid_bh % H
    start_m = m_block * (CONSUMERS * BLOCK_MW)
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
    return pid_b, pid_h, pid_h // GROUP, pid_bh, start_m, first_block, n_blocks, key_lo, key_hi, one_run


@gluon.jit
def _load_key_blocks(desc_k, desc_k_tail, desc_v, desc_v_tail, k_smem, k_tail_smem, v_smem, v_tail_smem, k_ready,
                     k_empty, v_ready, v_empty, pid_b, pid_hk, first_block, n_blocks, loaded, HEAD_DIM: gl.constexpr,
                     HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM: gl.constexpr, VALUE_DIM_TAIL: gl.constexpr,
                     BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """The loader's K and V tiles of key blocks [first_block, + n_blocks) into the ring, from ring position
    ``loaded`` on, each into a slot once the consumers released it; returns the ring position after them. K's
    columns past HEAD_DIM go into ``k_tail_smem`` where HEAD_DIM_TAIL > 0, V's past VALUE_DIM into ``v_tail_smem``
    where VALUE_DIM_TAIL > 0 (else the tail arguments are unused)."""
    for i in range(n_blocks):
        slot = loaded % STAGES
        free_phase = ((loaded // STAGES) & 1) ^ 1  # a new mbarrier counts its phase before 0 as complete
        start_n = (first_block + i) * BLOCK_N
        mbarrier.wait(k_empty.index(slot), free_phase)
        _load_rows(desc_k, desc_k_tail, (pid_b, pid_hk, start_n), k_ready.index(slot), k_smem, k_tail_smem, slot,
                   BLOCK_N, HEAD_DIM, HEAD_DIM_TAIL)
        mbarrier.wait(v_empty.index(slot), free_phase)
        _load_rows(desc_v, desc_v_tail, (pid_b, pid_hk, start_n), v_ready.index(slot), v_smem, v_tail_smem, slot,
                   BLOCK_N, VALUE_DIM, VALUE_DIM_TAIL)
        loaded += 1
    return loaded


@gluon.jit
def _clean_blocks(row_first, q_start, Skv, first_block, key_lo, key_hi, one_run, BLOCK_N: gl.constexpr,
                  IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr):
    """[clean_lo, clean_hi): the tile's loader blocks (counted from first_block) that every row of the consumer
    starting at ``row_first`` sees in full, inside one run of kept keys and left of its causal diagonal."""
    clean_end = gl.minimum(Skv, key_hi)
    if IS_CAUSAL:
        clean_end = gl.minimum(clean_end, q_start + row_first + 1)
    clean_lo = (key_lo + BLOCK_N - 1) // BLOCK_N - first_block
    if HAS_KEY_MASK:
        clean_hi = gl.where(one_run, clean_end // BLOCK_N - first_block, clean_lo)
    else:
        clean_hi = clean_end // BLOCK_N
    return clean_lo, clean_hi


@gluon.jit
def _publish_tile(t, tiles_done, tile_ids, slot_empty, SLOTS: gl.constexpr):
    """The loader's start of its ``tiles_done``-th tile: once both consumers released the tile's slot (of SLOTS, its
    barriers slot * CONSUMERS + consumer in ``slot_empty``), the tile's index ``t`` into that slot's entry of
    ``tile_ids``; returns the slot. The consumers read the index once the slot's loads arrive (_wait_tile)."""
    slot = tiles_done % SLOTS
    free = ((tiles_done // SLOTS) & 1) ^ 1  # a new mbarrier counts its phase before 0 as complete
    for w in gl.static_range(CONSUMERS):
        mbarrier.wait(slot_empty.index(slot * CONSUMERS + w), free)
    id_layout: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    tile_ids.index(slot).store(gl.full([1], t, gl.int32, layout=id_layout))
    return slot


@gluon.jit
def _next_tile(TileCounter, programs):
    """The loader's next tile index: the counter's value plus the number of programs (each program's first tile is
    its id)."""
    return gl.atomic_add(TileCounter, 1, sem="relaxed") + programs  # an index, no data to order: no fences


@gluon.jit
def _stop_consumers(t, n_tiles, programs, TileCounter, tiles_done, tile_ids, slot_empty, slot_ready,
                    SLOTS: gl.constexpr):
    """The loader's end: the index ``t`` (past n_tiles) published as the next tile's and the slot's ready barriers
    arrived on, so the consumers stop; the program whose fetch read the last tile sets the counter back to zero for
    the next launch."""
    slot = _publish_tile(t, tiles_done, tile_ids, slot_empty, SLOTS)
    for w in gl.static_range(CONSUMERS):
        mbarrier.arrive(slot_ready.index(slot * CONSUMERS + w), count=1)
    if t == n_tiles - 1 + programs:
        gl.atomic_xchg(TileCounter, 0, sem="relaxed")


@gluon.jit
def _wait_tile(tiles_done, tile_ids, slot_ready, WG: gl.constexpr, SLOTS: gl.constexpr):
    """Consumer WG's start of its ``tiles_done``-th tile: waits for the loads of the tile's slot, then returns the
    tile's index (past n_tiles: stop) and the slot's barrier of this consumer (slot * CONSUMERS + WG)."""
    index = (tiles_done % SLOTS) * CONSUMERS + WG
    mbarrier.wait(slot_ready.index(index), (tiles_done // SLOTS) & 1)
    id_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    return gl.max(tile_ids.index(tiles_done % SLOTS).load(id_layout), axis=0), index


@gluon.jit
def _loader(descs, Out, LSE, KeyMask, KeyRange, Sinks, TileCounter, buffers, sizes, strides, qk_scale,
            HEAD_DIM: gl.constexpr, HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM: gl.constexpr,
            VALUE_DIM_TAIL: gl.constexpr, BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
            IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr, TMA_STORE: gl.constexpr, Q_SLOTS: gl.constexpr,
            HAS_SINKS: gl.constexpr, WG: gl.constexpr):
    """One warp (the partitions share one signature, hence the arguments it does not use): for each tile the
    program takes, once the consumers released a Q slot, the tile's index into that slot's entry of ``tile_ids``
    and its query tiles into the slot, then the K and V tiles of its key blocks into the ring slots the consumers
    released; ring positions count on across tiles, so the next tile's loads start while the consumers finish this
    one.

    The first tile is the program's id, the next ones come from the tile counter (one fetch per tile, after its
    loads are issued) until it runs past n_tiles; an index past n_tiles in the tile slot then tells the consumers
    to stop. Each program fetches once more than it has tiles after its first, so the fetches number n_tiles in
    all, and the last one (which reads n_tiles - 1) sets the counter back to zero for the next launch."""
    desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_o, desc_o_tail = descs
    q_smem, q_tail_smem, k_smem, k_tail_smem, v_smem, v_tail_smem, o_smem, o_tail_smem, tile_ids, q_ready, q_empty, \
        k_ready, k_empty, v_ready, v_empty = buffers
    Sq, Skv, H, GROUP, n_m, n_tiles, HEADS_PER_SECTION = sizes
    programs = gl.num_programs(0)
    loaded = 0
    tiles_done = 0
    t = gl.program_id(0)
    while t < n_tiles:
        pid_b, pid_h, pid_hk, pid_bh, start_m, first_block, n_blocks, key_lo, key_hi, one_run = _tile(
            t, sizes, KeyRange, BLOCK_MW, BLOCK_N, IS_CAUSAL, HAS_KEY_MASK)
        q_slot = _publish_tile(t, tiles_done, tile_ids, q_empty, Q_SLOTS)
        for w in gl.static_range(CONSUMERS):
            index = q_slot * CONSUMERS + w
            _load_rows(desc_q, desc_q_tail, (pid_b, pid_h, start_m + w * BLOCK_MW), q_ready.index(index), q_smem,
                       q_tail_smem, index, BLOCK_MW, HEAD_DIM, HEAD_DIM_TAIL)
        loaded = _load_key_blocks(desc_k, desc_k_tail, desc_v, desc_v_tail, k_smem, k_tail_smem, v_smem, v_tail_smem,
                                  k_ready, k_empty, v_ready, v_empty, pid_b, pid_hk, first_block, n_blocks, loaded,
                                  HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_N, STAGES)
        t = _next_tile(TileCounter, programs)
        tiles_done += 1
    _stop_consumers(t, n_tiles, programs, TileCounter, tiles_done, tile_ids, q_empty, q_ready, Q_SLOTS)


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
def _join_sink(l_i, m_i, Sinks, sink_strides, pid_b, pid_h, row_first, Sq, BLOCK_MW: gl.constexpr,
               row_s: gl.constexpr):
    """The consumer's rows with their attention-sink logits joined, as common._join_sink does for the Triton
    kernels: one more logit per row (Sinks, strides 0 where it broadcasts) in the row sum and the maximum, with no
    value. Returns (the factor to rescale the output rows by, row sums, row maxima)."""
    stride_sb, stride_sh, stride_sm = sink_strides
    rows = row_first + gl.arange(0, BLOCK_MW, layout=row_s)
    ptrs = Sinks + pid_b.to(gl.int64) * stride_sb + pid_h.to(gl.int64) * stride_sh + rows.to(gl.int64) * stride_sm
    sink = gl.load(ptrs, mask=rows < Sq, other=0.0).to(gl.float32) * LOG2E
    m_new = gl.maximum(m_i, sink)
    # Both -inf (no key seen, a -inf sink): subtracting 0 instead keeps -inf - -inf = NaN out.
    m_shift = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_shift)
    return alpha, l_i * alpha + gl.exp2(sink - m_shift), m_new


@gluon.jit
def _store_rows(Out, tile, pid_b, pid_h, row_first, Sq, stride_ob, stride_oh, stride_om, first_column,
                BLOCK_MW: gl.constexpr, COLUMNS: gl.constexpr, layout: gl.constexpr):
    """The output ``tile`` (rows from row_first, columns from first_column; unit column stride) by pointer, rows past
    Sq left out."""
    rows = row_first + gl.arange(0, BLOCK_MW, layout=gl.SliceLayout(1, layout))
    cols = first_column + gl.arange(0, COLUMNS, layout=gl.SliceLayout(0, layout))
    o_ptrs = (Out + pid_b.to(gl.int64) * stride_ob + pid_h.to(gl.int64) * stride_oh
              + rows[:, None].to(gl.int64) * stride_om + cols[None, :])
    gl.store(o_ptrs, tile.to(Out.dtype.element_ty), mask=(rows < Sq)[:, None])


@gluon.jit
def _consume(q, q_tail, k_smem, k_tail_smem, v_smem, v_tail_smem, k_ready, k_empty, v_ready, v_empty, i_lo, i_hi,
             ring_base, first_block, acc, acc_tail, p_op, m_i, l_i, zeros_s, qk_scale, row_first, q_start, Skv,
             KeyMask, stride_kmb, pid_b, HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM_TAIL: gl.constexpr,
             BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, s_layout: gl.constexpr,
             p_layout: gl.constexpr, p_tail_layout: gl.constexpr, row_o: gl.constexpr, row_o_tail: gl.constexpr,
             IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr, MASKED: gl.constexpr):
    """The tile's key blocks [i_lo, i_hi) (key block first_block + i, ring position ring_base + i): issue
    S_i = Q K_i^T and P_{i-1} V_{i-1} together (V and the output in two tiles where VALUE_DIM_TAIL > 0, ``acc_tail``
    the second; else ``acc_tail`` passes through), take the softmax of S_i while the second runs, then rescale the
    output by the new maxima."""
    PV_GROUPS: gl.constexpr = 2 if VALUE_DIM_TAIL > 0 else 1
    for i in range(i_lo, i_hi):
        slot = (ring_base + i) % STAGES
        prev = (ring_base + i - 1) % STAGES
        mbarrier.wait(k_ready.index(slot), ((ring_base + i) // STAGES) & 1)
        s_token = _scores(q, q_tail, k_smem, k_tail_smem, slot, zeros_s, HEAD_DIM_TAIL, True)
        mbarrier.wait(v_ready.index(prev), ((ring_base + i - 1) // STAGES) & 1)
        acc_token = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
        if VALUE_DIM_TAIL > 0:
            p_tail = gl.convert_layout(p_op, p_tail_layout)
            acc_tail_token = warpgroup_mma(p_tail, v_tail_smem.index(prev), acc_tail, is_async=True)
        s = warpgroup_mma_wait(PV_GROUPS, deps=(s_token,))  # the scores' groups done, P_{i-1} V_{i-1} running
        mbarrier.arrive(k_empty.index(slot), count=1)
        if MASKED:
            s = _masked(s, row_first, (first_block + i) * BLOCK_N, q_start, Skv, KeyMask, stride_kmb, pid_b,
                        BLOCK_MW, BLOCK_N, s_layout, IS_CAUSAL, HAS_KEY_MASK)
        p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, qk_scale, MASKED)
        if VALUE_DIM_TAIL > 0:
            acc, acc_tail, p_op, p_tail = warpgroup_mma_wait(0, deps=(acc_token, acc_tail_token, p_op, p_tail))
            acc_tail = acc_tail * gl.convert_layout(alpha, row_o_tail)[:, None]
        else:
            acc, p_op = warpgroup_mma_wait(0, deps=(acc_token, p_op))
        mbarrier.arrive(v_empty.index(prev), count=1)
        acc = acc * gl.convert_layout(alpha, row_o)[:, None]
        p_op = gl.convert_layout(p.to(p_op.dtype), p_layout)
    return acc, acc_tail, p_op, m_i, l_i


@gluon.jit
def _consumer(descs, Out, LSE, KeyMask, KeyRange, Sinks, TileCounter, buffers, sizes, strides, qk_scale,
              HEAD_DIM: gl.constexpr, HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM: gl.constexpr,
              VALUE_DIM_TAIL: gl.constexpr, BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
              IS_CAUSAL: gl.constexpr, HAS_KEY_MASK: gl.constexpr, TMA_STORE: gl.constexpr, Q_SLOTS: gl.constexpr,
              HAS_SINKS: gl.constexpr, WG: gl.constexpr):
    """One warpgroup: for each of the program's tiles, query rows [start_m + WG * BLOCK_MW, + BLOCK_MW) against
    the key blocks the loader streams. The first may be partly masked (the start of the kept keys); then come the
    blocks that need no mask (wholly inside one run of kept keys and left of the row block's causal diagonal), then
    the masked rest (the diagonal, the ragged end, the end of the kept keys, holes)."""
    desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_o, desc_o_tail = descs
    q_smem, q_tail_smem, k_smem, k_tail_smem, v_smem, v_tail_smem, o_smem, o_tail_smem, tile_ids, q_ready, q_empty, \
        k_ready, k_empty, v_ready, v_empty = buffers
    Sq, Skv, H, GROUP, n_m, n_tiles, HEADS_PER_SECTION = sizes
    stride_ob, stride_om, stride_oh, stride_kmb, sink_strides = strides
    dtype: gl.constexpr = desc_q.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, VALUE_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    # The output's second tile, where VALUE_DIM_TAIL > 0 (else these stand in for it, unused).
    TAIL_COLUMNS: gl.constexpr = VALUE_DIM_TAIL if VALUE_DIM_TAIL > 0 else VALUE_DIM
    o_tail_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                            instr_shape=[16, TAIL_COLUMNS, 16])
    p_tail_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_tail_layout, k_width=2)
    row_o_tail: gl.constexpr = gl.SliceLayout(1, o_tail_layout)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    zeros_s = gl.zeros([BLOCK_MW, BLOCK_N], gl.float32, layout=s_layout)
    q_start = Skv - Sq

    consumed = 0
    tiles_done = 0
    t, q_index = _wait_tile(tiles_done, tile_ids, q_ready, WG, Q_SLOTS)
    while t < n_tiles:
        pid_b, pid_h, pid_hk, pid_bh, start_m, first_block, n_blocks, key_lo, key_hi, one_run = _tile(
            t, sizes, KeyRange, BLOCK_MW, BLOCK_N, IS_CAUSAL, HAS_KEY_MASK)
        row_first = start_m + WG * BLOCK_MW
        clean_lo, clean_hi = _clean_blocks(row_first, q_start, Skv, first_block, key_lo, key_hi, one_run, BLOCK_N,
                                           IS_CAUSAL, HAS_KEY_MASK)
        acc = gl.zeros([BLOCK_MW, VALUE_DIM], gl.float32, layout=o_layout)
        acc_tail = gl.zeros([BLOCK_MW, TAIL_COLUMNS], gl.float32, layout=o_tail_layout)
        m_i = gl.full([BLOCK_MW], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.zeros([BLOCK_MW], gl.float32, layout=row_s)
        if n_blocks > 0:
            q = q_smem.index(q_index)
            q_tail = q_tail_smem.index(q_index)
            slot = consumed % STAGES
            mbarrier.wait(k_ready.index(slot), (consumed // STAGES) & 1)
            s = _scores(q, q_tail, k_smem, k_tail_smem, slot, zeros_s, HEAD_DIM_TAIL, False)
            mbarrier.arrive(k_empty.index(slot), count=1)
            if (clean_lo > 0) | (clean_hi < 1):
                s = _masked(s, row_first, first_block * BLOCK_N, q_start, Skv, KeyMask, stride_kmb, pid_b, BLOCK_MW,
                            BLOCK_N, s_layout, IS_CAUSAL, HAS_KEY_MASK)
            p, m_i, l_i, alpha = _online_softmax(s, m_i, l_i, qk_scale, True)
            p_op = gl.convert_layout(p.to(dtype), p_layout)

            clean_stop = gl.maximum(gl.minimum(clean_hi, n_blocks), 1)
            acc, acc_tail, p_op, m_i, l_i = _consume(
                q, q_tail, k_smem, k_tail_smem, v_smem, v_tail_smem, k_ready, k_empty, v_ready, v_empty, 1,
                clean_stop, consumed, first_block, acc, acc_tail, p_op, m_i, l_i, zeros_s, qk_scale, row_first,
                q_start, Skv, KeyMask, stride_kmb, pid_b, HEAD_DIM_TAIL, VALUE_DIM_TAIL, BLOCK_MW, BLOCK_N, STAGES,
                s_layout, p_layout, p_tail_layout, row_o, row_o_tail, IS_CAUSAL, HAS_KEY_MASK, False)
            acc, acc_tail, p_op, m_i, l_i = _consume(
                q, q_tail, k_smem, k_tail_smem, v_smem, v_tail_smem, k_ready, k_empty, v_ready, v_empty, clean_stop,
                n_blocks, consumed, first_block, acc, acc_tail, p_op, m_i, l_i, zeros_s, qk_scale, row_first,
                q_start, Skv, KeyMask, stride_kmb, pid_b, HEAD_DIM_TAIL, VALUE_DIM_TAIL, BLOCK_MW, BLOCK_N, STAGES,
                s_layout, p_layout, p_tail_layout, row_o, row_o_tail, IS_CAUSAL, HAS_KEY_MASK, True)
            consumed += n_blocks
            last = (consumed - 1) % STAGES
            mbarrier.wait(v_ready.index(last), ((consumed - 1) // STAGES) & 1)
            acc = warpgroup_mma(p_op, v_smem.index(last), acc)
            if VALUE_DIM_TAIL > 0:
                acc_tail = warpgroup_mma(gl.convert_layout(p_op, p_tail_layout), v_tail_smem.index(last), acc_tail)
            mbarrier.arrive(v_empty.index(last), count=1)
        mbarrier.arrive(q_empty.index(q_index), count=1)

        if HAS_SINKS:
            alpha, l_i, m_i = _join_sink(l_i, m_i, Sinks, sink_strides, pid_b, pid_h, row_first, Sq, BLOCK_MW, row_s)
            acc = acc * gl.convert_layout(alpha, row_o)[:, None]
            if VALUE_DIM_TAIL > 0:
                acc_tail = acc_tail * gl.convert_layout(alpha, row_o_tail)[:, None]
        # Rows that saw no key (left padding under a causal mask, a row whose mask keeps nothing) and no sink give 0
        # and LSE 0.
        has_keys = l_i > 0.0
        row_sums = gl.where(has_keys, l_i, 1.0)
        out = acc / gl.convert_layout(row_sums, row_o)[:, None]
        if VALUE_DIM_TAIL > 0:
            out_tail = acc_tail / gl.convert_layout(row_sums, row_o_tail)[:, None]
        if TMA_STORE:
            # Through shared memory by TMA, which clips the rows past Sq: the store runs on while the next tile
            # starts, and only the next tile's epilogue waits for it to have read its buffer.
            tma.store_wait(0)
            o_smem.index(WG).store(out.to(dtype))
            if VALUE_DIM_TAIL > 0:
                o_tail_smem.index(WG).store(out_tail.to(dtype))
            fence_async_shared()
            _tma_store(desc_o, [pid_b, pid_h, row_first, 0], _tma_view(o_smem, WG, BLOCK_MW, VALUE_DIM))
            if VALUE_DIM_TAIL > 0:
                _tma_store(desc_o_tail, [pid_b, pid_h, row_first, VALUE_DIM],
                           _tma_view(o_tail_smem, WG, BLOCK_MW, VALUE_DIM_TAIL))
        else:
            _store_rows(Out, out, pid_b, pid_h, row_first, Sq, stride_ob, stride_oh, stride_om, 0, BLOCK_MW,
                        VALUE_DIM, o_layout)
            if VALUE_DIM_TAIL > 0:
                _store_rows(Out, out_tail, pid_b, pid_h, row_first, Sq, stride_ob, stride_oh, stride_om, VALUE_DIM,
                            BLOCK_MW, VALUE_DIM_TAIL, o_tail_layout)
        lse_rows = row_first + gl.arange(0, BLOCK_MW, layout=row_s)
        lse = gl.where(has_keys, m_i + gl.log2(gl.where(has_keys, l_i, 1.0)), 0.0)
        gl.store(LSE + pid_bh.to(gl.int64) * Sq + lse_rows, lse, mask=lse_rows < Sq)
        tiles_done += 1
        t, q_index = _wait_tile(tiles_done, tile_ids, q_ready, WG, Q_SLOTS)
    if TMA_STORE:
        tma.store_wait(0)


@gluon.jit
def _attn_fwd_ws(desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_o, desc_o_tail, Out, LSE,
                 KeyMask, KeyRange, Sinks, TileCounter, qk_scale, stride_ob, stride_om, stride_oh, stride_kmb,
                 stride_sb, stride_sh, stride_sm, H, Sq, Skv, GROUP, n_tiles, HEADS_PER_SECTION, HEAD_DIM: gl.constexpr,
                 HEAD_DIM_TAIL: gl.constexpr, VALUE_DIM: gl.constexpr, VALUE_DIM_TAIL: gl.constexpr,
                 BLOCK_MW: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr,
                 HAS_KEY_MASK: gl.constexpr, TMA_STORE: gl.constexpr, Q_SLOTS: gl.constexpr, HAS_SINKS: gl.constexpr,
                 CONSUMER_REGS: gl.constexpr, num_warps: gl.constexpr):
    """Persistent: grid (programs,), each taking tile pid, then the next of the n_tiles =
    cdiv(Sq, CONSUMERS * BLOCK_MW) * B * H from TileCounter (a zeroed int32, left zeroed; see _loader) whenever it
    finishes one (see _tile for their order). q/k/v through 4D descriptors over
    (B, H|Hkv, S, D) with boxes (1, 1, rows, HEAD_DIM) for q and k and (1, 1, rows, VALUE_DIM) for v; where
    HEAD_DIM_TAIL > 0, q and k have HEAD_DIM + HEAD_DIM_TAIL columns and desc_q_tail/desc_k_tail (boxes of
    HEAD_DIM_TAIL columns over the same tensors) bring the columns past HEAD_DIM into tiles of their own, each product
    over the head dim taken as two (else those two are unused). Likewise v and the output where VALUE_DIM_TAIL > 0:
    v has VALUE_DIM + VALUE_DIM_TAIL columns, desc_v_tail (and desc_o_tail) bring (and store) those past VALUE_DIM,
    and P V runs as two products into two accumulators. Out is (B, Sq, H, VALUE_DIM [+ VALUE_DIM_TAIL]) with unit
    last stride, written through desc_o and desc_o_tail (the same memory as (B, H, Sq, D), boxes of BLOCK_MW rows)
    where TMA_STORE, else by pointer; LSE (B, H, Sq) float32, log2 units; qk_scale is the softmax scale times
    log2(e). HAS_KEY_MASK: KeyMask (B, Skv) uint8 keep-flags (unit stride along the keys) and KeyRange its (B, 3)
    kept ranges (see _kernels/key_range.py).
    HAS_SINKS: Sinks holds an attention-sink logit per (batch, query head, query row), strides stride_s* (0 where it
    broadcasts), joined into each row's softmax before it is normalised; the LSE includes it."""
    dtype: gl.constexpr = desc_q.dtype
    k_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    v_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, VALUE_DIM], dtype)
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_MW, HEAD_DIM], dtype)
    out_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_MW, VALUE_DIM], dtype)

    # With two Q slots per consumer the loader fetches the next tile's queries while the consumers finish this one.
    # One output slot per consumer (used where TMA_STORE); at head_dim 128 all of it is 224 KiB of the 227 a program
    # may have.
    q_smem = gl.allocate_shared_memory(dtype, [Q_SLOTS * CONSUMERS, BLOCK_MW, HEAD_DIM], q_layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_layout)
    q_tail_smem = _tail_tiles(dtype, Q_SLOTS * CONSUMERS, BLOCK_MW, HEAD_DIM_TAIL, q_smem)
    k_tail_smem = _tail_tiles(dtype, STAGES, BLOCK_N, HEAD_DIM_TAIL, k_smem)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, VALUE_DIM], v_layout)
    v_tail_smem = _tail_tiles(dtype, STAGES, BLOCK_N, VALUE_DIM_TAIL, v_smem)
    o_smem = q_smem  # never written where the consumers store by pointer
    o_tail_smem = q_smem
    if TMA_STORE:
        o_smem = gl.allocate_shared_memory(dtype, [CONSUMERS, BLOCK_MW, VALUE_DIM], out_layout)
        o_tail_smem = _tail_tiles(dtype, CONSUMERS, BLOCK_MW, VALUE_DIM_TAIL, q_smem)
    tile_ids = gl.allocate_shared_memory(gl.int32, [Q_SLOTS, 1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
    q_ready = gl.allocate_shared_memory(gl.int64, [Q_SLOTS * CONSUMERS, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [Q_SLOTS * CONSUMERS, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(Q_SLOTS * CONSUMERS):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=CONSUMERS)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(v_empty.index(i), count=CONSUMERS)

    descs = (desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_o, desc_o_tail)
    buffers = (q_smem, q_tail_smem, k_smem, k_tail_smem, v_smem, v_tail_smem, o_smem, o_tail_smem, tile_ids, q_ready,
               q_empty, k_ready, k_empty, v_ready, v_empty)
    sizes = (Sq, Skv, H, GROUP, gl.cdiv(Sq, CONSUMERS * BLOCK_MW), n_tiles, HEADS_PER_SECTION)
    strides = (stride_ob, stride_om, stride_oh, stride_kmb, (stride_sb, stride_sh, stride_sm))
    gl.warp_specialize([
        (_consumer, (descs, Out, LSE, KeyMask, KeyRange, Sinks, TileCounter, buffers, sizes, strides, qk_scale,
                     HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_MW, BLOCK_N, STAGES, IS_CAUSAL,
                     HAS_KEY_MASK, TMA_STORE, Q_SLOTS, HAS_SINKS, 0)),
        (_consumer, (descs, Out, LSE, KeyMask, KeyRange, Sinks, TileCounter, buffers, sizes, strides, qk_scale,
                     HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_MW, BLOCK_N, STAGES, IS_CAUSAL,
                     HAS_KEY_MASK, TMA_STORE, Q_SLOTS, HAS_SINKS, 1)),
        (_loader, (descs, Out, LSE, KeyMask, KeyRange, Sinks, TileCounter, buffers, sizes, strides, qk_scale,
                   HEAD_DIM, HEAD_DIM_TAIL, VALUE_DIM, VALUE_DIM_TAIL, BLOCK_MW, BLOCK_N, STAGES, IS_CAUSAL,
                   HAS_KEY_MASK, TMA_STORE, Q_SLOTS, HAS_SINKS, 0))],
        [4, 1], [CONSUMER_REGS, 24])
