"""Backward kernels, dropout, the custom-op registration and torch.compile."""
import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from triton.compiler.errors import CompilationError
from conftest import DEVICE, DTYPES, ON_GPU
from helpers import (LONG_ROWS, SKIP_WITHOUT_GLUON, assert_close_to_reference, count_calls, count_descriptors,
                     fail_gluon_launch, gluon_forward_calls, hopper_with_gluon, inputs_with_unused_nan_keys,
                     qkv_in_layout, random_qkv)
from test_kernel import (GLUON_SHAPES, PADDING_CASES, STRUCTURED_KINDS, additive_mask, check_forward,
                         check_kernel_ran, kept_ranges_mask, launch_config_mask, padding_mask, random_sinks,
                         schedule_mask, structured_mask)

from hf_triton_attn import attention, configs, functional, kept_key_ranges, ops
from hf_triton_attn.reference import attention_reference


def grads_of(fn, q, k, v, grad_out):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad_out)
    return out, q.grad, k.grad, v.grad


def check_backward(q, k, v, grad_out=None, **kwargs):
    grad_out = torch.randn_like(q) if grad_out is None else grad_out
    ours = grads_of(lambda a, b, c: attention(a, b, c, **kwargs), q, k, v, grad_out)
    mask = kwargs.get("attention_mask")

    def oracle(dtype):
        ref_kwargs = dict(kwargs)
        if mask is not None and mask.is_floating_point():
            ref_kwargs["attention_mask"] = mask.to(dtype)
        return grads_of(lambda a, b, c: attention_reference(a, b, c, **ref_kwargs),
                        q.to(dtype), k.to(dtype), v.to(dtype), grad_out.to(dtype))

    ref64, same = oracle(torch.float64), oracle(q.dtype)
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), ours, ref64, same):
        assert a.shape == b.shape and a.dtype == q.dtype
        assert_close_to_reference(a, b, c, factor=3.0, what=name)


def check_input_gradients(inputs: dict, grad_out, **kwargs):
    """``attention(**inputs, **kwargs)`` against the float64 oracle: its output and the gradient of every tensor in
    ``inputs`` (q, k, v and any other differentiable input), each within check_backward's factor of PyTorch's own
    error in the inputs' dtype."""
    dtype = inputs["q"].dtype

    def grads(fn, dtype):
        leaves = {name: t.detach().to(dtype).requires_grad_() for name, t in inputs.items()}
        out = fn(**leaves, **kwargs)
        out.backward(grad_out.to(dtype))
        return [out] + [t.grad for t in leaves.values()]

    ours = grads(attention, dtype)
    ref64, same = grads(attention_reference, torch.float64), grads(attention_reference, dtype)
    for name, a, b, c in zip(["out"] + [f"d{name}" for name in inputs], ours, ref64, same):
        assert a.dtype == dtype and a.shape == b.shape
        assert_close_to_reference(a, b, c, factor=3.0, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens", [(1, 67), (37, 37), (64, 100), (100, 64)])
def test_backward_shapes_gqa_causal(dtype, heads, causal, seqlens):
    check_backward(*random_qkv(2, *heads, *seqlens, 40, dtype, DEVICE), causal=causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [16, 40, 64, 80, 96, 128, 192, 256, 512])
def test_backward_head_dims(dtype, head_dim):
    check_backward(*random_qkv(1, 2, 1, 33, 47, head_dim, dtype, DEVICE), causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_head_dim_tail_with_softcap_scale_and_masks(dtype):
    """q, k, dQ and dK in two tiles (96: 64 + 32, configs.head_dim_tiles) where the scores are scaled in the kernels
    (softcap, a negative scale), under GQA and key-padding or dense masks (the dK/dV kernel zeroes a dropped key's
    rows in both tiles)."""
    q, k, v = random_qkv(2, 4, 2, 33, 45, 96, dtype, DEVICE)
    check_backward(q, k, v, causal=True, softcap=2.5, scale=0.3, attention_mask=padding_mask("left", 2, 45))
    check_backward(q, k, v, scale=-0.2, attention_mask=torch.rand(2, 1, 33, 45, device=DEVICE) > 0.3)


@pytest.mark.parametrize("kind", ["left", "right", "holes", "one_hole"])
@pytest.mark.parametrize("causal", [False, True])
def test_backward_key_padding(kind, causal):
    check_backward(*random_qkv(3, 4, 2, 45, 45, 32, torch.float32, DEVICE), causal=causal,
                   attention_mask=padding_mask(kind, 3, 45))


@pytest.mark.parametrize("kind", ["left", "right", "holes"])
def test_backward_with_kept_key_ranges_given(monkeypatch, kind):
    """Ranges given by the caller serve the forward and both backward kernels: no key-range launch, the same
    gradients as a call that computes them."""
    q, k, v = random_qkv(3, 4, 2, 45, 45, 32, torch.float32, DEVICE)
    key_mask = padding_mask(kind, 3, 45)
    ranges = functional.kept_key_ranges(key_mask)
    grad_out = torch.randn_like(q)
    launches = count_calls(monkeypatch, ops, "_launch_key_ranges")
    given = grads_of(lambda a, b, c: attention(a, b, c, causal=True, attention_mask=key_mask,
                                               kept_key_ranges=ranges), q, k, v, grad_out)
    assert not launches
    computed = grads_of(lambda a, b, c: attention(a, b, c, causal=True, attention_mask=key_mask), q, k, v, grad_out)
    assert len(launches) == 1
    for name, a, b in zip(("out", "dq", "dk", "dv"), given, computed):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlens, ranges", PADDING_CASES)
def test_backward_padding_blocks_skipped_exactly(causal, seqlens, ranges):
    q, k, v = random_qkv(len(ranges), 2, 1, *seqlens, 16, torch.float32, DEVICE)
    check_backward(q, k, v, causal=causal, attention_mask=kept_ranges_mask(ranges, seqlens[1]))


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_backward_dense_mask(mask_kind):
    q, k, v = random_qkv(2, 4, 2, 29, 53, 32, torch.float32, DEVICE)
    mask = torch.rand(2, 1, 29, 53, device=DEVICE) > 0.3
    if mask_kind == "additive":
        mask = torch.randn(2, 1, 29, 53, device=DEVICE).masked_fill(~mask, float("-inf"))
    check_backward(q, k, v, attention_mask=mask)


@pytest.mark.parametrize("kind", STRUCTURED_KINDS)
@pytest.mark.parametrize("mask_heads", [1, 2])
@pytest.mark.parametrize("mask_kind", ["bool", "zeros"])
def test_backward_structured_dense_mask(kind, mask_heads, mask_kind):
    """dQ skips the key blocks outside each query tile's span, dK/dV the query blocks outside each key tile's span
    (merged over the two query heads of the kv head when the mask differs per head); both compute the blocks
    inside every row's (key's) clear run without the mask."""
    q, k, v = random_qkv(2, 2, 1, 130, 150, 32, torch.float32, DEVICE)
    mask = structured_mask(kind, 2, mask_heads, 130, 150)
    if mask_kind == "zeros":
        mask = additive_mask(mask, "zeros")
    check_backward(q, k, v, attention_mask=mask)


def test_backward_seqused_softcap_scale():
    q, k, v = random_qkv(3, 4, 2, 5, 64, 32, torch.float32, DEVICE)
    seqused = torch.tensor([64, 17, 3], device=DEVICE, dtype=torch.int32)
    check_backward(q, k, v, causal=True, seqused_k=seqused, softcap=3.0, scale=0.2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
@pytest.mark.parametrize("key_mask", [False, True])
def test_backward_seqused_q(dtype, causal, heads, key_mask):
    """Padding query rows get zero dQ and add nothing to dK/dV, whatever gradient reaches their (zero) output."""
    q, k, v = random_qkv(4, *heads, 70, 70, 32, dtype, DEVICE)
    seqused_q = torch.tensor([70, 33, 0, 64], device=DEVICE, dtype=torch.int32)
    mask = (torch.arange(70, device=DEVICE)[None, :] < torch.tensor([70, 40, 5, 64], device=DEVICE)[:, None]
            if key_mask else None)
    check_backward(q, k, v, causal=causal, seqused_q=seqused_q, attention_mask=mask)


def test_backward_seqused_q_with_dense_mask_dropout_and_seqused_k():
    q, k, v = random_qkv(2, 2, 1, 37, 77, 32, torch.float32, DEVICE)
    seqused_q = torch.tensor([20, 37], device=DEVICE, dtype=torch.int32)
    seqused_k = torch.tensor([77, 50], device=DEVICE, dtype=torch.int32)
    check_backward(q, k, v, causal=True, seqused_q=seqused_q, seqused_k=seqused_k,
                   attention_mask=structured_mask("sliding", 2, 1, 37, 77))
    torch.manual_seed(0)
    ours = grads_of(lambda a, b, c: attention(a, b, c, seqused_q=seqused_q, dropout_p=0.3), q, k, v,
                    torch.randn_like(q))
    for tensor, name in zip(ours[:2], ("out", "dq")):
        assert not tensor[0, :, 20:].any() and tensor[0, :, :20].abs().sum() > 0, name


def test_dq_descriptors_only_where_measured():
    """The dQ kernel takes descriptors for 16-bit K/V at head_dim 128, and at head_dim 64 from DQ_TMA_D64_MIN_KEYS
    keys (shorter rows gained nothing and their calls are the host-bound ones); in the interpreter at every 16-bit
    power-of-two head dim, so the CPU tests cover both kinds of load."""
    long_rows = configs.DQ_TMA_D64_MIN_KEYS
    assert configs.dq_uses_tma(128, 2, False, 512)
    assert configs.dq_uses_tma(64, 2, False, long_rows)
    for head_dim, itemsize, seqlen_k in [(64, 2, long_rows - 1), (64, 4, long_rows), (256, 2, long_rows),
                                         (32, 2, long_rows), (96, 2, long_rows), (128, 4, long_rows)]:
        assert not configs.dq_uses_tma(head_dim, itemsize, False, seqlen_k)
    assert configs.dq_uses_tma(32, 2, True, 70) and not configs.dq_uses_tma(96, 2, True, 70)


def test_dkdv_key_blocks_outer_only_where_measured():
    """Key blocks on the dK/dV grid's outer axis: under a causal mask, up to 8 programs per multiprocessor."""
    limit = configs.DKDV_KEY_BLOCKS_OUTER_MAX_PROGRAMS_PER_SM
    assert configs.dkdv_key_blocks_outer(True, 1024, 132) and configs.dkdv_key_blocks_outer(True, limit * 132, 132)
    assert not configs.dkdv_key_blocks_outer(True, limit * 132 + 1, 132)
    assert not configs.dkdv_key_blocks_outer(False, 1024, 132)


@pytest.mark.parametrize("key_blocks_outer", [False, True])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
def test_dkdv_grid_orders(monkeypatch, key_blocks_outer, heads):
    """Either order of the dK/dV grid's axes gives the oracle's gradients, with several key blocks and batches
    (so a swapped program id would land on another block's or batch's rows)."""
    monkeypatch.setattr(configs, "dkdv_key_blocks_outer", lambda *args: key_blocks_outer)
    choices = count_calls(monkeypatch, configs, "dkdv_key_blocks_outer")
    seqlen = 300 if ON_GPU else 70
    check_backward(*random_qkv(3, *heads, seqlen, seqlen, 64 if ON_GPU else 32, torch.float16, DEVICE),
                   causal=True)
    assert len(choices) == 1  # the backward launched with the order chosen above


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_tma", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128] if ON_GPU else [32])
def test_dq_tensor_descriptor_and_pointer_loads(monkeypatch, use_tma, causal, head_dim):
    """The dQ kernel's K/V tiles, through descriptors or pointers, give the oracle's gradients where the keys in
    use end inside a block whose unused rows hold NaN (a descriptor loads them; they must not reach dQ); on the GPU
    at both head dims that take descriptors."""
    if use_tma and not ops.INTERPRET and not configs.dq_uses_tma(head_dim, 2, False, configs.DQ_TMA_D64_MIN_KEYS):
        pytest.skip("no tensor-descriptor loads on this GPU configuration")
    monkeypatch.setattr(configs, "forward_uses_tma", lambda *args: False)
    monkeypatch.setattr(configs, "dq_uses_tma", lambda *args: use_tma)
    descriptors = count_descriptors(monkeypatch, ops)
    q, k, v, seqused = inputs_with_unused_nan_keys(37, head_dim, DEVICE)
    grad_out = torch.randn_like(q)
    ours = grads_of(lambda a, b, c: attention(a, b, c, causal=causal, seqused_k=seqused), q, k, v, grad_out)
    assert len(descriptors) == (2 if use_tma else 0)
    assert torch.equal(ours[2][0, :, 50:], torch.zeros_like(ours[2][0, :, 50:]))
    assert torch.equal(ours[3][0, :, 50:], torch.zeros_like(ours[3][0, :, 50:]))
    for row in range(2):
        used = int(seqused[row])
        inputs = (q[row:row + 1], k[row:row + 1, :, :used], v[row:row + 1, :, :used], grad_out[row:row + 1])
        ref64, same = (grads_of(lambda a, b, c: attention_reference(a, b, c, causal=causal),
                                *(t.to(dtype) for t in inputs)) for dtype in (torch.float64, torch.float16))
        got = (ours[0][row:row + 1], ours[1][row:row + 1], ours[2][row:row + 1, :, :used],
               ours[3][row:row + 1, :, :used])
        for name, a, r64, r16 in zip(("out", "dq", "dk", "dv"), got, ref64, same):
            assert_close_to_reference(a, r64, r16, factor=3.0, what=name)


def test_backward_non_contiguous_inputs_and_grads():
    def bshd(heads, seqlen):
        return torch.randn(2, seqlen, heads, 32, device=DEVICE).transpose(1, 2)
    q, k, v = bshd(4, 37), bshd(2, 37), bshd(2, 37)
    grad_out = torch.randn(2, 4, 32, 37, device=DEVICE).transpose(2, 3)
    check_backward(q, k, v, grad_out=grad_out, causal=True)


def test_fully_masked_rows_have_zero_grads():
    q, k, v = random_qkv(2, 2, 1, 20, 20, 32, torch.float32, DEVICE, requires_grad=True)
    key_mask = torch.ones(2, 20, dtype=torch.bool, device=DEVICE)
    key_mask[1] = False
    attention(q, k, v, attention_mask=key_mask).sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and t.grad[1].abs().max() == 0


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter (numpy) reports the overflow on purpose
def test_dropped_keys_with_overflowing_scores_get_zero_grads(causal):
    """The dK/dV kernel leaves the key mask out of its loops and zeroes the dropped keys' rows at the end: scores
    of dropped keys that overflow exp2 (inf, and inf * 0 = NaN) must not reach any gradient."""
    q, k, v = random_qkv(3, 4, 2, 45, 45, 32, torch.float32, DEVICE)
    key_mask = padding_mask("holes", 3, 45)
    k = torch.where(key_mask[:, None, :, None], k, 1e4 * q.abs().amax())
    check_backward(q, k, v, causal=causal, attention_mask=key_mask)
    _, _, dk, dv = grads_of(lambda a, b, c: attention(a, b, c, causal=causal, attention_mask=key_mask),
                            q, k, v, torch.randn_like(q))
    dropped = ~key_mask[:, None, :, None]
    assert dk.masked_select(dropped).eq(0).all() and dv.masked_select(dropped).eq(0).all()


def dropout_keep_mask(shape, dropout_p, seed, causal=False):
    """Recover the kernel's keep-mask: zero queries give uniform weights, identity values expose each one."""
    batch, heads, seqlen_q, seqlen_k = shape
    q = torch.zeros(batch, heads, seqlen_q, seqlen_k, device=DEVICE)
    k = torch.randn(batch, heads, seqlen_k, seqlen_k, device=DEVICE)
    v = torch.eye(seqlen_k, device=DEVICE).expand(batch, heads, seqlen_k, seqlen_k)
    torch.manual_seed(seed)
    return attention(q, k, v, dropout_p=dropout_p, causal=causal) > 0


@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_dropout_keep_rate(dropout_p):
    keep = dropout_keep_mask((4, 4, 64, 64), dropout_p, seed=0)
    n = keep.numel()
    rate = keep.float().mean().item()
    assert abs(rate - (1 - dropout_p)) < 4 * (dropout_p * (1 - dropout_p) / n) ** 0.5


def test_dropout_mask_has_no_lane_structure():
    """One Philox call serves 8 flags (queries q, q + 8 times keys k, k + 1, k + 8, k + 9): each position in the
    16 x 16 pattern must still be a fair coin, and no two positions at any offset within it may agree more often
    than chance. 5 sigma: 256 positions and 32 offsets are tested."""
    keep = dropout_keep_mask((2, 4, 128, 128), 0.5, seed=5).float()
    bound = 5 * (0.25 / keep[..., 0::16, 0::16].numel()) ** 0.5
    for row in range(16):
        for col in range(16):
            assert abs(keep[..., row::16, col::16].mean().item() - 0.5) < bound, (row, col)
    for shift in range(1, 17):
        for a, b in ((keep[..., :-shift], keep[..., shift:]), (keep[..., :-shift, :], keep[..., shift:, :])):
            same = (a == b).float().mean().item()
            assert abs(same - 0.5) < 5 * (0.25 / a.numel()) ** 0.5, shift


def test_dropout_reproducible_with_seed():
    q, k, v = random_qkv(2, 4, 2, 40, 40, 32, torch.float32, DEVICE)
    torch.manual_seed(7)
    first = attention(q, k, v, dropout_p=0.2, causal=True)
    torch.manual_seed(7)
    assert torch.equal(first, attention(q, k, v, dropout_p=0.2, causal=True))
    assert not torch.equal(first, attention(q, k, v, dropout_p=0.2, causal=True))


def test_dropout_zero_is_exactly_no_dropout():
    q, k, v = random_qkv(2, 4, 2, 40, 40, 32, torch.float32, DEVICE)
    assert torch.equal(attention(q, k, v, dropout_p=0.0), attention(q, k, v))


@pytest.mark.parametrize("causal, seqlen_k", [(False, 64), (True, 64), (False, 61), (True, 77)])
@pytest.mark.parametrize("head_dim", [64, 96])  # 96: q/k in two tiles
def test_dropout_forward_and_backward_match_reference(causal, seqlen_k, head_dim):
    """The same keep-mask, applied by the oracle, must give our output and gradients (ragged key counts too)."""
    shape, dropout_p, seed = (2, 4, 48, seqlen_k), 0.3, 11
    keep = dropout_keep_mask(shape, dropout_p, seed, causal=causal)
    q, k, v = random_qkv(2, 4, 4, 48, seqlen_k, head_dim, torch.float32, DEVICE)
    grad_out = torch.randn_like(q)
    torch.manual_seed(seed)
    ours = grads_of(lambda a, b, c: attention(a, b, c, dropout_p=dropout_p, causal=causal), q, k, v, grad_out)
    ref = grads_of(lambda a, b, c: attention_reference(a, b, c, causal=causal, dropout_mask=keep, dropout_p=dropout_p),
                   q.double(), k.double(), v.double(), grad_out.double())
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert (a.double() - b).abs().max() < 1e-4, name


@pytest.mark.parametrize("dtype", [dtype for dtype in DTYPES if dtype != torch.float32])
@pytest.mark.parametrize("causal", [False, True])
def test_dropout_16_bit_matches_reference(dtype, causal):
    """16-bit dropout at head_dim 64 (BERT, GPT-2) launches its own tile shapes on the GPU: several query and key
    blocks, ragged ends and GQA, against the float64 oracle with the recovered keep-mask."""
    seqlen_q, seqlen_k, dropout_p, seed = 150, 130, 0.1, 7
    keep = dropout_keep_mask((2, 4, seqlen_q, seqlen_k), dropout_p, seed, causal=causal)
    q, k, v = random_qkv(2, 4, 2, seqlen_q, seqlen_k, 64, dtype, DEVICE)
    grad_out = torch.randn_like(q)
    torch.manual_seed(seed)
    ours = grads_of(lambda a, b, c: attention(a, b, c, dropout_p=dropout_p, causal=causal), q, k, v, grad_out)

    def oracle(dtype):
        return grads_of(lambda a, b, c: attention_reference(a, b, c, causal=causal, dropout_mask=keep,
                                                            dropout_p=dropout_p),
                        q.to(dtype), k.to(dtype), v.to(dtype), grad_out.to(dtype))

    for name, a, b, c in zip(("out", "dq", "dk", "dv"), ours, oracle(torch.float64), oracle(dtype)):
        assert_close_to_reference(a, b, c, factor=3.0, what=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(37, 45), (1, 50)], ids=["forward", "split-kv"])
@pytest.mark.parametrize("sink_shape", ["head", "row", "batch"])
def test_attention_sinks_backward(dtype, causal, seqlen_q, seqlen_k, sink_shape):
    """Gradients of q, k, v and of the sinks themselves (held in the inputs' dtype, as a model's parameter is; one
    per query head, per query row, or per batch row: the gradient sums over the rows that share a sink) against the
    float64 oracle, under a key mask that keeps nothing in one row (whose sink takes all the weight
    and whose output stays zero: no gradient there); some sinks -inf (no sink: zero gradient), also in that row, which
    then has nothing at all; the forward kernel's case with a seqused_q that leaves padding rows out (calls with one
    never take the split-KV kernel)."""
    q, k, v = random_qkv(3, 4, 2, seqlen_q, seqlen_k, 32, dtype, DEVICE)
    key_mask = torch.rand(3, seqlen_k, device=DEVICE) > 0.3
    key_mask[2] = False
    sinks = torch.randn(dict(head=(4,), row=(3, 4, seqlen_q), batch=(3, 1, 1))[sink_shape], device=DEVICE,
                        dtype=dtype) * 2
    sinks[dict(head=(1,), row=(slice(None), 1), batch=(2,))[sink_shape]] = float("-inf")
    seqused_q = None
    if seqlen_q > 1:
        seqused_q = torch.tensor([seqlen_q, seqlen_q - 9, seqlen_q], device=DEVICE, dtype=torch.int32)
    check_input_gradients(dict(q=q, k=k, v=v, sinks=sinks), torch.randn_like(q), causal=causal,
                          attention_mask=key_mask, seqused_q=seqused_q)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seqlen_q, head_dim, value_dim", [(37, 24, 16), (37, 24, 40), (1, 24, 16), (37, 32, 16)],
                         ids=["narrower-value", "wider-value", "decoding", "powers-of-two"])
@pytest.mark.parametrize("mask", ["key", "dense"])
def test_value_head_dim_differs_from_query_key(monkeypatch, dtype, seqlen_q, head_dim, value_dim, mask):
    """Multi-head latent attention (DeepSeek-V3) gives v another head dim than q and k: forward and gradients
    against the float64 oracle, with GQA, a causal mask and a key-padding or dense mask, and every kernel launched
    with v at its own head dim (no zero-column copy; in 16-bit, head dims that are powers of two load through
    tensor descriptors in the interpreter). The output is contiguous in the (B, Sq, H, Dv) layout that
    attention_bshd promises."""
    launched_value_dims = []
    for name in ("_launch_fwd", "_launch_fwd_split", "_launch_bwd_dq", "_launch_bwd_dkdv"):
        def recording(grid, *args, _launch=getattr(ops, name), _name=name, **kwargs):
            launched_value_dims.append((_name, args[2].shape[3]))
            return _launch(grid, *args, **kwargs)
        monkeypatch.setattr(ops, name, recording)
    descriptors = count_descriptors(monkeypatch, ops)
    q, k, _ = random_qkv(2, 4, 2, seqlen_q, 45, head_dim, dtype, DEVICE)
    v = torch.randn(2, 2, 45, value_dim, device=DEVICE, dtype=dtype)
    out = functional.attention_bshd(q, k, v, causal=True)
    assert out.shape == (2, seqlen_q, 4, value_dim) and out.is_contiguous()
    attention_mask = (padding_mask("left", 2, 45) if mask == "key"
                      else torch.rand(2, 1, seqlen_q, 45, device=DEVICE) > 0.3)
    grad_out = torch.randn(2, 4, seqlen_q, value_dim, device=DEVICE, dtype=dtype)
    check_input_gradients(dict(q=q, k=k, v=v), grad_out, causal=True, attention_mask=attention_mask)
    forward = "_launch_fwd_split" if seqlen_q == 1 else "_launch_fwd"
    assert {name for name, _ in launched_value_dims} == {forward, "_launch_bwd_dq", "_launch_bwd_dkdv"}
    assert all(dim == value_dim for _, dim in launched_value_dims), launched_value_dims
    assert bool(descriptors) == (seqlen_q > 1 and all(configs.forward_uses_tma(dim, q.element_size(), ops.INTERPRET)
                                                      for dim in (head_dim, value_dim)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim, value_dim", [(80, 80), (40, 96)])
def test_value_head_dim_in_two_tiles_gradients(monkeypatch, dtype, head_dim, value_dim):
    """v, dO and dV in two tiles in the dQ and dK/dV kernels (configs.value_dim_tiles: 64 + 16 and 64 + 32 columns),
    forward and gradients against the float64 oracle with what touches both tiles: Delta over both (padding query rows through seqused_q),
    dV's rows of dropped keys (a key mask), GQA sums, and attention sinks (in the LSE the backward reads)."""
    launched = []
    for name in ("_launch_fwd", "_launch_bwd_dq", "_launch_bwd_dkdv"):
        def recording(grid, *args, _launch=getattr(ops, name), _name=name, **kwargs):
            launched.append((_name, kwargs["BLOCK_DV"], kwargs["BLOCK_DV_TAIL"]))
            return _launch(grid, *args, **kwargs)
        monkeypatch.setattr(ops, name, recording)
    q, k, _ = random_qkv(2, 4, 2, 37, 45, head_dim, dtype, DEVICE)
    v = torch.randn(2, 2, 45, value_dim, device=DEVICE, dtype=dtype)
    sinks = torch.randn(4, device=DEVICE, dtype=torch.float32) * 2
    grad_out = torch.randn(2, 4, 37, value_dim, device=DEVICE, dtype=dtype)
    check_input_gradients(dict(q=q, k=k, v=v), grad_out, causal=True, sinks=sinks,
                          attention_mask=padding_mask("holes", 2, 45),
                          seqused_q=torch.tensor([37, 30], device=DEVICE, dtype=torch.int32))
    assert {name for name, *_ in launched} == {"_launch_fwd", "_launch_bwd_dq", "_launch_bwd_dkdv"}
    assert {tuple(launch[1:]) for launch in launched} == {{80: (64, 16), 96: (64, 32)}[value_dim]}


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim, value_dim", [(192, 128), (128, 64)], ids=["deepseek", "gluon-head-dim"])
def test_value_head_dim_at_model_sizes_gpu(monkeypatch, head_dim, value_dim):
    """bf16 multi-head latent attention at DeepSeek-V3's head dims, and a q/k head dim the Gluon kernels take, against
    the float64 oracle: the Triton kernels run them, except at DeepSeek-V3's 192/128 on Hopper, where the Gluon
    forward, dQ and dK/dV kernels take them."""
    launches = {name: count_calls(monkeypatch, ops, name) for name in
                ("_launch_fwd_gluon", "_launch_bwd_dq_gluon", "_launch_bwd_dkdv_gluon") if getattr(ops, name) is not None}
    q, k, _ = random_qkv(2, 8, 8, 1100, 1100, head_dim, torch.bfloat16, DEVICE)
    v = torch.randn(2, 8, 1100, value_dim, device=DEVICE, dtype=torch.bfloat16)
    grad_out = torch.randn(2, 8, 1100, value_dim, device=DEVICE, dtype=torch.bfloat16)
    check_input_gradients(dict(q=q, k=k, v=v), grad_out, causal=True, attention_mask=padding_mask("left", 2, 1100))
    gluon = hopper_with_gluon() and (head_dim, value_dim) == (192, 128)
    assert {name: bool(calls) for name, calls in launches.items()} == {
        name: gluon for name in launches}


def test_backward_mask_with_one_row_for_every_query():
    """A (B, 1, 1, Skv) mask (LayoutLM's extended padding mask) in the backward: per-key spans from a broadcast row."""
    keep = torch.rand(2, 1, 1, 45, device=DEVICE) > 0.3
    check_backward(*random_qkv(2, 4, 2, 37, 45, 32, torch.float32, DEVICE), causal=True, attention_mask=keep)


def test_gqa_dropout_masks_differ_per_query_head():
    keep = dropout_keep_mask((1, 4, 32, 32), 0.5, seed=3)
    assert not torch.equal(keep[0, 0], keep[0, 1])


def test_opcheck():
    q, k, v = random_qkv(2, 4, 2, 17, 33, 16, torch.float32, DEVICE, requires_grad=True)
    key_mask = padding_mask("left", 2, 33)
    seed = torch.tensor([5], device=DEVICE)
    ranges = functional.kept_key_ranges(key_mask)
    seqused_q = torch.tensor([9, 17], device=DEVICE, dtype=torch.int32)
    sinks = torch.randn(1, 4, 1, device=DEVICE, requires_grad=True)  # the op takes them as (B|1, H|1, Sq|1)
    for args in ((key_mask, None, None, None, None, seed, None, True, 0.25, 0.0, 0.1),
                 (key_mask, None, None, ranges, None, None, None, True, 0.25, 0.0, 0.0),
                 (None, None, None, None, None, None, None, False, 0.25, 2.0, 0.0),
                 (key_mask, None, seqused_q, None, None, None, None, True, 0.25, 0.0, 0.0),
                 (key_mask, None, None, None, None, None, sinks, True, 0.25, 0.0, 0.0)):
        torch.library.opcheck(ops.attention_forward, (q, k, v, *args))


@pytest.mark.parametrize("with_ranges, with_seqused_q, with_sinks",
                         [(False, False, False), (True, False, False), (False, True, False), (False, False, True)])
def test_compile_fullgraph_forward_backward(with_ranges, with_seqused_q, with_sinks):
    torch._dynamo.reset()
    q, k, v = random_qkv(2, 4, 2, 33, 33, 32, torch.float32, DEVICE, requires_grad=True)
    mask = padding_mask("right", 2, 33)
    ranges = functional.kept_key_ranges(mask) if with_ranges else None
    seqused_q = mask.sum(1, dtype=torch.int32) if with_seqused_q else None
    sinks = torch.randn(4, device=DEVICE, requires_grad=with_sinks) if with_sinks else None
    inputs = (q, k, v) + ((sinks,) if with_sinks else ())

    def step(q, k, v, sinks=None):
        out = attention(q, k, v, causal=True, attention_mask=mask, kept_key_ranges=ranges, seqused_q=seqused_q,
                        sinks=sinks)
        return (out * out).sum()

    compiled = torch.compile(step, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    loss = compiled(*inputs)
    grads = torch.autograd.grad(loss, inputs)
    loss_ref = step(*inputs)
    grads_ref = torch.autograd.grad(loss_ref, inputs)
    assert torch.allclose(loss, loss_ref, atol=1e-5)
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-5)



class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_inference_skips_the_dispatcher_with_the_same_result(monkeypatch):
    q, k, v = random_qkv(2, 4, 2, 3, 70, 32, torch.float32, DEVICE)
    key_mask = padding_mask("left", 2, 70)
    through_op = ops.attention_forward(q, k, v, key_mask, None, None, None, None, None, None, True, 32 ** -0.5, 0.0,
                                       0.0)[0]

    def refuse(*args):
        raise AssertionError("the custom op was called for a plain inference call")

    monkeypatch.setattr(ops, "attention_forward", refuse)
    with torch.no_grad():
        direct = attention(q, k, v, causal=True, attention_mask=key_mask)
    assert torch.equal(direct, through_op.transpose(1, 2))
    assert torch.equal(attention(q, k, v, causal=True, attention_mask=key_mask), direct)  # no input needs grad


def test_eager_training_skips_the_dispatcher_with_the_same_gradients(monkeypatch):
    q, k, v = random_qkv(2, 4, 2, 33, 70, 32, torch.float32, DEVICE)
    key_mask = padding_mask("left", 2, 70)
    grad_out = torch.randn_like(q)
    op_calls = []
    monkeypatch.setattr(ops, "attention_forward",
                        lambda *args, op=ops.attention_forward: op_calls.append(1) or op(*args))

    def run():
        torch.manual_seed(0)  # the same dropout seed for both paths
        return grads_of(lambda a, b, c: attention(a, b, c, causal=True, attention_mask=key_mask, dropout_p=0.2),
                        q, k, v, grad_out)

    eager = run()
    assert op_calls == []
    monkeypatch.setattr(functional, "_runs_eagerly", lambda tensors: False)
    through_op = run()
    assert op_calls == [1]
    for name, a, b in zip(("out", "dq", "dk", "dv"), eager, through_op):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("mask_kind", ["key", "dense"])
def test_eager_backward_reuses_the_forward_mask_summaries(monkeypatch, mask_kind):
    """Eager training summarises each mask once: the backward takes the forward's key range (key mask) or row
    spans (dense mask) and launches only what the forward did not compute (the per-key spans). The custom op's
    backward, which has no forward context, summarises again; both give the same gradients."""
    q, k, v = random_qkv(2, 4, 2, 40, 70, 32, torch.float32, DEVICE)
    mask = padding_mask("left", 2, 70) if mask_kind == "key" else structured_mask("sliding", 2, 1, 40, 70)
    grad_out = torch.randn_like(q)
    launcher = "_launch_key_ranges" if mask_kind == "key" else "_launch_visible_spans"
    launches = count_calls(monkeypatch, ops, launcher)

    def run():
        launches.clear()
        return grads_of(lambda a, b, c: attention(a, b, c, causal=True, attention_mask=mask), q, k, v, grad_out)

    eager = run()
    assert len(launches) == (1 if mask_kind == "key" else 2)
    monkeypatch.setattr(functional, "_runs_eagerly", lambda tensors: False)
    through_op = run()
    assert len(launches) == (2 if mask_kind == "key" else 3)
    for name, a, b in zip(("out", "dq", "dk", "dv"), eager, through_op):
        assert torch.equal(a, b), name
    ref64, same = (grads_of(lambda a, b, c: attention_reference(a, b, c, causal=True, attention_mask=mask),
                            *(t.to(dtype) for t in (q, k, v, grad_out))) for dtype in (torch.float64, q.dtype))
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), eager, ref64, same):
        assert_close_to_reference(a, b, c, factor=3.0, what=name)


def test_eager_backward_without_an_output_gradient():
    """A node downstream may give the output no gradient at all (here a Function returning None): the inputs then
    get none either, as with PyTorch's own ops, instead of a backward over a zero-filled gradient."""
    class NoGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return None

    q, k, v = random_qkv(1, 2, 2, 16, 24, 16, torch.float32, DEVICE, requires_grad=True)
    (NoGradient.apply(attention(q, k, v, causal=True)).sum() + q.sum()).backward()
    assert k.grad is None and v.grad is None
    assert torch.equal(q.grad, torch.ones_like(q))


def test_grad_and_dispatch_modes_go_through_the_op():
    q, k, v = random_qkv(1, 2, 2, 5, 40, 16, torch.float32, DEVICE, requires_grad=True)
    with _RecordOps() as recorder:
        attention(q, k, v, causal=True)
    assert "hf_triton_attn.attention_forward.default" in recorder.names
    with torch.no_grad(), _RecordOps() as recorder:
        attention(q, k, v)
    assert "hf_triton_attn.attention_forward.default" in recorder.names


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape, causal", [((2, 16, 4, 1024, 1024, 128), True), ((1, 8, 2, 777, 1500, 64), False),
                                           ((2, 4, 4, 512, 512, 256), True), ((4, 12, 12, 300, 300, 96), False),
                                           ((2, 8, 2, 700, 700, 512), True), ((1, 4, 4, 300, 500, 512), False)])
def test_backward_large_shapes_gpu(dtype, shape, causal):
    check_backward(*random_qkv(*shape, dtype, DEVICE), causal=causal)


def test_backward_config_head_dim_192_causal():
    """Head dim 192 in two tiles (q/k and v at 128 + 64) under a causal mask takes 32 x 128 dK/dV tiles, 16-bit and
    without dropout only; head dim 256 in one tile, and 192 without a causal mask, keep 64 x 64."""
    split = configs.backward_config(256, 2, False, False, True, 4096, True)
    assert split.dkdv == configs.LaunchConfig(32, 128, 8, 2)
    for args in [(256, 2, False, False, True, 4096, False), (256, 2, False, False, False, 4096, True),
                 (256, 2, False, True, True, 4096, True)]:
        assert configs.backward_config(*args).dkdv == configs.LaunchConfig(64, 64, 8, 2)
    assert configs.backward_config(256, 4, False, False, True, 4096, True).dkdv.block_n == 32
    assert split.dq == configs.backward_config(256, 2, False, False, True, 4096, False).dq


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("seqlen", [1000, 2100])
@pytest.mark.parametrize("mask_kind", ["none", "key", "dense"])
def test_backward_launch_configs_gpu(dtype, heads, seqlen, mask_kind):
    """Head dim 128's two dK/dV tiles (causal rows of at most BWD_D128_SHORT_CAUSAL_MAX_KEYS keys take narrower
    ones) with no mask, a key-padding mask and a dense one, and the wide tiles without a causal mask."""
    short, long = (configs.backward_config(128, 2, False, False, True, skv)
                   for skv in (seqlen, configs.BWD_D128_SHORT_CAUSAL_MAX_KEYS + 1))
    assert (short != long) == (seqlen <= configs.BWD_D128_SHORT_CAUSAL_MAX_KEYS)
    assert configs.backward_config(128, 2, False, False, False, seqlen) == long
    q, k, v = random_qkv(2, *heads, seqlen, seqlen, 128, dtype, DEVICE)
    check_backward(q, k, v, causal=True, attention_mask=launch_config_mask(mask_kind, 2, seqlen))
    if mask_kind == "none":
        check_backward(q, k, v, causal=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape, causal", [((4, 16, 4, 1000, 1000, 128), True), ((4, 12, 12, 512, 512, 64), False),
                                           ((2, 4, 4, 700, 700, 256), True)])
def test_seqused_q_right_padding_gpu(dtype, shape, causal):
    """A right-padded batch at the GPU's tile sizes: padding rows left out, with the key mask a model passes."""
    batch, seqlen = shape[0], shape[3]
    lengths = torch.tensor([seqlen, seqlen // 2 + 1, 0, 130][:batch], device=DEVICE, dtype=torch.int32)
    mask = torch.arange(seqlen, device=DEVICE)[None, :] < lengths[:, None]
    check_backward(*random_qkv(*shape, dtype, DEVICE), causal=causal, attention_mask=mask, seqused_q=lengths)


@pytest.mark.gpu
@pytest.mark.parametrize("mask_kind", ["key", "dense"])
def test_backward_head_dim_256_masks_gpu(mask_kind):
    """The head_dim 256 backward tiles (wider than the others' per program) with a key mask and a dense one."""
    q, k, v = random_qkv(2, 4, 2, 700, 700, 256, torch.bfloat16, DEVICE)
    mask = padding_mask("right", 2, 700) if mask_kind == "key" else structured_mask("sliding", 2, 1, 700, 700)
    check_backward(q, k, v, causal=True, attention_mask=mask)


@pytest.mark.gpu
def test_backward_padded_large_gpu():
    q, k, v = random_qkv(4, 16, 4, 1000, 1000, 128, torch.bfloat16, DEVICE)
    check_backward(q, k, v, causal=True, attention_mask=padding_mask("right", 4, 1000))


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 4, 2, 300, 300), (1, 4, 4, 200, 456)])
@pytest.mark.parametrize("padding", [None, "left", "holes"])
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
def test_backward_after_hopper_forward_gpu(monkeypatch, causal, shape, padding, head_dim):
    """The backward kernels take the Gluon forward's output and log-sum-exp (Hopper, head_dims 64, 128 and 256), and
    the key range it computed for a key-padding mask."""
    calls = gluon_forward_calls(monkeypatch)
    mask = None if padding is None else padding_mask(padding, shape[0], shape[4])
    check_backward(*random_qkv(*shape, head_dim, torch.bfloat16, DEVICE), causal=causal, attention_mask=mask)
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sink_kind", ["head", "row"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_backward_after_hopper_forward_with_sinks_gpu(monkeypatch, causal, sink_kind, head_dim):
    """The gradients of q, k, v and the sinks when the Gluon forward joined the sinks: the backward kernels read them
    only through its log-sum-exp, and the sinks' gradient through it and the output. Left padding: under a causal
    mask some rows see no key, and with a -inf sink (random_sinks) nothing at all."""
    calls = gluon_forward_calls(monkeypatch)
    q, k, v = random_qkv(2, 4, 2, 300, 300, head_dim, torch.bfloat16, DEVICE)
    sinks = random_sinks(sink_kind, 2, 4, 300, torch.bfloat16)
    check_input_gradients(dict(q=q, k=k, v=v, sinks=sinks), torch.randn_like(q), causal=causal,
                          attention_mask=padding_mask("left", 2, 300))
    assert len(calls) == 1


def test_hopper_dq_config_applies_only_where_measured():
    """The Gluon dQ kernel is Hopper-only and 16-bit, head_dims 80, 96, 128 and 192 and q/k 192 with v 128 (multi-head
    latent attention) from GLUON_MIN_QUERIES queries; anything else (head_dim 64, where it measured a tie; other value
    head dims) keeps the Triton dQ kernel, and so does every call in the interpreter or on the CPU."""
    hopper = (9, 0)
    for head_dim in (80, 96, 128):
        assert configs.hopper_dq_config(head_dim, 2, hopper, configs.GLUON_MIN_QUERIES) is not None
        assert configs.hopper_dq_config(head_dim, 2, hopper, configs.GLUON_MIN_QUERIES, head_dim) is not None
    assert configs.hopper_dq_config(192, 2, hopper, configs.GLUON_MIN_QUERIES, 128).stages == 2
    assert configs.hopper_dq_config(192, 2, hopper, configs.GLUON_MIN_QUERIES).block_n == 32
    for head_dim, itemsize, capability, seqlen_q, value_dim in [
            (32, 2, hopper, 4096, None), (64, 2, hopper, 16384, None), (256, 2, hopper, 4096, None),
            (128, 4, hopper, 4096, None), (128, 2, (8, 0), 4096, None), (128, 2, (10, 0), 4096, None),
            (128, 2, hopper, configs.GLUON_MIN_QUERIES - 1, None),
            (128, 2, hopper, 4096, 64), (192, 4, hopper, 4096, 128),
            (192, 2, hopper, configs.GLUON_MIN_QUERIES - 1, 128), (96, 2, hopper, 4096, 80),
            (80, 4, hopper, 4096, None), (96, 2, hopper, configs.GLUON_MIN_QUERIES - 1, None)]:
        assert configs.hopper_dq_config(head_dim, itemsize, capability, seqlen_q, value_dim) is None
    if not ON_GPU:
        q, k, v = random_qkv(1, 2, 2, 200, 200, 128, torch.float16, DEVICE)
        out = torch.empty(1, 200, 2, 128, dtype=torch.float16)
        assert ops._hopper_dq_config(q, k, v, out, out, None, True, 128 ** -0.5) is None


def test_hopper_dq_compile_failure_names_the_switch(monkeypatch):
    """Should a Triton release no longer compile the Gluon dQ kernel, the error says so and names
    HF_TRITON_ATTN_GLUON=0, which keeps every call on the Triton kernels."""
    if ops._attn_bwd_dq_ws is None:
        pytest.skip("this Triton has no Gluon Hopper API: the Gluon dQ kernel is never taken")
    fail_gluon_launch(monkeypatch, "_launch_bwd_dq_gluon")
    q, k, v = random_qkv(2, 4, 2, 200, 200, 128, torch.float16, DEVICE)
    out = torch.empty(2, 200, 4, 128, dtype=torch.float16)
    lse = torch.empty(2, 4, 200)
    cfg = configs.hopper_dq_config(128, 2, (9, 0), 200)
    with pytest.raises(RuntimeError, match="HF_TRITON_ATTN_GLUON=0") as failure:
        ops._backward_dq_hopper(q, k, v, out, out, torch.empty_like(q), lse, torch.empty_like(lse), None, None, True,
                                128 ** -0.5, cfg)
    assert isinstance(failure.value.__cause__, CompilationError)


def check_two_backwards(q, k, v, causal, mask, calls) -> None:
    """Two backwards one after the other match the oracle, the second finding the persistent kernels' tile counter
    back at zero; the kernel that ``calls`` counts ran in both."""
    for _ in range(2):
        check_backward(q, k, v, causal=causal, attention_mask=mask)
    assert ops._tile_counter(q.device).item() == 0
    assert len(calls) == 2


# The Gluon backward GPU tests draw padding lengths from 2: with one visible key every query's softmax is that key
# alone, so dK's exact value is 0 and PyTorch's softmax backward returns exactly 0 (P * (dP - P * dP)), while the
# kernels compute dP - Delta from two float32 sums (dP = dO . v on the tensor cores, Delta = rowsum(dO * O)) and
# sum their ~1e-6 difference over every query of the group: ~2e-5 at (1, 8, 2, 500, 500), over the tests' 1e-5
# floor. test_one_visible_key_gradients_gpu checks that case against its own bound.
GRADIENT_MIN_LENGTH = 2


def hopper_dq_available() -> bool:
    return hopper_with_gluon() and ops._attn_bwd_dq_ws is not None and configs.GLUON_DQ


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("shape", GLUON_SHAPES)
@pytest.mark.parametrize("padding", [None, "right", "left", "holes"])
@pytest.mark.parametrize("head_dim", [128, 80, 96, 192])
def test_hopper_dq_gpu(monkeypatch, dtype, causal, layout, shape, padding, head_dim):
    """The Gluon dQ kernel (Hopper, head_dim 128, and 80, 96 and 192 with q/k, v, O, dO and dQ in two tiles each; no
    mask or a key-padding one) against the oracle: lengths off its tiles, GQA and MQA, Transformers' (B, S, H, D)
    layout, fewer queries than keys (bottom-right causal), left padding (rows that see no key under a causal mask),
    holes; the dK/dV kernel takes its Delta; and it is the kernel that ran."""
    if not hopper_dq_available():
        pytest.skip(SKIP_WITHOUT_GLUON)
    check_kernel_ran(monkeypatch, "_backward_dq_hopper", check_backward, layout, shape, head_dim, dtype, causal,
                     padding, GRADIENT_MIN_LENGTH)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 8, 2, 500, 500), (1, 4, 1, 1000, 1000)])
@pytest.mark.parametrize("head_dim", [64, 128, 80, 96])
def test_one_visible_key_gradients_gpu(dtype, causal, shape, head_dim):
    """Every query sees key 0 alone (right padding to length 1), the case GRADIENT_MIN_LENGTH leaves out: the output,
    dQ and dV against the oracle as usual, and dK (exactly 0) and dQ (float64's ~1e-16) within 8x the float32 rounding
    expected of dS = dP - Delta, two sums of head_dim products: u32 * sqrt(head_dim) * |dO_i * v_0|_2 per query,
    times scale * q_i summed over the group's queries for dK (random signs: a root sum of squares), times scale * k_0
    for dQ. The backward kernels here are the Gluon ones where they apply (dQ from 128 queries, dK/dV from 512 keys)."""
    batch, heads, kv_heads, seqlen_q, seqlen_k = shape
    q, k, v = random_qkv(batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim, dtype, DEVICE)
    grad_out = torch.randn_like(q)
    mask = torch.zeros(batch, seqlen_k, dtype=torch.bool, device=DEVICE)
    mask[:, 0] = True
    ours = grads_of(lambda a, b, c: attention(a, b, c, causal=causal, attention_mask=mask), q, k, v, grad_out)
    ref64 = grads_of(lambda a, b, c: attention_reference(a, b, c, causal=causal, attention_mask=mask),
                     q.double(), k.double(), v.double(), grad_out.double())
    same = grads_of(lambda a, b, c: attention_reference(a, b, c, causal=causal, attention_mask=mask), q, k, v, grad_out)
    for name, a, b, c in zip(("out", "dv"), ours[::3], ref64[::3], same[::3]):
        assert_close_to_reference(a, b, c, factor=3.0, what=name)
    scale, group = head_dim ** -0.5, heads // kv_heads
    v0 = v[:, :, :1].double().repeat_interleave(group, dim=1)
    ds_rounding = 2.0 ** -24 * head_dim ** 0.5 * (grad_out.double() * v0).norm(dim=-1, keepdim=True)
    dk_bound = scale * (ds_rounding * q.double()).square().unflatten(1, (kv_heads, group)).sum(dim=(2, 3)).sqrt()
    dq_bound = scale * ds_rounding * k[:, :, :1].double().abs().repeat_interleave(group, dim=1)
    assert ref64[2].abs().max() < 1e-12 and ref64[1].abs().max() < 1e-12
    assert ours[2][:, :, 1:].abs().max() == 0, "keys masked out got gradients"
    assert (ours[2][:, :, 0].double().abs() <= 8 * dk_bound).all(), (ours[2][:, :, 0].abs().max(), dk_bound.max())
    assert (ours[1].double().abs() <= 8 * dq_bound + 1e-7).all(), ((ours[1].double().abs() - 8 * dq_bound).max())


def check_latent_attention_gradients(dtype, layout, causal, shape, padding):
    """Multi-head latent attention's head dims (q/k 192, v 128) in ``layout`` against the float64 oracle, under a
    padding mask of kind ``padding`` (None: no mask)."""
    batch, heads, kv_heads, seqlen_q, seqlen_k = shape
    q, k, _ = qkv_in_layout(layout, batch, heads, kv_heads, seqlen_q, seqlen_k, 192, dtype, DEVICE)
    v = qkv_in_layout(layout, batch, heads, kv_heads, seqlen_q, seqlen_k, 128, dtype, DEVICE)[2]
    grad_out = torch.randn(batch, heads, seqlen_q, 128, device=DEVICE, dtype=dtype)
    mask = None if padding is None else padding_mask(padding, batch, seqlen_k)
    check_input_gradients(dict(q=q, k=k, v=v), grad_out, causal=causal, attention_mask=mask)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("shape", GLUON_SHAPES)
@pytest.mark.parametrize("padding", [None, "left", "holes"])
def test_hopper_dq_value_head_dim_gpu(monkeypatch, dtype, causal, layout, shape, padding):
    """Multi-head latent attention's head dims in the Gluon dQ kernel (q, k and dQ at 192 in tiles of 128 and 64
    columns; v, O and dO at 128) against the oracle, with the test shapes of test_hopper_dq_gpu; the Triton dK/dV
    kernel takes its Delta; and it is the kernel that ran."""
    if not hopper_dq_available():
        pytest.skip(SKIP_WITHOUT_GLUON)
    calls = count_calls(monkeypatch, ops, "_backward_dq_hopper")
    check_latent_attention_gradients(dtype, layout, causal, shape, padding)
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "left", "holes", "empty_row"])
def test_hopper_dq_persistent_schedule_gpu(monkeypatch, causal, padding):
    """More tiles than SMs, so each persistent program runs several (its K/V ring carried from one tile to the next),
    in causal sections of 4 heads that do not divide the 15 (batch, head) pairs, and one batch row with no kept key
    (tiles without key blocks between others); then a second backward, which finds the tile counter back at zero."""
    if not hopper_dq_available():
        pytest.skip(SKIP_WITHOUT_GLUON)
    calls = count_calls(monkeypatch, ops, "_backward_dq_hopper")
    batch, heads, seqlen, head_dim = 3, 5, 2500, 128
    q, k, v = random_qkv(batch, heads, 1, seqlen, seqlen, head_dim, torch.bfloat16, DEVICE)
    monkeypatch.setattr(configs, "GLUON_L2_BYTES", 4 * (2 * seqlen * head_dim * 2 // heads))
    assert configs.cdiv(seqlen, 128) * batch * heads > 2 * ops._sm_count(q.device)
    check_two_backwards(q, k, v, causal, schedule_mask(padding, batch, seqlen), calls)


@pytest.mark.gpu
def test_hopper_dq_not_taken_where_it_does_not_apply(monkeypatch):
    """Dense masks, seqused_q, seqused_k, dropout, a softcap, a causal call with more queries than keys, head_dims 64
    and 256, too few queries and the switch keep the Triton dQ kernel, with the oracle's gradients."""
    if not hopper_dq_available():
        pytest.skip(SKIP_WITHOUT_GLUON)
    calls = count_calls(monkeypatch, ops, "_backward_dq_hopper")
    q, k, v = random_qkv(2, 4, 2, 300, 300, 128, torch.bfloat16, DEVICE)
    lengths = torch.tensor([250, 300], device=DEVICE, dtype=torch.int32)
    check_backward(q, k, v, causal=True, attention_mask=structured_mask("sliding", 2, 1, 300, 300))
    check_backward(q, k, v, causal=True, seqused_q=lengths)
    check_backward(q, k, v, causal=True, seqused_k=lengths)
    check_backward(q, k, v, causal=True, softcap=20.0)
    check_backward(q, k[:, :, :200], v[:, :, :200], causal=True)
    check_backward(*random_qkv(1, 2, 2, 300, 300, 256, torch.bfloat16, DEVICE), causal=True)
    check_backward(*random_qkv(1, 2, 2, 300, 300, 64, torch.bfloat16, DEVICE), causal=True)
    check_backward(q[:, :, :configs.GLUON_MIN_QUERIES - 1], k, v, causal=True)
    q_drop, k_drop, v_drop = (t.detach().requires_grad_() for t in (q, k, v))
    attention(q_drop, k_drop, v_drop, causal=True, dropout_p=0.1).sum().backward()
    monkeypatch.setattr(configs, "GLUON_DQ", False)
    check_backward(q, k, v, causal=True)
    assert calls == []


def test_hopper_dkdv_config_applies_only_where_measured():
    """The Gluon dK/dV kernel is Hopper-only and 16-bit. Head_dims 80, 96, 128 (and q/k 192 with v 128, and 192 without
    a causal mask): from GLUON_DKDV_MIN_KEYS keys, but 80-128 under a causal mask without GQA from more than
    BWD_D128_SHORT_CAUSAL_MAX_KEYS (80: GLUON_DKDV_D80_SHORT_CAUSAL_MAX_KEYS).
    Head_dim 64: under a causal mask only with GQA, from GLUON_DKDV_MIN_KEYS keys; without one from
    GLUON_DKDV_D64_FULL_MIN_KEYS keys (GQA: GLUON_DKDV_D64_FULL_GQA_MIN_KEYS), there with LSE and Delta in the scores'
    layout. Anything else keeps the Triton dK/dV kernel, and so does every call in the interpreter or on the CPU."""
    hopper, short, keys = (9, 0), configs.BWD_D128_SHORT_CAUSAL_MAX_KEYS, configs.GLUON_DKDV_MIN_KEYS
    full_keys, full_gqa_keys = configs.GLUON_DKDV_D64_FULL_MIN_KEYS, configs.GLUON_DKDV_D64_FULL_GQA_MIN_KEYS
    assert configs.hopper_dkdv_config(128, 2, hopper, short + 1, 1, True) is not None
    assert configs.hopper_dkdv_config(128, 2, hopper, keys, 1, False) is not None
    assert configs.hopper_dkdv_config(128, 2, hopper, keys, 2, True) is not None
    assert not configs.hopper_dkdv_config(64, 2, hopper, keys, 2, True).stats_in_score_layout
    assert configs.hopper_dkdv_config(64, 2, hopper, full_keys, 1, False).stats_in_score_layout
    assert configs.hopper_dkdv_config(64, 2, hopper, full_gqa_keys, 4, False).stats_in_score_layout
    for head_dim, causal, group in itertools.product((80, 96), (False, True), (1, 4)):
        head_dim_short = configs.GLUON_DKDV_D80_SHORT_CAUSAL_MAX_KEYS if head_dim == 80 else short
        assert configs.hopper_dkdv_config(head_dim, 2, hopper, head_dim_short + 1, group, causal) is not None
        assert configs.hopper_dkdv_config(head_dim, 2, hopper, keys - 1, group, causal) is None
        short_causal_row = configs.hopper_dkdv_config(head_dim, 2, hopper, head_dim_short, group, causal)
        assert (short_causal_row is None) == (causal and group == 1)
    # Multi-head latent attention (q/k 192, v 128) from GLUON_DKDV_MIN_KEYS keys, in 32-query steps, and head_dim 192
    # so without a causal mask only; other value dims keep the Triton kernel.
    assert configs.hopper_dkdv_config(192, 2, hopper, keys, 1, False, 192).block_m == 32
    assert configs.hopper_dkdv_config(192, 2, hopper, 16384, 4, True, 192) is None
    for causal in (False, True):
        assert configs.hopper_dkdv_config(192, 2, hopper, keys, 1, causal, 128).block_m == 32
        for head_dim, value_dim, seqlen_k in [(192, 128, keys - 1), (192, 192, keys - 1), (128, 64, 4096)]:
            assert configs.hopper_dkdv_config(head_dim, 2, hopper, seqlen_k, 1, causal, value_dim) is None
    for head_dim, itemsize, capability, seqlen_k, group, causal in [
            (64, 2, hopper, 16384, 1, True), (64, 2, hopper, keys - 1, 4, True),
            (64, 2, hopper, full_keys - 1, 1, False), (64, 2, hopper, full_gqa_keys - 1, 2, False),
            (32, 2, hopper, 16384, 1, True), (256, 2, hopper, 4096, 1, True), (128, 4, hopper, 4096, 1, True),
            (64, 4, hopper, 16384, 4, True), (128, 2, (8, 0), 4096, 1, True), (128, 2, (10, 0), 4096, 1, False),
            (128, 2, hopper, short, 1, True), (128, 2, hopper, keys - 1, 4, True),
            (128, 2, hopper, keys - 1, 1, False)]:
        assert configs.hopper_dkdv_config(head_dim, itemsize, capability, seqlen_k, group, causal) is None
    if not ON_GPU:
        q, k, v = random_qkv(1, 2, 2, 2048, 2048, 128, torch.float16, DEVICE)
        assert ops._hopper_dkdv_config(q, k, v, q, None, True, 128 ** -0.5) is None


def test_hopper_dkdv_compile_failure_names_the_switch(monkeypatch):
    """Should a Triton release no longer compile the Gluon dK/dV kernel, the error says so and names
    HF_TRITON_ATTN_GLUON=0, which keeps every call on the Triton kernels."""
    if ops._attn_bwd_dkdv_ws is None:
        pytest.skip("this Triton has no Gluon Hopper API: the Gluon dK/dV kernel is never taken")
    fail_gluon_launch(monkeypatch, "_launch_bwd_dkdv_gluon")
    q, k, v = random_qkv(2, 4, 2, 200, 200, 128, torch.float16, DEVICE)
    grad_out = torch.empty(2, 200, 4, 128, dtype=torch.float16)
    lse = torch.empty(2, 4, 200)
    cfg = configs.hopper_dkdv_config(128, 2, (9, 0), 4096, 1, True)
    with pytest.raises(RuntimeError, match="HF_TRITON_ATTN_GLUON=0") as failure:
        ops._backward_dkdv_hopper(q, k, v, grad_out, torch.empty_like(k), torch.empty_like(v), lse,
                                  torch.empty_like(lse), None, None, True, 128 ** -0.5, cfg)
    assert isinstance(failure.value.__cause__, CompilationError)


@pytest.mark.parametrize("head_dim, value_dim", [(128, 128), (80, 80), (96, 96), (192, 128), (192, 192)])
def test_gluon_backward_launches_bind_every_kernel_argument(monkeypatch, head_dim, value_dim):
    """The op layer's Gluon dQ and dK/dV launches (any machine: launchers and descriptors stubbed) name every argument
    of their kernels once, and give q/k and v/O/dO the column tiles of configs.head_dim_tiles and value_dim_tiles:
    a descriptor per tile, the tail's None where there is none."""
    if ops._attn_bwd_dq_ws is None or ops._attn_bwd_dkdv_ws is None:
        pytest.skip("this Triton has no Gluon Hopper API: the Gluon backward kernels are never taken")
    launches = {}
    for launcher, kernel in (("_launch_bwd_dq_gluon", ops._attn_bwd_dq_ws),
                             ("_launch_bwd_dkdv_gluon", ops._attn_bwd_dkdv_ws)):
        def record(grid, *args, _kernel=kernel, **kwargs):
            launches[_kernel] = dict(zip(_kernel.arg_names, args)), kwargs
        monkeypatch.setattr(ops, launcher, record)
    monkeypatch.setattr(ops, "_gluon_descriptor", lambda t, rows, shape=None, strides=None, columns=None: columns)
    monkeypatch.setattr(ops, "_tile_counter", lambda device: None)
    q, k, _ = random_qkv(1, 4, 2, 600, 600, head_dim, torch.float16, DEVICE)
    v = torch.randn(1, 2, 600, value_dim, dtype=torch.float16)
    out = torch.empty(1, 600, 4, value_dim, dtype=torch.float16)
    lse = torch.empty(1, 4, 600)
    ops._backward_dq_hopper(q, k, v, out, out, torch.empty_like(q), lse, torch.empty_like(lse), None, None, True,
                            0.1, configs.hopper_dq_config(head_dim, 2, (9, 0), 600, value_dim))
    dkdv_config = configs.hopper_dkdv_config(head_dim, 2, (9, 0), 600, 2, False, value_dim)  # 192: none when causal
    ops._backward_dkdv_hopper(q, k, v, out, torch.empty_like(k), torch.empty_like(v), lse, torch.empty_like(lse), None,
                              None, True, 0.1, dkdv_config)
    tiles = {"q": configs.head_dim_tiles(head_dim), "k": configs.head_dim_tiles(head_dim),
             **dict.fromkeys(("v", "o", "do"), configs.value_dim_tiles(value_dim))}
    for kernel, (args, kwargs) in launches.items():
        assert set(args) | set(kwargs) == set(kernel.arg_names) | {"maxnreg"}
        assert not set(args) & set(kwargs)
        assert (kwargs["VALUE_DIM"], kwargs["VALUE_DIM_TAIL"]) == tiles["v"]
        for name, (first, tail) in tiles.items():
            if f"desc_{name}" in args:
                assert (args[f"desc_{name}"], args[f"desc_{name}_tail"]) == (first, tail or None), name
    assert len(launches) == 2


def hopper_dkdv_available() -> bool:
    return hopper_with_gluon() and ops._attn_bwd_dkdv_ws is not None and configs.GLUON_DKDV


def take_hopper_dkdv_everywhere(monkeypatch) -> None:
    """Every call takes the Gluon dK/dV kernel's configuration for long rows with GQA (same head dim, dtype, device
    and mask), whatever its own length and heads, so that short test shapes and every head layout reach the kernel;
    where a causal mask has none (head_dim 192), the one without, so that the kernel's causal path stays checked."""
    default = configs.hopper_dkdv_config

    def config(head_dim, itemsize, capability, _, __, causal, value_dim=None):
        return (default(head_dim, itemsize, capability, LONG_ROWS, 4, causal, value_dim)
                or default(head_dim, itemsize, capability, LONG_ROWS, 4, False, value_dim))
    monkeypatch.setattr(configs, "hopper_dkdv_config", config)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, layout", [(torch.bfloat16, "bshd"), (torch.float16, "bhsd")])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", GLUON_SHAPES + [(1, 2, 1, 1, 300)])
@pytest.mark.parametrize("padding", [None, "right", "left", "holes"])
@pytest.mark.parametrize("head_dim", [64, 128, 80, 96, 192])
def test_hopper_dkdv_gpu(monkeypatch, dtype, layout, causal, shape, padding, head_dim):
    """The Gluon dK/dV kernel (Hopper, head_dims 64 and 128, and 80, 96 and 192 with q/k, v, dK and dV in two tiles
    each; no mask or a key-padding one) against the oracle: lengths off its tiles, GQA (query heads summed per kv
    head) and MQA, Transformers' (B, S, H, D) layout, fewer queries than keys (bottom-right causal, a single query),
    left padding (rows that see no key under a causal mask), holes (key rows whose gradients are zero); and it is the
    kernel that ran."""
    if not hopper_dkdv_available():
        pytest.skip(SKIP_WITHOUT_GLUON)
    take_hopper_dkdv_everywhere(monkeypatch)
    check_kernel_ran(monkeypatch, "_backward_dkdv_hopper", check_backward, layout, shape, head_dim, dtype, causal,
                     padding, GRADIENT_MIN_LENGTH)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, layout", [(torch.bfloat16, "bshd"), (torch.float16, "bhsd")])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", GLUON_SHAPES + [(1, 2, 1, 1, 300)])
@pytest.mark.parametrize("padding", [None, "left", "holes"])
def test_hopper_dkdv_value_head_dim_gpu(monkeypatch, dtype, layout, causal, shape, padding):
    """Multi-head latent attention's head dims in the Gluon dK/dV kernel (q, k and dK at 192 in tiles of 128 and 64
    columns, 32-query steps; v, dO and dV at 128) against the oracle, with test_hopper_dkdv_gpu's shapes; and it is
    the kernel that ran."""
    if not hopper_dkdv_available():
        pytest.skip(SKIP_WITHOUT_GLUON)
    take_hopper_dkdv_everywhere(monkeypatch)
    calls = count_calls(monkeypatch, ops, "_backward_dkdv_hopper")
    check_latent_attention_gradients(dtype, layout, causal, shape, padding)
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padding", [None, "left", "holes", "empty_row"])
def test_hopper_dkdv_persistent_schedule_gpu(monkeypatch, causal, padding):
    """More tiles than SMs, so each persistent program runs several (its Q/dO ring carried from one tile to the next),
    in causal sections of 4 (batch, kv head)s that do not divide the 15, and one batch row with no kept key (tiles
    that do no work between others); then a second backward, which finds the tile counter back at zero."""
    if not hopper_dkdv_available():
        pytest.skip(SKIP_WITHOUT_GLUON)
    calls = count_calls(monkeypatch, ops, "_backward_dkdv_hopper")
    batch, heads, kv_heads, seqlen, head_dim = 3, 10, 5, 2500, 128
    q, k, v = random_qkv(batch, heads, kv_heads, seqlen, seqlen, head_dim, torch.bfloat16, DEVICE)
    monkeypatch.setattr(configs, "GLUON_L2_BYTES", 4 * (2 * seqlen * head_dim * 2 * heads // kv_heads))
    assert configs.cdiv(seqlen, 128) * batch * kv_heads > 2 * ops._sm_count(q.device)
    check_two_backwards(q, k, v, causal, schedule_mask(padding, batch, seqlen), calls)


@pytest.mark.gpu
def test_hopper_dkdv_not_taken_where_it_does_not_apply(monkeypatch):
    """Dense masks, seqused_q, seqused_k, dropout, a softcap, a causal call with more queries than keys, head_dim 256,
    head_dim 64 under a causal mask without GQA, short causal rows and the switch keep the Triton dK/dV kernel, with
    the oracle's gradients."""
    if not hopper_dkdv_available():
        pytest.skip(SKIP_WITHOUT_GLUON)
    calls = count_calls(monkeypatch, ops, "_backward_dkdv_hopper")
    seqlen = configs.BWD_D128_SHORT_CAUSAL_MAX_KEYS + 100
    q, k, v = random_qkv(1, 4, 2, seqlen, seqlen, 128, torch.bfloat16, DEVICE)
    lengths = torch.tensor([seqlen - 50], device=DEVICE, dtype=torch.int32)
    check_backward(q, k, v, causal=True, attention_mask=structured_mask("sliding", 1, 1, seqlen, seqlen))
    check_backward(q, k, v, causal=True, seqused_q=lengths)
    check_backward(q, k, v, causal=True, seqused_k=lengths)
    check_backward(q, k, v, causal=True, softcap=20.0)
    check_backward(q, k[:, :, :seqlen - 100], v[:, :, :seqlen - 100], causal=True)
    check_backward(q[:, :, :300], k[:, :, :300], v[:, :, :300], causal=True)
    check_backward(*random_qkv(1, 2, 2, seqlen, seqlen, 256, torch.bfloat16, DEVICE), causal=True)
    check_backward(*random_qkv(1, 2, 2, seqlen, seqlen, 64, torch.bfloat16, DEVICE), causal=True)
    q_drop, k_drop, v_drop = (t.detach().requires_grad_() for t in (q, k, v))
    attention(q_drop, k_drop, v_drop, causal=True, dropout_p=0.1).sum().backward()
    monkeypatch.setattr(configs, "GLUON_DKDV", False)
    check_backward(q, k, v, causal=True)
    assert calls == []


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("padding", [None, "holes"])
def test_tensors_on_a_device_that_is_not_current_gpu(padding):
    """A model split across GPUs (device_map="auto") calls attention on a device that is not the current one, and
    Triton launches on the current one: every launch must go to the tensors' device. Forward and backward, with and
    without a key-padding mask, the mask's kept ranges, and a decoding step; the current device stays as it was."""
    device = torch.device("cuda", 1)
    torch.cuda.set_device(0)
    mask = None if padding is None else padding_mask(padding, 2, 300).to(device)
    check_backward(*random_qkv(2, 4, 2, 300, 300, 128, torch.bfloat16, device), causal=True, attention_mask=mask)
    if mask is not None:
        assert torch.equal(kept_key_ranges(mask).cpu(), kept_key_ranges(mask.to("cuda:0")).cpu())
    check_forward(*random_qkv(2, 8, 2, 1, 1000, 128, torch.bfloat16, device), causal=True)
    assert torch.cuda.current_device() == 0
