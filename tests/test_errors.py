"""Bad input gets a clear error naming the problem (raised before any kernel launches)."""
import pytest
import torch
from conftest import DEVICE
from helpers import random_qkv

from hf_triton_attn import attention, kept_key_ranges
from hf_triton_attn.hf import triton_attention_forward


def qkv(**overrides):
    q, k, v = random_qkv(2, 4, 2, 8, 8, 16, torch.float32, DEVICE)
    return {"q": q, "k": k, "v": v, **overrides}


@pytest.mark.parametrize("inputs, match", [
    (dict(q=torch.randn(2, 8, 16)), "q must be a 4D tensor"),
    (dict(q=torch.randn(2, 4, 8, 16, dtype=torch.float64)), "dtype torch.float64"),
    (dict(k=torch.randn(2, 2, 8, 16, dtype=torch.float16)), "share one dtype"),
    (dict(v=torch.randn(2, 2, 9, 16)), "same batch, kv heads and seqlen"),
    (dict(k=torch.randn(3, 2, 8, 16), v=torch.randn(3, 2, 8, 16)), "batch or head_dim"),
    (dict(k=torch.randn(2, 3, 8, 16), v=torch.randn(2, 3, 8, 16)), "multiple of the number of kv heads"),
    (dict(q=torch.randn(2, 4, 8, 0), k=torch.randn(2, 2, 8, 0)), "head_dim of at least 1"),
])
def test_malformed_qkv(inputs, match):
    args = qkv(**{name: t.to(DEVICE) for name, t in inputs.items()})
    with pytest.raises(ValueError, match=match):
        attention(args["q"], args["k"], args["v"])


def test_head_dim_above_512_is_unsupported():
    q = torch.randn(1, 1, 4, 528, device=DEVICE)
    with pytest.raises(NotImplementedError, match="head_dim 528"):
        attention(q, q, q)
    with pytest.raises(NotImplementedError, match="value head_dim 528"):
        attention(q[..., :16], q[..., :16], q)


@pytest.mark.parametrize("mask, match", [
    (torch.ones(2, 8, dtype=torch.int64), "boolean .* or floating"),
    (torch.ones(2, 8), "2D attention_mask must be a boolean key-padding mask"),
    (torch.ones(2, 7, dtype=torch.bool), r"shape \(batch, seqlen_k\)"),
    (torch.ones(3, 1, 8, 8, dtype=torch.bool), r"\(batch or 1, heads or 1, seqlen_q or 1, seqlen_k\)"),
    (torch.ones(2, 1, 3, 8, dtype=torch.bool), r"seqlen_q or 1, seqlen_k\) = \(2 or 1, 4 or 1, 8 or 1, 8\)"),
    (torch.ones(2, 8, 8, dtype=torch.bool), "2D .* or 4D"),
])
def test_malformed_masks(mask, match):
    args = qkv()
    with pytest.raises(ValueError, match=match):
        attention(args["q"], args["k"], args["v"], attention_mask=mask.to(DEVICE))


def test_mask_gradient_is_refused():
    args = qkv()
    mask = torch.zeros(2, 1, 8, 8, device=DEVICE, requires_grad=True)
    with pytest.raises(NotImplementedError, match="gradients with respect to attention_mask"):
        attention(args["q"], args["k"], args["v"], attention_mask=mask)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dropout_p=1.0), r"dropout_p must be in \[0, 1\)"),
    (dict(softcap=-1.0), "softcap must be positive"),
    (dict(scale=float("nan")), "scale must be a finite number, got nan"),
    (dict(scale=float("-inf")), "scale must be a finite number, got -inf"),
    (dict(seqused_k=torch.tensor([8.0, 8.0])), "seqused_k must be an int32/int64 tensor"),
    (dict(seqused_k=torch.tensor([8])), r"shape \(batch,\)"),
    (dict(seqused_q=torch.tensor([8.0, 8.0])), "seqused_q must be an int32/int64 tensor"),
    (dict(seqused_q=torch.tensor([[8, 8]])), r"seqused_q must .* shape \(batch,\) = \(2,\), got torch.int64 \(1, 2\)"),
    (dict(sinks=torch.zeros(2)), r"sinks must be a floating tensor of shape \(heads,\) = \(4,\).* \(2,\)"),
    (dict(sinks=torch.zeros(1, 4)), r"sinks must .* one logit per query head"),
    (dict(sinks=torch.zeros(4, dtype=torch.int32)), r"sinks must be a floating tensor.*torch.int32"),
])
def test_bad_keyword_values(kwargs, match):
    args = qkv()
    kwargs = {name: value.to(DEVICE) if isinstance(value, torch.Tensor) else value for name, value in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        attention(args["q"], args["k"], args["v"], **kwargs)


@pytest.mark.parametrize("mask, ranges, match", [
    (None, torch.zeros(2, 3, dtype=torch.int32), "goes with a .* key-padding attention_mask"),
    (torch.ones(2, 1, 8, 8, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.int32), "goes with a"),
    (torch.ones(2, 8, dtype=torch.bool), torch.zeros(3, 3, dtype=torch.int32), r"shape \(batch, 3\) = \(2, 3\)"),
    (torch.ones(2, 8, dtype=torch.bool), torch.zeros(2, 3), "must be an int32 tensor"),
])
def test_bad_kept_key_ranges(mask, ranges, match):
    args = qkv()
    with pytest.raises(ValueError, match=match):
        attention(args["q"], args["k"], args["v"], attention_mask=None if mask is None else mask.to(DEVICE),
                  kept_key_ranges=ranges.to(DEVICE))


@pytest.mark.parametrize("mask", [torch.ones(2, 1, 8, 8, dtype=torch.bool), torch.ones(2, 8)])
def test_kept_key_ranges_takes_a_boolean_key_padding_mask(mask):
    with pytest.raises(ValueError, match=r"\(batch, seqlen_k\) boolean key-padding mask"):
        kept_key_ranges(mask.to(DEVICE))


def test_dropout_beyond_32_bit_offsets_is_refused():
    q = torch.randn(1, 1, 1, 16, device=DEVICE).expand(1, 1, 2**16, 16)
    k = torch.randn(1, 1, 1, 16, device=DEVICE).expand(1, 1, 2**15, 16)
    with pytest.raises(NotImplementedError, match="32-bit"):
        attention(q, k, k, dropout_p=0.1)


def test_position_bias_gradient_is_refused():
    q = torch.randn(1, 2, 4, 16, device=DEVICE)
    bias = torch.zeros(1, 2, 4, 4, device=DEVICE, requires_grad=True)
    with pytest.raises(NotImplementedError, match="position_bias"):
        triton_attention_forward(torch.nn.Module(), q, q, q, None, position_bias=bias)
