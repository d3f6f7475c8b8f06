"""Forward kernel against the float64 oracle over the feature grid."""
import functools
import math
from typing import Optional

import pytest
import torch
from triton.compiler.errors import CompilationError
from conftest import DEVICE, DTYPES, ON_GPU
from helpers import (LONG_ROWS, SKIP_WITHOUT_GLUON, assert_close_to_reference, count_calls, count_descriptors,
                     fail_gluon_launch, gluon_forward_calls, hopper_with_gluon, inputs_with_unused_nan_keys, max_err,
                     qkv_in_layout, random_qkv, reference_pair, take_gluon_as_at)

from hf_triton_attn import attention, attention_bshd, configs, kept_key_ranges, ops

HEAD_GROUPS = [(4, 4), (4, 2), (4, 1)]
SEQLENS = [(1, 67), (3, 130), (37, 37), (64, 100), (100, 64)]


def check_forward(q, k, v, **kwargs):
    out = attention(q, k, v, **kwargs)
    ref64, same = reference_pair(q, k, v, **kwargs)
    assert_close_to_reference(out, ref64, same)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlens", SEQLENS)
@pytest.mark.parametrize("heads", HEAD_GROUPS)
@pytest.mark.parametrize("causal", [False, True])
def test_shapes_gqa_causal(dtype, seqlens, heads, causal):
    q, k, v = random_qkv(2, *heads, *seqlens, 40, dtype, DEVICE)
    check_forward(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [16, 32, 40, 64, 80, 96, 128, 192, 256, 320, 512])
def test_head_dims(dtype, head_dim):
    q, k, v = random_qkv(1, 2, 1, 33, 47, head_dim, dtype, DEVICE)
    check_forward(q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim, value_dim", [(80, 80), (40, 96)])
def test_value_head_dim_in_two_tiles(monkeypatch, dtype, head_dim, value_dim):
    """v and the output in two tiles (configs.value_dim_tiles: 64 + 16 and 64 + 32 columns) with what touches both
    accumulators: attention sinks (their rescale), padding query rows (seqused_q: both tiles zeroed), a key mask and
    GQA, against the oracle."""
    launched = []

    def recording(grid, *args, _launch=ops._launch_fwd, **kwargs):
        launched.append((kwargs["BLOCK_DV"], kwargs["BLOCK_DV_TAIL"]))
        return _launch(grid, *args, **kwargs)
    monkeypatch.setattr(ops, "_launch_fwd", recording)
    q, k, _ = random_qkv(2, 4, 2, 37, 45, head_dim, dtype, DEVICE)
    v = torch.randn(2, 2, 45, value_dim, device=DEVICE, dtype=dtype)
    sinks = torch.randn(4, device=DEVICE, dtype=torch.float32) * 2
    seqused_q = torch.tensor([37, 30], device=DEVICE, dtype=torch.int32)
    out = check_forward(q, k, v, causal=True, attention_mask=padding_mask("left", 2, 45), sinks=sinks,
                        seqused_q=seqused_q)
    assert out[1, :, 30:].abs().max() == 0
    assert launched == [{80: (64, 16), 96: (64, 32)}[value_dim]]


def test_value_dim_tiles_split_only_where_it_ran_on_a_gpu():
    """v's tiles: q/k's two tiles at 80, 96 and 192 (whole tiles, what ran split on a GPU); otherwise one padded tile
    (40's partial tail failed on an H200; 48, 144, 160 never ran split there)."""
    assert [configs.value_dim_tiles(d) for d in (16, 40, 48, 64, 80, 96, 112, 144, 160, 192, 200, 256, 320)] == [
        (16, 0), (64, 0), (64, 0), (64, 0), (64, 16), (64, 32), (128, 0), (256, 0), (256, 0), (128, 64), (256, 0),
        (256, 0), (512, 0)]
    for value_dim in configs.VALUE_DIM_SPLITS:  # two tiles that cover v exactly
        block_dv, tail = configs.value_dim_tiles(value_dim)
        assert tail and block_dv + tail == value_dim


def test_head_dim_tiles_cover_the_head_dim_with_fewer_columns():
    """The Triton kernels' q/k tiles: one power of two, or two whose sum covers the head dim with fewer columns than
    the padded one tile (the cases that take a tail run in test_head_dims: 40, 80, 96, 192, 320)."""
    assert [configs.head_dim_tiles(d) for d in (40, 80, 96, 112, 128, 160, 192, 200, 320)] == [
        (32, 16), (64, 16), (64, 32), (128, 0), (128, 0), (128, 32), (128, 64), (256, 0), (256, 64)]
    for head_dim in range(1, 513):
        block_d, tail = configs.head_dim_tiles(head_dim)
        padded = configs.padded_head_dim(head_dim)
        if tail:
            assert block_d < head_dim <= block_d + tail < padded and tail >= 16
        else:
            assert block_d == padded


@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dim_tail_with_softcap_scale_and_masks(dtype):
    """A head dim taken in two tiles (96: 64 + 32) where the scores are scaled in the kernel rather than in the
    exponent (softcap, a negative scale) and under key-padding and dense masks."""
    q, k, v = random_qkv(2, 4, 2, 33, 45, 96, dtype, DEVICE)
    check_forward(q, k, v, causal=True, softcap=2.5, scale=0.3, attention_mask=padding_mask("left", 2, 45))
    check_forward(q, k, v, scale=-0.2, attention_mask=torch.rand(2, 1, 33, 45, device=DEVICE) > 0.3)


def padding_mask(kind: str, batch: int, seqlen: int, min_length: int = 1) -> torch.Tensor:
    lengths = torch.randint(min_length, seqlen, (batch,))
    positions = torch.arange(seqlen)
    if kind == "right":
        mask = positions[None, :] < lengths[:, None]
    elif kind == "left":
        mask = positions[None, :] >= (seqlen - lengths)[:, None]
    elif kind == "one_hole":  # right padding and one dropped key inside the run: the kernels' run test must see it
        mask = positions[None, :] < lengths[:, None]
        mask[torch.arange(batch), (torch.rand(batch) * lengths).long()] = False
    else:  # holes anywhere, as custom masks may have
        mask = torch.rand(batch, seqlen) > 0.4
    return mask.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["left", "right", "holes", "one_hole"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(45, 45), (7, 90)])
def test_key_padding(dtype, kind, causal, seqlens):
    q, k, v = random_qkv(3, 4, 2, *seqlens, 32, dtype, DEVICE)
    check_forward(q, k, v, causal=causal, attention_mask=padding_mask(kind, 3, seqlens[1]))


def kept_ranges_mask(ranges, seqlen: int) -> torch.Tensor:
    """A (len(ranges), seqlen) key mask keeping keys [start, end) of each row: padding on both sides."""
    mask = torch.zeros(len(ranges), seqlen, dtype=torch.bool)
    for row, (start, end) in enumerate(ranges):
        mask[row, start:end] = True
    return mask.to(DEVICE)


# Kept ranges that leave whole key blocks of padding on either side, a single kept key at either end, and a row
# that keeps nothing; the long case needs more than one pass of the kernels' kept-range scan (1024 keys).
PADDING_CASES = [
    ((40, 130), [(70, 75), (0, 1), (129, 130), (0, 0)]),
    ((17, 1100), [(1030, 1050), (5, 1070)]),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens, ranges", PADDING_CASES)
def test_padding_blocks_skipped_exactly(causal, seqlens, ranges):
    q, k, v = random_qkv(len(ranges), 2, 1, *seqlens, 16, torch.float32, DEVICE)
    check_forward(q, k, v, causal=causal, attention_mask=kept_ranges_mask(ranges, seqlens[1]))


@pytest.mark.parametrize("with_seqused", [False, True])
def test_key_ranges(with_seqused):
    """kept_key_ranges, the per-row summary the attention kernels read instead of scanning the key mask: first kept
    key, last + 1, and whether every key in between is kept, among the keys in use. Rows span several of the
    kernel's 1024-key chunks; they keep nothing, everything, one run, or keys with holes."""
    seqlen = 2500
    positions = torch.arange(seqlen)
    mask = torch.zeros(6, seqlen, dtype=torch.bool)
    mask[1] = True
    mask[2, 700:2100] = True
    mask[3] = torch.rand(seqlen) > 0.5
    mask[4, 1030:1040] = True
    mask[4, 2400] = True
    mask[5, 3] = True
    seqused = torch.tensor([2500, 1500, 2500, 2000, 1041, 0]) if with_seqused else torch.full((6,), seqlen)
    got = kept_key_ranges(mask.to(DEVICE), seqused.to(DEVICE, torch.int32) if with_seqused else None).cpu()
    for row in range(6):
        kept = positions[mask[row] & (positions < seqused[row])]
        if len(kept) == 0:
            assert got[row, 0] >= got[row, 1], row
            continue
        first, end = int(kept[0]), int(kept[-1]) + 1
        assert got[row].tolist() == [first, end, int(len(kept) == end - first)], row


@pytest.mark.parametrize("kind", ["left", "right", "holes"])
@pytest.mark.parametrize("with_seqused", [False, True])
def test_kept_key_ranges_given_once_for_several_calls(monkeypatch, kind, with_seqused):
    """Ranges computed once and passed to every call that shares the mask (as a model's layers do): no launch of
    their own, and the same output as a call that computes them."""
    q, k, v = random_qkv(3, 4, 2, 40, 90, 32, torch.float16, DEVICE)
    key_mask = padding_mask(kind, 3, 90)
    seqused = torch.tensor([90, 61, 40], device=DEVICE, dtype=torch.int32) if with_seqused else None
    ranges = kept_key_ranges(key_mask, seqused)
    launches = count_calls(monkeypatch, ops, "_launch_key_ranges")
    for causal in (False, True):
        kwargs = dict(causal=causal, attention_mask=key_mask, seqused_k=seqused)
        given = attention(q, k, v, kept_key_ranges=ranges, **kwargs)
        assert not launches
        assert_close_to_reference(given, *reference_pair(q, k, v, **kwargs))
        computed = attention(q, k, v, **kwargs)
        assert len(launches) == 1
        launches.clear()
        assert torch.equal(given, computed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_shape", [(2, 1, 29, 53), (1, 4, 29, 53), (2, 4, 29, 53)])
@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_dense_masks(dtype, mask_shape, mask_kind):
    q, k, v = random_qkv(2, 4, 2, 29, 53, 32, dtype, DEVICE)
    if mask_kind == "bool":
        mask = torch.rand(mask_shape, device=DEVICE) > 0.3
    else:
        mask = torch.randn(mask_shape, device=DEVICE, dtype=dtype)
        mask[torch.rand(mask_shape, device=DEVICE) < 0.2] = float("-inf")
    check_forward(q, k, v, attention_mask=mask)


STRUCTURED_KINDS = ["sliding", "packed", "band_with_empty_rows", "window_with_holes"]


def structured_mask(kind: str, batch: int, heads: int, seqlen_q: int, seqlen_k: int) -> torch.Tensor:
    """(batch, heads, Sq, Skv) boolean masks whose visible keys form bands, so that most key blocks (and, per key,
    most query blocks) are hidden from whole tiles, and, in the wider bands, whole tiles see every key of some
    blocks: what the kernels skip, and compute without the mask, through the mask's spans and clear runs.

    - sliding: causal sliding windows (bottom-right aligned), a different width per head and batch row;
    - packed: causal attention within segments of different lengths per row (packed sequences);
    - band_with_empty_rows: a band far from the diagonal, and rows of queries that see nothing;
    - window_with_holes: sliding windows where a few query rows lose one key inside theirs (visible spans that
      are not clear runs)."""
    q_pos = torch.arange(seqlen_q)[:, None] + (seqlen_k - seqlen_q)
    kv = torch.arange(seqlen_k)[None, :]
    masks = []
    for b in range(batch):
        per_head = []
        for h in range(heads):
            if kind == "sliding":
                window = 5 + 60 * h + 40 * b
                mask = (kv <= q_pos) & (kv > q_pos - window)
            elif kind == "packed":
                bounds = torch.tensor([0, 23 + 9 * b, 70 + 5 * h, seqlen_k])
                segment = torch.bucketize(torch.arange(seqlen_k), bounds[1:], right=True)
                mask = (segment[q_pos.clamp(0, seqlen_k - 1)] == segment[kv]) & (kv <= q_pos)
            elif kind == "band_with_empty_rows":
                mask = (kv >= q_pos // 2 + 30 + 4 * h) & (kv < q_pos // 2 + 45 + 45 * h)
                mask[(torch.arange(seqlen_q) % 37) < 9 + b] = False
            else:
                mask = (kv <= q_pos) & (kv > q_pos - 70 - 30 * h)
                holed = (torch.arange(seqlen_q)[:, None] % 41 == 3 + b) & (kv == q_pos - 7)
                mask &= ~holed
            per_head.append(mask)
        masks.append(torch.stack(per_head))
    return torch.stack(masks).to(DEVICE)


def additive_mask(mask: torch.Tensor, kind: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The boolean ``mask`` as an additive one (-inf where it hides): "random" adds a random bias everywhere it
    shows, "zeros" adds 0 there, except a small bias on one visible key of a few rows (those rows have visible
    spans but no clear run: the mask changes their scores)."""
    if kind == "random":
        return torch.randn(mask.shape, device=DEVICE, dtype=dtype).masked_fill(~mask, float("-inf"))
    additive = torch.zeros(mask.shape, device=DEVICE, dtype=dtype)
    rows = torch.arange(mask.shape[-2], device=DEVICE)
    biased = (rows % 29 == 5)[:, None] & (mask.cumsum(-1) == 2)
    return additive.masked_fill(biased, -1.5).masked_fill(~mask, float("-inf"))


@pytest.mark.parametrize("kind", STRUCTURED_KINDS)
@pytest.mark.parametrize("by_key", [False, True])
@pytest.mark.parametrize("mask_kind", ["bool", "random", "zeros"])
def test_visible_spans(kind, by_key, mask_kind):
    """What the kernels read instead of walking every key block of a dense mask: per row, the first visible column
    and last + 1, (C, 0) for a row that sees nothing, then the clear run (the same span if the mask passes all of
    it through unchanged, else (C, 0)); per key (by_key), spans united and clear runs intersected over each kv
    head's 2 heads."""
    mask = structured_mask(kind, 2, 4, 130, 150)
    visible = mask
    passes = mask
    if mask_kind != "bool":
        mask = additive_mask(mask, mask_kind)
        visible = mask != float("-inf")
        passes = mask == 0
    spans, stride_b, stride_h, stride_r = ops._visible_spans_of(mask, by_key=by_key, group=2)
    if by_key:
        visible, passes = (t.transpose(-1, -2).reshape(2, 2, 2, 150, 130) for t in (visible, passes))
    columns = visible.shape[-1]
    positions = torch.arange(columns, device=DEVICE)
    first = torch.where(visible, positions, columns).amin(-1)
    end = torch.where(visible, positions + 1, 0).amax(-1)
    clear = (passes.sum(-1) == end - first) & (end > first)
    clear_first, clear_end = torch.where(clear, first, columns), torch.where(clear, end, 0)
    if by_key:
        first, end, clear_first, clear_end = first.amin(2), end.amax(2), clear_first.amax(2), clear_end.amin(2)
    assert torch.equal(spans, torch.stack((first, end, clear_first, clear_end), -1).to(torch.int32))
    assert (stride_b, stride_h, stride_r) == spans.stride()[:3]
    one_head = ops._visible_spans_of(mask[:1, :1], by_key=by_key, group=2)
    assert one_head[1:] == (0, 0, 4)  # broadcast dimensions get stride 0, as the mask's


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", STRUCTURED_KINDS)
@pytest.mark.parametrize("mask_heads", [1, 2])
def test_structured_dense_masks(dtype, kind, mask_heads):
    """Dense masks that hide whole tiles, or show them every key of a block: the blocks outside each tile's span
    are skipped, those inside every row's clear run computed without the mask, with unchanged results."""
    q, k, v = random_qkv(2, 2, 1, 130, 150, 32, dtype, DEVICE)
    mask = structured_mask(kind, 2, mask_heads, 130, 150)
    check_forward(q, k, v, attention_mask=mask)
    for additive_kind in ("random", "zeros"):
        check_forward(q, k, v, attention_mask=additive_mask(mask, additive_kind, dtype))


def test_dense_mask_and_causal_combine():
    q, k, v = random_qkv(2, 2, 2, 40, 40, 16, torch.float32, DEVICE)
    check_forward(q, k, v, causal=True, attention_mask=torch.rand(2, 1, 40, 40, device=DEVICE) > 0.2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows_give_zeros(dtype):
    q, k, v = random_qkv(2, 2, 1, 20, 20, 32, dtype, DEVICE)
    key_mask = torch.ones(2, 20, dtype=torch.bool, device=DEVICE)
    key_mask[1] = False
    out = attention(q, k, v, attention_mask=key_mask)
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0
    dense = torch.rand(2, 1, 20, 20, device=DEVICE) > 0.5
    dense[:, :, 3] = False
    out = attention(q, k, v, attention_mask=dense)
    assert torch.isfinite(out).all() and out[:, :, 3].abs().max() == 0
    # More queries than keys with causal alignment bottom-right: the first queries see nothing.
    q, k, v = random_qkv(1, 2, 2, 30, 10, 32, dtype, DEVICE)
    out = check_forward(q, k, v, causal=True)
    assert out[:, :, :20].abs().max() == 0


def test_very_negative_scores_after_a_fully_masked_block():
    """The running max must stay -inf across masked blocks, or later exp2(score - max) underflows to 0."""
    q, k, v = random_qkv(2, 2, 2, 16, 96, 32, torch.float32, DEVICE)
    mask = torch.full((2, 1, 16, 96), -500.0, device=DEVICE)
    mask[..., :40] = float("-inf")
    check_forward(q, k, v, attention_mask=mask)


@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seqlen_q", [1, 16])  # the split-KV kernel and the forward kernel
def test_lowest_float_in_an_additive_mask_masks_like_minus_inf(mask_dtype, seqlen_q):
    """The lowest float32 or bfloat16 (what Transformers' eager masks hold where they hide a key) masks as -inf does:
    a row it hides entirely returns zeros with zero gradients (eager attention would average v there), the other
    rows match the oracle given -inf in its place."""
    q, k, v = random_qkv(2, 2, 2, seqlen_q, 40, 32, torch.float32, DEVICE, requires_grad=True)
    lowest = torch.finfo(mask_dtype).min
    mask = torch.zeros(2, 1, seqlen_q, 40, device=DEVICE, dtype=mask_dtype)
    mask[0, :, :, 10:] = lowest
    mask[1] = lowest
    out = attention(q, k, v, attention_mask=mask)
    ref64, same = reference_pair(q, k, v, attention_mask=mask.float().masked_fill(mask == lowest, float("-inf")))
    assert_close_to_reference(out, ref64, same)
    assert not out[1].any()
    grad_q, grad_k, grad_v = torch.autograd.grad(out.sum(), (q, k, v))
    assert not grad_q[1].any() and not grad_k[1].any() and not grad_v[1].any() and grad_v[0].any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ramp", ["growing", "shrinking", "steps"])
def test_row_maxima_moving_along_the_keys(dtype, ramp):
    """Scores whose row maxima grow from key block to key block, by small steps or by large jumps, or
    shrink: the online softmax's rescaling of the running sums must not show in the result."""
    q, k, v = random_qkv(2, 2, 1, 40, 640, 64, dtype, DEVICE)
    positions = torch.arange(640, device=DEVICE, dtype=torch.float32)
    if ramp == "growing":
        gain = 0.5 + positions / 100
    elif ramp == "shrinking":
        gain = 6.9 - positions / 100
    else:  # flat runs of several blocks, then a jump
        gain = 1.0 + 2.0 * (positions // 200)
    k = (k.float() * gain[:, None]).to(dtype)
    q = (q.float() * 2.0).to(dtype)
    check_forward(q, k, v)


@pytest.mark.parametrize("causal", [False, True])
def test_seqused_k(causal):
    q, k, v = random_qkv(3, 4, 2, 5, 64, 32, torch.float32, DEVICE)
    seqused = torch.tensor([64, 17, 5], device=DEVICE, dtype=torch.int32)
    check_forward(q, k, v, causal=causal, seqused_k=seqused)
    key_mask = padding_mask("left", 3, 64)
    check_forward(q, k, v, causal=causal, seqused_k=seqused, attention_mask=key_mask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(45, 45), (7, 90), (130, 70)])
@pytest.mark.parametrize("mask", ["none", "right", "holes", "dense"])
def test_seqused_q(dtype, causal, seqlens, mask):
    """Query rows from seqused_q[b] on are padding: exactly zero; the other rows as the oracle gives them."""
    seqlen_q, seqlen_k = seqlens
    q, k, v = random_qkv(4, 4, 2, seqlen_q, seqlen_k, 32, dtype, DEVICE)
    seqused_q = torch.tensor([seqlen_q, 0, seqlen_q // 2 + 1, seqlen_q + 5], device=DEVICE, dtype=torch.int32)
    kwargs = dict(causal=causal, seqused_q=seqused_q)
    if mask == "dense":
        kwargs["attention_mask"] = structured_mask("sliding", 4, 1, seqlen_q, seqlen_k)
    elif mask != "none":
        kwargs["attention_mask"] = padding_mask(mask, 4, seqlen_k)
    out = check_forward(q, k, v, **kwargs)
    assert not out[1].any() and not out[2, :, seqlen_q // 2 + 1:].any()


@pytest.mark.parametrize("seqlen_q", [5, 40])  # the split-KV kernel and the forward kernel
def test_strided_seqused_tensors(seqlen_q):
    """Columns of a (B, 2) tensor (stride 2) as seqused_k and seqused_q: the kernels read them as given."""
    q, k, v = random_qkv(3, 2, 2, seqlen_q, 40, 16, torch.float32, DEVICE)
    columns = torch.tensor([[40, seqlen_q], [17, 0], [9, seqlen_q // 2]], device=DEVICE, dtype=torch.int32)
    check_forward(q, k, v, causal=True, seqused_k=columns[:, 0])
    check_forward(q, k, v, causal=True, seqused_k=columns[:, 0], attention_mask=padding_mask("right", 3, 40))
    check_forward(q, k, v, seqused_q=columns[:, 1])
    mask = padding_mask("left", 3, 40)
    assert kept_key_ranges(mask, columns[:, 0]).equal(kept_key_ranges(mask, columns[:, 0].contiguous()))


@pytest.mark.parametrize("seqlen_q", [1, 40])  # the split-KV kernel and the forward kernel
@pytest.mark.parametrize("mask", [None, "left"])
def test_seqused_as_int64(seqlen_q, mask):
    """seqused_k and seqused_q as int64 (allowed, as int32 is), in float16 at a power-of-two head dim, whose tiles
    load through tensor descriptors (which refuse the 64-bit offsets an int64 length would make): the oracle's
    output, and the same output and gradients as with int32."""
    q, k, v = random_qkv(3, 4, 2, seqlen_q, 40, 32, torch.float16, DEVICE, requires_grad=True)
    grad_out = torch.randn_like(q)
    attention_mask = None if mask is None else padding_mask(mask, 3, 40)
    results = []
    for dtype in (torch.int64, torch.int32):
        kwargs = dict(causal=True, attention_mask=attention_mask,
                      seqused_k=torch.tensor([40, 17, 9], device=DEVICE, dtype=dtype))
        if seqlen_q > 1:
            kwargs["seqused_q"] = torch.tensor([40, 0, 20], device=DEVICE, dtype=dtype)
        out = check_forward(q, k, v, **kwargs)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad_out)))
    for int64_result, int32_result in zip(*results):
        assert torch.equal(int64_result, int32_result)


def test_seqused_q_takes_the_forward_kernel_for_short_queries(monkeypatch):
    """The split-KV kernel would compute padding rows: a call with seqused_q takes the forward kernel."""
    q, k, v = random_qkv(2, 4, 2, 1, 90, 32, torch.float32, DEVICE)
    monkeypatch.setattr(ops, "_launch_fwd_split", lambda *args, **kwargs: pytest.fail("took the split-KV kernel"))
    check_forward(q, k, v, causal=True, seqused_q=torch.tensor([1, 0], device=DEVICE, dtype=torch.int32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softcap_and_scale(dtype):
    q, k, v = random_qkv(2, 4, 2, 33, 33, 32, dtype, DEVICE)
    check_forward(q, k, v, causal=True, softcap=2.5, scale=0.3)
    check_forward(q, k, v, scale=1.0)
    check_forward(q, k, v, causal=True, scale=-0.2)  # a negative scale cannot be folded into the exponent


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # float16: tensor-descriptor loads where allowed
@pytest.mark.parametrize("layout", ["bshd", "strided_heads", "sliced_head_dim"])
def test_non_contiguous_inputs(layout, dtype):
    batch, heads, kv_heads, seqlen, head_dim = 2, 4, 2, 37, 32
    randn = functools.partial(torch.randn, device=DEVICE, dtype=dtype)
    if layout == "bshd":  # what Transformers passes: (B, S, H, D) storage viewed as (B, H, S, D)
        q = randn(batch, seqlen, heads, head_dim).transpose(1, 2)
        k = randn(batch, seqlen, kv_heads, head_dim).transpose(1, 2)
        v = randn(batch, seqlen, kv_heads, head_dim).transpose(1, 2)
    elif layout == "strided_heads":  # every other head of a larger tensor
        q = randn(batch, 2 * heads, seqlen, head_dim)[:, ::2]
        k = randn(batch, 2 * kv_heads, seqlen, head_dim)[:, 1::2]
        v = randn(batch, 2 * kv_heads, seqlen, head_dim)[:, ::2]
    else:  # a head_dim slice of a fused qkv projection, last stride 1 but rows strided
        fused = randn(batch, heads, seqlen, 3 * head_dim)
        q = fused[..., :head_dim]
        k, v = fused[:, :kv_heads, :, head_dim:2 * head_dim], fused[:, :kv_heads, :, 2 * head_dim:]
    assert not (q.is_contiguous() and k.is_contiguous() and v.is_contiguous())
    check_forward(q, k, v, causal=True)


@pytest.mark.parametrize("seqlen_q", [1, 37])  # the split-KV (decoding) kernel and the forward kernel
def test_attention_bshd_is_attention_in_the_bshd_layout(seqlen_q):
    q, k, v = random_qkv(2, 4, 2, seqlen_q, 45, 32, torch.float32, DEVICE)
    out = attention_bshd(q, k, v, causal=True)
    assert out.shape == (2, seqlen_q, 4, 32) and out.is_contiguous()
    assert torch.equal(out, attention(q, k, v, causal=True).transpose(1, 2))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlen_q, use_tma", [(37, False), (37, True), (1, False)],
                         ids=["forward-pointers", "forward-descriptors", "split-kv"])
def test_tensor_descriptor_and_pointer_loads(monkeypatch, seqlen_q, use_tma, causal):
    """Both ways of loading tiles give the oracle's answer in the forward kernel, and so do the split-KV
    (decoding) kernel's pointer loads, including where the keys in use end inside a block whose unused rows hold
    NaN (a descriptor loads them; they must not reach the output)."""
    if use_tma and not ops.INTERPRET and not configs.forward_uses_tma(128, 2, False):
        pytest.skip("no tensor-descriptor loads on this GPU configuration")
    head_dim = 32 if ops.INTERPRET else 128
    monkeypatch.setattr(configs, "forward_uses_tma", lambda *args: use_tma)
    descriptors = count_descriptors(monkeypatch, ops)
    q, k, v, seqused = inputs_with_unused_nan_keys(seqlen_q, head_dim, DEVICE)
    out = attention(q, k, v, causal=causal, seqused_k=seqused)
    assert ops._takes_split_kv(seqlen_q, 2, 70, 0.0) == (seqlen_q == 1)
    assert len(descriptors) == (3 if use_tma else 0)
    for b in range(2):
        used = int(seqused[b])
        sub = [t[b:b + 1, :, :used] if t is not q else t[b:b + 1] for t in (q, k, v)]
        ref64, same = reference_pair(*sub, causal=causal)
        assert_close_to_reference(out[b:b + 1], ref64, same)


def test_tensors_a_descriptor_cannot_describe_take_pointer_loads(monkeypatch):
    """A base that is not 16-byte aligned, or a stride of 0 (an expanded batch), rules descriptors out: the
    forward must then load through pointers, and still be right."""
    monkeypatch.setattr(configs, "forward_uses_tma", lambda *args: True)
    descriptors = count_descriptors(monkeypatch, ops)
    q, k, v = random_qkv(2, 4, 2, 20, 40, 32, torch.float16, DEVICE)
    misaligned_q = torch.randn(2, 4, 20, 33, device=DEVICE, dtype=torch.float16)[..., 1:]
    misaligned_q.copy_(q)
    expanded_k = k[:1].expand(2, -1, -1, -1)
    for inputs in ((misaligned_q, k, v), (q, expanded_k, v)):
        assert not ops._tma_compatible(*inputs)
        check_forward(*inputs, causal=True)
    assert descriptors == []
    check_forward(q, k, v, causal=True)
    assert len(descriptors) == 3


def test_output_layout_is_transformers_layout():
    q, k, v = random_qkv(2, 4, 2, 9, 9, 16, torch.float32, DEVICE)
    out = attention(q, k, v)
    assert out.shape == q.shape
    assert out.transpose(1, 2).is_contiguous()


def test_deterministic():
    q, k, v = random_qkv(2, 4, 2, 50, 70, 32, torch.float32, DEVICE)
    mask = padding_mask("holes", 2, 70)
    first = attention(q, k, v, causal=True, attention_mask=mask)
    assert torch.equal(first, attention(q, k, v, causal=True, attention_mask=mask))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(0, 5), (5, 0), (0, 0)], ids=["no-queries", "no-keys", "neither"])
@pytest.mark.parametrize("mask", [None, "key", "dense"])
def test_empty_inputs(dtype, seqlen_q, seqlen_k, mask):
    """No queries, or no keys (cross-attention over an empty context): the output has the right shape, rows with no
    key are zeros, and so are the gradients, in 16-bit too (whose power-of-two head dims load through tensor
    descriptors, which cannot describe an empty tensor)."""
    q, k, v = random_qkv(2, 4, 2, seqlen_q, seqlen_k, 64, dtype, DEVICE, requires_grad=True)
    attention_mask = {None: None, "key": torch.ones(2, seqlen_k, dtype=torch.bool, device=DEVICE),
                      "dense": torch.ones(2, 1, seqlen_q, seqlen_k, dtype=torch.bool, device=DEVICE)}[mask]
    for causal in (False, True):
        out = attention(q, k, v, causal=causal, attention_mask=attention_mask)
        assert out.shape == (2, 4, seqlen_q, 64) and not out.any()
        out.sum().backward()
        assert all(t.grad.shape == t.shape and not t.grad.any() for t in (q, k, v))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 16, 4, 1024, 1024, 128), (1, 8, 8, 777, 2049, 64), (2, 4, 2, 512, 512, 256),
                                   (4, 12, 12, 300, 300, 96), (8, 32, 8, 1, 4099, 128)])
def test_large_shapes_gpu(dtype, causal, shape):
    q, k, v = random_qkv(*shape, dtype, DEVICE)
    check_forward(q, k, v, causal=causal)


def launch_config_mask(mask_kind: str, batch: int, seqlen: int) -> Optional[torch.Tensor]:
    """The masks the launch-configuration tests run each configuration with: "none", "key" (right padding) or
    "dense" (a sliding window)."""
    if mask_kind == "key":
        return padding_mask("right", batch, seqlen)
    if mask_kind == "dense":
        return structured_mask("sliding", batch, 1, seqlen, seqlen)
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128, 256, 512])
@pytest.mark.parametrize("seqlen", [1000, 2100])
@pytest.mark.parametrize("mask_kind", ["none", "key", "dense"])
def test_forward_launch_configs_gpu(dtype, head_dim, seqlen, mask_kind):
    """Every forward launch configuration the GPU picks for 16-bit inputs (per head dim, descriptors or pointers,
    and for causal rows of at most 2048 keys their own tiles) with no mask, a key-padding mask and a dense one."""
    tma = configs.forward_uses_tma(head_dim, 2, False)
    short, long = (configs.forward_config(head_dim, True, 2, False, tma, False, False, skv) for skv in (seqlen, 4096))
    assert (short != long) == (head_dim == 128 and seqlen <= 2048)
    q, k, v = random_qkv(2, 4, 2, seqlen, seqlen, head_dim, dtype, DEVICE)
    check_forward(q, k, v, causal=True, attention_mask=launch_config_mask(mask_kind, 2, seqlen))
    if mask_kind == "none":
        check_forward(q, k, v, causal=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 32, 8, 1, 1024, 128), (2, 8, 8, 1, 70000, 64), (3, 16, 2, 4, 3000, 256),
                                   (1, 32, 4, 8, 5000, 128), (40, 4, 1, 1, 777, 96), (80, 8, 1, 1, 3000, 64),
                                   (2, 16, 2, 4, 3000, 512)])
def test_split_kv_plans_gpu(dtype, shape):
    """Decoding shapes across the split-KV plans: one split or many, half-width key blocks on short splits,
    head dims whose blocks narrow to fit shared memory (256, and float32), up to 64 packed rows; with a
    key-padding mask and per-row cache lengths."""
    batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim = shape
    assert ops._takes_split_kv(seqlen_q, heads // kv_heads, seqlen_k, 0.0)
    q, k, v = random_qkv(*shape, dtype, DEVICE)
    check_forward(q, k, v, causal=True)
    keep = torch.rand(batch, seqlen_k, device=DEVICE) > 0.3
    keep[:, -1] = True
    seqused = torch.randint(seqlen_k // 2, seqlen_k + 1, (batch,), device=DEVICE, dtype=torch.int32)
    check_forward(q, k, v, causal=True, attention_mask=keep)
    for b in range(batch):
        out = attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], causal=True, seqused_k=seqused[b:b + 1])
        used = int(seqused[b])
        ref64, same = reference_pair(q[b:b + 1], k[b:b + 1, :, :used], v[b:b + 1, :, :used], causal=True)
        assert_close_to_reference(out, ref64, same)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlen_q", [1, 3])
@pytest.mark.parametrize("mask_kind", ["window", "per_head", "additive"])
def test_split_kv_dense_masks(monkeypatch, dtype, seqlen_q, mask_kind):
    """Decoding with a dense mask (a sliding-window layer's, a per-head one with rows that see nothing, an additive
    one) takes the split-KV kernel, which reads it per packed row (each row's own head and query) and skips the
    key blocks outside the span its rows see; it must match the oracle."""
    monkeypatch.setattr(ops, "_launch_fwd", lambda *args, **kwargs: pytest.fail("took the prefill kernel"))
    batch, heads, kv_heads, seqlen_k = 2, 8, 2, 150
    q, k, v = random_qkv(batch, heads, kv_heads, seqlen_q, seqlen_k, 32, dtype, DEVICE)
    q_pos = torch.arange(seqlen_q, device=DEVICE)[:, None] + seqlen_k - seqlen_q
    keys = torch.arange(seqlen_k, device=DEVICE)
    if mask_kind == "window":
        mask = ((keys <= q_pos) & (keys > q_pos - 40)).expand(batch, 1, seqlen_q, seqlen_k)
    elif mask_kind == "per_head":
        mask = torch.rand(batch, heads, seqlen_q, seqlen_k, device=DEVICE) > 0.6
        mask[0, 3] = False
        mask[1, :, :, :70] = False
    else:
        mask = torch.randn(batch, 1, seqlen_q, seqlen_k, device=DEVICE, dtype=dtype)
        mask = mask.masked_fill(torch.rand(mask.shape, device=DEVICE) < 0.3, float("-inf"))
    assert ops._takes_split_kv(seqlen_q, heads // kv_heads, seqlen_k, 0.0)
    check_forward(q, k, v, attention_mask=mask)
    check_forward(q, k, v, causal=True, attention_mask=mask)


def lse_reference(q, k, key_mask, scale):
    """log2 of each query row's softmax normaliser over its kept keys, in float64; 0 for rows that keep none."""
    k = k.double().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q.double() @ k.transpose(-1, -2) * scale).masked_fill(~key_mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1) / math.log(2)
    return torch.where(key_mask.any(-1)[:, None, None], lse, 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlen_k, merged", [(50, False), (300, True)], ids=["one-split", "several-splits"])
def test_split_kv_single_split_writes_the_output_itself(monkeypatch, dtype, seqlen_k, merged):
    """One split (every key in one program's range: at most 64 keys in the interpreter, one 128-key block on the
    GPU) normalises and writes the output and its log-sum-exp in the split kernel, with no merge launch; several
    splits go through the merge. Both must match the oracle, a row whose key mask keeps nothing included. The call
    counts as captured into a CUDA graph: an eager one on the GPU takes one split at these sizes (see
    test_split_kv_eager_and_captured_plans_gpu)."""
    monkeypatch.setattr(ops, "_capturing", lambda device: True)
    merges = count_calls(monkeypatch, ops, "_launch_combine_splits")
    q, k, v = random_qkv(3, 8, 2, 1, seqlen_k, 32, dtype, DEVICE)
    key_mask = torch.rand(3, seqlen_k, device=DEVICE) > 0.3
    key_mask[2] = False
    scale = 32 ** -0.5
    out, lse = ops.forward_impl(q, k, v, key_mask, None, None, None, None, None, None, True, scale, 0.0, 0.0)
    assert len(merges) == merged
    ref64, same = reference_pair(q, k, v, causal=True, attention_mask=key_mask)
    assert_close_to_reference(out.transpose(1, 2), ref64, same)
    assert out[2].abs().max() == 0
    assert max_err(lse, lse_reference(q, k, key_mask, scale)) < 1e-3


@pytest.mark.parametrize("additive", [False, True])
@pytest.mark.parametrize("seqlen_q", [1, 37])  # the split-KV kernel and the forward kernel
def test_mask_with_one_row_for_every_query(additive, seqlen_q):
    """A (B, 1, 1, Skv) mask, as older encoders (LayoutLM) extend a padding mask themselves, applies to every query
    row, boolean or additive (with -inf and finite entries)."""
    q, k, v = random_qkv(2, 4, 2, seqlen_q, 45, 32, torch.float32, DEVICE)
    keep = torch.rand(2, 1, 1, 45, device=DEVICE) > 0.3
    mask = torch.randn(2, 1, 1, 45, device=DEVICE).masked_fill(~keep, float("-inf")) if additive else keep
    check_forward(q, k, v, attention_mask=mask)
    check_forward(q, k, v, causal=True, attention_mask=mask)


def random_sinks(kind: str, batch: int, heads: int, seqlen_q: int, dtype) -> torch.Tensor:
    """Attention sinks of ``kind`` "head" (one per query head, GPT-OSS's) or "row" (one per query row, Inkling 2's,
    a transposed view read through its strides), head 1's set to -inf (no sink)."""
    if kind == "head":
        sinks = torch.randn(heads, device=DEVICE, dtype=dtype) * 2
        sinks[1] = float("-inf")
        return sinks
    sinks = (torch.randn(batch, seqlen_q, heads, device=DEVICE, dtype=dtype) * 2).transpose(1, 2)
    sinks[:, 1] = float("-inf")
    return sinks


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlen_q, seqlen_k, merged", [(37, 45, False), (1, 50, False), (2, 130, True)],
                         ids=["forward", "split-kv-one-split", "split-kv-several-splits"])
@pytest.mark.parametrize("per_row", [False, True], ids=["sink-per-head", "sink-per-row"])
def test_attention_sinks(monkeypatch, dtype, causal, seqlen_q, seqlen_k, merged, per_row):
    """Attention sinks (a logit joining each row's softmax, with no value), one per query head or one per query row
    (a transposed view: read through its strides), in the forward kernel and in the split-KV kernel with one split
    and with several (the merge joins them). A row whose key mask keeps nothing has only the sink: zero output, and
    an LSE that is the sink's. A -inf sink is no sink. The LSE the backward reads includes the sink. The calls
    count as captured into a CUDA graph, as in test_split_kv_single_split_writes_the_output_itself."""
    monkeypatch.setattr(ops, "_capturing", lambda device: True)
    merges = count_calls(monkeypatch, ops, "_launch_combine_splits")
    q, k, v = random_qkv(3, 4, 2, seqlen_q, seqlen_k, 32, dtype, DEVICE)
    key_mask = torch.rand(3, seqlen_k, device=DEVICE) > 0.3
    key_mask[2] = False
    sinks = random_sinks("row" if per_row else "head", 3, 4, seqlen_q, dtype)
    out = check_forward(q, k, v, causal=causal, attention_mask=key_mask, sinks=sinks)
    assert len(merges) == merged
    assert out[2].abs().max() == 0
    scale = 32 ** -0.5
    sinks_3d = sinks if per_row else sinks[None, :, None]
    _, lse = ops.forward_impl(q, k, v, key_mask, None, None, None, None, None, sinks_3d, causal, scale, 0.0, 0.0)
    plain = ops.forward_impl(q, k, v, key_mask, None, None, None, None, None, None, causal, scale, 0.0, 0.0)[1]
    sink_log2 = sinks_3d.double() / math.log(2)
    expected = torch.logaddexp2(torch.where(key_mask.any(-1)[:, None, None], plain.double(), float("-inf")), sink_log2)
    expected = torch.where(torch.isinf(expected), 0.0, expected)  # nothing at all: no key and a -inf sink
    assert max_err(lse, expected) < 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value_dim", [16, 40], ids=["narrower-value", "wider-value"])
@pytest.mark.parametrize("seqlen_q, seqlen_k, merged", [(1, 50, False), (2, 130, True)],
                         ids=["one-split", "several-splits"])
@pytest.mark.parametrize("with_sinks", [False, True], ids=["no-sinks", "sinks"])
def test_split_kv_reads_value_head_dim(monkeypatch, dtype, value_dim, seqlen_q, seqlen_k, merged, with_sinks):
    """Multi-head latent attention while decoding (v's head dim other than q's and k's, no gradient): the split-KV
    kernel reads v as it is, with one split and merged, with and without sinks, under GQA, a causal mask and a key
    mask, against the oracle; v reaches the kernel uncopied, and the output has v's head dim. The other kernels read
    it the same way (test_autograd's test_value_head_dim_differs_from_query_key)."""
    monkeypatch.setattr(ops, "_capturing", lambda device: True)
    merges = count_calls(monkeypatch, ops, "_launch_combine_splits")
    launched_v = []
    launch = ops._launch_fwd_split
    monkeypatch.setattr(ops, "_launch_fwd_split",
                        lambda grid, *args, **kwargs: launched_v.append(args[2]) or launch(grid, *args, **kwargs))
    q, k, _ = random_qkv(3, 4, 2, seqlen_q, seqlen_k, 24, dtype, DEVICE)
    v = torch.randn(3, 2, seqlen_k, value_dim, device=DEVICE, dtype=dtype)
    key_mask = torch.rand(3, seqlen_k, device=DEVICE) > 0.3
    sinks = random_sinks("head", 3, 4, seqlen_q, dtype) if with_sinks else None
    out = check_forward(q, k, v, causal=True, attention_mask=key_mask, sinks=sinks)
    assert out.shape == (3, 4, seqlen_q, value_dim)
    assert len(launched_v) == 1 and launched_v[0] is v
    assert len(merges) == merged


@pytest.mark.parametrize("interpret", [False, True])
def test_split_kv_plan_takes_one_split_for_short_eager_calls(interpret):
    """A host-bound (eager) call whose programs each hold at most SPLIT_KV_EAGER_SINGLE_BYTES of K and V takes one
    split, and so no merge launch; a longer one, or one captured into a CUDA graph, takes the GPU plan. The
    interpreter keeps its several splits either way, so the CPU tests exercise the merge."""
    def plan(seqlen_k, host_bound):
        return configs.split_kv_plan(4, 8, seqlen_k, 128, 2, 132, interpret, host_bound=host_bound)

    limit = configs.SPLIT_KV_EAGER_SINGLE_BYTES // (2 * 128 * 2)  # keys of K and V at head_dim 128, 16-bit
    for seqlen_k in (300, limit):
        captured, eager = plan(seqlen_k, False), plan(seqlen_k, True)
        assert captured.num_splits > 1
        assert eager.num_splits == (captured.num_splits if interpret else 1)
        assert eager.split_size >= seqlen_k or interpret
    assert plan(limit + 1, True) == plan(limit + 1, False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_kv_eager_and_captured_plans_gpu(monkeypatch, dtype):
    """The same decoding call eagerly (one split, no merge launch) and captured into a CUDA graph (several splits
    and the merge): both match the oracle."""
    q, k, v = random_qkv(1, 32, 8, 1, 1000, 128, dtype, DEVICE)
    merges = count_calls(monkeypatch, ops, "_launch_combine_splits")
    check_forward(q, k, v, causal=True)
    assert merges == []
    capturing = ops._capturing
    monkeypatch.setattr(ops, "_capturing", lambda device: True)
    attention(q, k, v, causal=True)  # compiles the several-split kernels outside the capture
    monkeypatch.setattr(ops, "_capturing", capturing)
    merges.clear()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention(q, k, v, causal=True)
    graph.replay()
    torch.cuda.synchronize()
    assert merges == [1]
    ref64, same = reference_pair(q, k, v, causal=True)
    assert_close_to_reference(out, ref64, same)


@pytest.mark.parametrize("sm_count", [132, 16])
@pytest.mark.parametrize("block_d, itemsize", [(64, 2), (128, 2), (256, 2), (128, 4), (256, 4)])
@pytest.mark.parametrize("programs_per_split", [1, 8, 64, 320])
@pytest.mark.parametrize("seqlen_k", [2, 100, 1024, 4099, 131072])
def test_split_kv_plan_fills_one_wave_and_covers_every_key(seqlen_k, programs_per_split, block_d, itemsize,
                                                           sm_count):
    """The GPU plan: at most one program per multiprocessor (unless one split alone is more), splits of whole
    key blocks that cover the keys with none empty, and 3 stages of K and V blocks within 192 KiB."""
    plan = configs.split_kv_plan(4, programs_per_split, seqlen_k, block_d, itemsize, sm_count, False)
    assert plan.num_splits == 1 or plan.num_splits * programs_per_split <= sm_count
    assert plan.split_size % plan.block_n == 0
    assert (plan.num_splits - 1) * plan.split_size < seqlen_k <= plan.num_splits * plan.split_size
    assert plan.num_stages * 2 * plan.block_n * block_d * itemsize <= 192 * 1024
    assert 32 <= plan.block_n <= 128


@pytest.mark.gpu
def test_padded_large_gpu():
    q, k, v = random_qkv(8, 16, 4, 1000, 1000, 128, torch.bfloat16, DEVICE)
    mask = padding_mask("right", 8, 1000)
    out = check_forward(q, k, v, causal=True, attention_mask=mask)
    assert max_err(out, attention(q, k, v, causal=True, attention_mask=mask)) == 0


def test_hopper_forward_config_applies_only_where_measured():
    """The Gluon forward is Hopper-only and 16-bit: head_dims 80, 96, 128, 192 and 256 from GLUON_MIN_QUERIES
    queries, head_dim 64 from GLUON_D64_MIN_QUERIES, q/k 192 with v 128 (multi-head latent attention) from
    GLUON_MIN_QUERIES; anything else keeps the Triton kernel (other value head dims too), and so does every call in
    the interpreter or on the CPU. Its tiles and output path where measured."""
    hopper = (9, 0)
    for causal in (False, True):
        for head_dim in (80, 96, 128, 192, 256):
            assert configs.hopper_forward_config(head_dim, 2, hopper, configs.GLUON_MIN_QUERIES, causal) is not None
            assert configs.hopper_forward_config(head_dim, 2, hopper, configs.GLUON_MIN_QUERIES - 1, causal) is None
        assert configs.hopper_forward_config(64, 2, hopper, configs.GLUON_D64_MIN_QUERIES, causal) is not None
        assert configs.hopper_forward_config(192, 2, hopper, configs.GLUON_MIN_QUERIES, causal, 128) is not None
        assert configs.hopper_forward_config(128, 2, hopper, configs.GLUON_MIN_QUERIES, causal, 128) is not None
        assert configs.hopper_forward_config(96, 2, hopper, configs.GLUON_MIN_QUERIES, causal, 96) is not None
        for head_dim, value_dim, seqlen_q in [(192, 128, configs.GLUON_MIN_QUERIES - 1), (192, 96, 4096),
                                              (192, 64, 4096), (128, 64, 4096), (64, 128, 16384), (96, 80, 4096),
                                              (112, 112, 4096), (160, 160, 4096)]:
            assert configs.hopper_forward_config(head_dim, 2, hopper, seqlen_q, causal, value_dim) is None
    for head_dim, itemsize, capability, seqlen_q, causal in [
            (32, 2, hopper, 4096, False), (128, 4, hopper, 4096, False), (256, 4, hopper, 4096, True),
            (64, 4, hopper, 16384, False), (128, 2, (8, 0), 4096, False), (128, 2, (10, 0), 4096, True),
            (64, 2, (10, 0), 16384, False), (128, 2, hopper, configs.GLUON_MIN_QUERIES - 1, False),
            (256, 2, hopper, configs.GLUON_MIN_QUERIES - 1, True),
            (64, 2, hopper, configs.GLUON_D64_MIN_QUERIES - 1, False),
            (64, 2, hopper, configs.GLUON_D64_MIN_QUERIES - 1, True)]:
        assert configs.hopper_forward_config(head_dim, itemsize, capability, seqlen_q, causal) is None
    # The output goes through shared memory and TMA where that measured faster (benchmarks/NOTES.md, session 26):
    # head_dim 128, and head_dim 64 under a causal mask; head_dim 64 without one stores by pointer.
    assert configs.hopper_forward_config(128, 2, hopper, configs.GLUON_MIN_QUERIES, False).tma_store
    assert configs.hopper_forward_config(128, 2, hopper, configs.GLUON_MIN_QUERIES, True).tma_store
    assert configs.hopper_forward_config(64, 2, hopper, configs.GLUON_D64_MIN_QUERIES, True).tma_store
    assert not configs.hopper_forward_config(64, 2, hopper, configs.GLUON_D64_MIN_QUERIES, False).tma_store
    # Head_dim 256: 32-key blocks with the output through TMA on short rows, 64-key blocks (no room left for the
    # output slots) from GLUON_D256_WIDE_MIN_QUERIES (session 28).
    for causal in (False, True):
        short = configs.hopper_forward_config(256, 2, hopper, configs.GLUON_D256_WIDE_MIN_QUERIES - 1, causal)
        wide = configs.hopper_forward_config(256, 2, hopper, configs.GLUON_D256_WIDE_MIN_QUERIES, causal)
        assert (short.block_n, short.tma_store, wide.block_n, wide.tma_store) == (32, True, 64, False)
    if not ON_GPU:
        q, k, v = random_qkv(1, 2, 2, 200, 200, 128, torch.float16, DEVICE)
        assert ops._hopper_forward_config(q, k, v, None, True, 128 ** -0.5) is None


def test_hopper_forward_compile_failure_names_the_switch(monkeypatch):
    """Gluon is an experimental API: should a Triton release no longer compile the kernel, the error says so and
    names HF_TRITON_ATTN_GLUON=0, which keeps every call on the Triton forward."""
    if ops._attn_fwd_ws is None:
        pytest.skip("this Triton has no Gluon Hopper API: the Gluon forward is never taken")
    fail_gluon_launch(monkeypatch, "_launch_fwd_gluon")
    q, k, v = random_qkv(2, 4, 2, 200, 200, 128, torch.float16, DEVICE)
    out, lse = torch.empty(2, 200, 4, 128, dtype=torch.float16), torch.empty(2, 4, 200)
    cfg = configs.hopper_forward_config(128, 2, (9, 0), 200, True)
    with pytest.raises(RuntimeError, match="HF_TRITON_ATTN_GLUON=0") as failure:
        ops._forward_hopper(q, k, v, out, lse, None, None, None, True, 128 ** -0.5, cfg)
    assert isinstance(failure.value.__cause__, CompilationError)


# (batch, heads, kv heads, queries, keys) of the Gluon kernels' GPU tests: lengths off their tiles, GQA and MQA, fewer
# queries than keys (bottom-right causal).
GLUON_SHAPES = [(2, 4, 4, 333, 333), (1, 8, 2, 500, 500), (1, 4, 4, 200, 456), (1, 4, 1, 1000, 1000),
                (1, 2, 2, 129, 257), (2, 2, 2, 128, 128)]


def check_kernel_ran(monkeypatch, launch: str, check, layout, shape, head_dim, dtype, causal, padding,
                     min_length: int = 1) -> None:
    """``check`` (check_forward or check_backward) on random inputs of ``shape`` seen as (B, H, S, D) in ``layout``
    (qkv_in_layout), with a ``padding_mask`` of that kind (lengths from ``min_length``) or none; and ``ops.<launch>``
    ran once."""
    calls = count_calls(monkeypatch, ops, launch)
    batch, heads, kv_heads, seqlen_q, seqlen_k = shape
    q, k, v = qkv_in_layout(layout, batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim, dtype, DEVICE)
    mask = None if padding is None else padding_mask(padding, batch, seqlen_k, min_length)
    check(q, k, v, causal=causal, attention_mask=mask)
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("shape", GLUON_SHAPES)
@pytest.mark.parametrize("padding", [None, "right", "left", "one_hole", "holes"])
@pytest.mark.parametrize("head_dim, configured_for", [(64, LONG_ROWS), (128, LONG_ROWS), (256, LONG_ROWS),
                                                      (256, configs.GLUON_MIN_QUERIES), (80, LONG_ROWS),
                                                      (96, LONG_ROWS), (192, LONG_ROWS)])
def test_hopper_forward_gpu(monkeypatch, dtype, causal, layout, shape, padding, head_dim, configured_for):
    """The Gluon forward (Hopper, head_dims 64, 128 and 256, and 80, 96 and 192 with q/k, v and the output in two
    tiles each, in the configuration taken at ``configured_for`` queries: at head_dim 256 64-key blocks on long
    rows, 32-key blocks on short ones; no mask or a key-padding one; the output by pointer or through TMA) against
    the oracle: lengths off its tiles, GQA and MQA, Transformers'
    (B, S, H, D) layout, fewer queries than keys (bottom-right causal), left padding (rows that see no key under a
    causal mask), holes; and it is the kernel that ran."""
    if not hopper_with_gluon():
        pytest.skip(SKIP_WITHOUT_GLUON)
    take_gluon_as_at(monkeypatch, configured_for)
    check_kernel_ran(monkeypatch, "_forward_hopper", check_forward, layout, shape, head_dim, dtype, causal, padding)


def schedule_mask(padding, batch: int, seqlen: int):
    """The persistent-schedule tests' key-padding masks: None, a ``padding_mask`` kind, or "empty_row" (right padding
    with batch row 1 keeping no key: tiles without key blocks between others)."""
    if padding == "empty_row":
        mask = padding_mask("right", batch, seqlen)
        mask[1] = False
        return mask
    return None if padding is None else padding_mask(padding, batch, seqlen)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "left", "holes", "empty_row"])
@pytest.mark.parametrize("head_dim, configured_for", [(64, LONG_ROWS), (128, LONG_ROWS), (256, LONG_ROWS),
                                                      (256, configs.GLUON_MIN_QUERIES), (96, LONG_ROWS),
                                                      (192, LONG_ROWS)])
def test_hopper_forward_persistent_schedule_gpu(monkeypatch, causal, padding, head_dim, configured_for):
    """More tiles than SMs, so each persistent program runs several (its K/V ring and query slots carried from one
    tile to the next, one query slot per consumer at head_dims 192 and 256), in causal sections of 4 heads that do
    not divide the 15 (batch, head) pairs, and one batch row with no kept key at all (tiles without key blocks
    between others) among the masks."""
    calls = gluon_forward_calls(monkeypatch, configured_for)
    batch, heads, seqlen = 3, 5, 2500
    q, k, v = random_qkv(batch, heads, 1, seqlen, seqlen, head_dim, torch.bfloat16, DEVICE)
    # The K/V bytes of 4 heads; the 5 heads of a batch row share one kv head (MQA), a fifth of it each.
    monkeypatch.setattr(configs, "GLUON_L2_BYTES", 4 * (2 * seqlen * head_dim * 2 // heads))
    assert configs.cdiv(seqlen, 128) * batch * heads > 2 * ops._sm_count(q.device)
    check_forward(q, k, v, causal=causal, attention_mask=schedule_mask(padding, batch, seqlen))
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "left", "holes", "empty_row"])
@pytest.mark.parametrize("sink_kind", ["head", "row"])
@pytest.mark.parametrize("head_dim", [64, 80, 128, 192, 256])
def test_hopper_forward_sinks_gpu(monkeypatch, causal, padding, sink_kind, head_dim):
    """Attention sinks joined in the Gluon forward's epilogue against the oracle, one per head or per row, with a
    -inf sink among them, and a batch row whose mask keeps no key ("empty_row": the sink takes all the weight, the
    output is zero); GQA, lengths off the tiles; and it is the kernel that ran."""
    calls = gluon_forward_calls(monkeypatch)
    batch, heads, seqlen = 3, 4, 333
    q, k, v = random_qkv(batch, heads, 2, seqlen, seqlen, head_dim, torch.bfloat16, DEVICE)
    sinks = random_sinks(sink_kind, batch, heads, seqlen, torch.bfloat16)
    out = check_forward(q, k, v, causal=causal, attention_mask=schedule_mask(padding, batch, seqlen), sinks=sinks)
    if padding == "empty_row":
        assert out[1].abs().max() == 0
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("shape", GLUON_SHAPES)
@pytest.mark.parametrize("padding", [None, "right", "left", "holes"])
def test_hopper_forward_value_head_dim_gpu(monkeypatch, dtype, causal, layout, shape, padding):
    """Multi-head latent attention's head dims in the Gluon forward (q and k at 192, in tiles of 128 and 64 columns;
    v and the output at 128) against the oracle, with the test shapes of test_hopper_forward_gpu and key-padding
    masks; and it is the kernel that ran."""
    calls = gluon_forward_calls(monkeypatch)
    batch, heads, kv_heads, seqlen_q, seqlen_k = shape
    q, k, _ = qkv_in_layout(layout, batch, heads, kv_heads, seqlen_q, seqlen_k, 192, dtype, DEVICE)
    v = qkv_in_layout(layout, batch, heads, kv_heads, seqlen_q, seqlen_k, 128, dtype, DEVICE)[2]
    mask = None if padding is None else padding_mask(padding, batch, seqlen_k)
    out = check_forward(q, k, v, causal=causal, attention_mask=mask)
    assert out.shape == (batch, heads, seqlen_q, 128)
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "empty_row"])
def test_hopper_forward_value_head_dim_schedule_and_sinks_gpu(monkeypatch, causal, padding):
    """Multi-head latent attention's head dims in the Gluon forward with more tiles than SMs (rings and slots carried
    from tile to tile), MQA, one attention sink per head and a batch row that keeps no key."""
    calls = gluon_forward_calls(monkeypatch)
    batch, heads, seqlen = 3, 5, 2500
    q, k, _ = random_qkv(batch, heads, 1, seqlen, seqlen, 192, torch.bfloat16, DEVICE)
    v = torch.randn(batch, 1, seqlen, 128, device=DEVICE, dtype=torch.bfloat16)
    assert configs.cdiv(seqlen, 128) * batch * heads > 2 * ops._sm_count(q.device)
    sinks = random_sinks("head", batch, heads, seqlen, torch.bfloat16)
    out = check_forward(q, k, v, causal=causal, attention_mask=schedule_mask(padding, batch, seqlen), sinks=sinks)
    if padding == "empty_row":
        assert out[1].abs().max() == 0
    assert len(calls) == 1


@pytest.mark.gpu
def test_hopper_forward_tile_counter_gpu(monkeypatch):
    """The persistent programs take tiles from a counter that each launch leaves at zero for the next: eager calls
    one after another reuse their stream's counter (the default stream's, a side stream's), a call captured into a
    CUDA graph has its own, and replays interleaved with eager calls all match the oracle."""
    if not hopper_with_gluon():
        pytest.skip(SKIP_WITHOUT_GLUON)
    calls = count_calls(monkeypatch, ops, "_forward_hopper")
    q, k, v = random_qkv(3, 8, 2, 1500, 1500, 128, torch.bfloat16, DEVICE)
    assert configs.cdiv(1500, 128) * 3 * 8 > 2 * ops._sm_count(q.device)
    ref64, same = reference_pair(q, k, v, causal=True)
    for _ in range(3):
        assert_close_to_reference(attention(q, k, v, causal=True), ref64, same)
    counter = ops._tile_counter(q.device)
    assert counter.item() == 0
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        outs = [attention(q, k, v, causal=True) for _ in range(2)]
        assert ops._tile_counter(q.device) is not counter
    side.synchronize()
    for out in outs:
        assert_close_to_reference(out, ref64, same)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = attention(q, k, v, causal=True)
    for _ in range(3):
        graph.replay()
        eager = attention(q, k, v, causal=True)
        torch.cuda.synchronize()
        assert_close_to_reference(captured, ref64, same)
        assert_close_to_reference(eager, ref64, same)
    assert counter.item() == 0
    assert len(calls) == 9


@pytest.mark.gpu
def test_hopper_forward_not_taken_where_it_does_not_apply(monkeypatch):
    """Dense masks, seqused_q, seqused_k, a causal call with more queries than keys, too few queries (for head_dim
    128, and for head_dim 64 with and without a causal mask) and the switch (HF_TRITON_ATTN_GLUON=0) all keep the
    Triton kernel, and give the oracle's answer."""
    if not hopper_with_gluon():
        pytest.skip(SKIP_WITHOUT_GLUON)
    calls = count_calls(monkeypatch, ops, "_forward_hopper")
    q, k, v = random_qkv(2, 4, 2, 300, 300, 128, torch.bfloat16, DEVICE)
    check_forward(q, k, v, causal=True, attention_mask=structured_mask("sliding", 2, 1, 300, 300))
    check_forward(q, k, v, causal=True, seqused_q=torch.tensor([250, 300], device=DEVICE, dtype=torch.int32))
    check_forward(q, k, v, causal=True, seqused_k=torch.tensor([250, 300], device=DEVICE, dtype=torch.int32))
    check_forward(q, k[:, :, :200], v[:, :, :200], causal=True)
    check_forward(q[:, :, :configs.GLUON_MIN_QUERIES - 1], k, v, causal=True)
    check_forward(*random_qkv(1, 2, 2, configs.GLUON_D64_MIN_QUERIES - 1, 300, 64, torch.bfloat16, DEVICE))
    check_forward(*random_qkv(1, 2, 2, configs.GLUON_D64_MIN_QUERIES - 1, configs.GLUON_D64_MIN_QUERIES - 1, 64,
                              torch.bfloat16, DEVICE), causal=True)
    monkeypatch.setattr(configs, "GLUON_FORWARD", False)
    check_forward(q, k, v, causal=True)
    assert calls == []


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_hopper_forward_taken_at_head_dim_64_on_long_rows(monkeypatch, causal):
    """Without any test patch, head_dim 64 takes the Gluon forward from GLUON_D64_MIN_QUERIES queries, with or without
    a causal mask, with the oracle's answer."""
    if not hopper_with_gluon():
        pytest.skip(SKIP_WITHOUT_GLUON)
    calls = count_calls(monkeypatch, ops, "_forward_hopper")
    seqlen = configs.GLUON_D64_MIN_QUERIES
    check_forward(*random_qkv(1, 2, 1, seqlen, seqlen, 64, torch.bfloat16, DEVICE), causal=causal)
    assert len(calls) == 1
