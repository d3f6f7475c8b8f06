"""A plain-PyTorch oracle with the exact semantics of :func:`hf_triton_attn.attention`, shared by tests and benchmarks.

Materialises the full score matrix: for checking, not for speed. Pass float64 inputs for a reference.
"""
import math
from typing import Optional

import torch


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
    causal: bool = False, scale: Optional[float] = None, attention_mask: Optional[torch.Tensor] = None,
    seqused_k: Optional[torch.Tensor] = None, seqused_q: Optional[torch.Tensor] = None,
    softcap: Optional[float] = None,
    dropout_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0, sinks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Same arguments as :func:`hf_triton_attn.attention`; ``dropout_mask`` (B, H, Sq, Skv) keep-flags, if given,
    replaces random dropout so a kernel's mask can be checked exactly."""
    batch, heads, seqlen_q, head_dim = q.shape
    kv_heads, seqlen_k = k.shape[1], k.shape[2]
    group = heads // kv_heads
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    keys = torch.arange(seqlen_k, device=q.device)
    kv_end = torch.full((batch,), seqlen_k, device=q.device) if seqused_k is None else seqused_k.clamp(max=seqlen_k)
    keep = (keys[None, :] < kv_end[:, None])[:, None, None, :]
    if causal:
        q_pos = torch.arange(seqlen_q, device=q.device)[None, :] + (kv_end[:, None] - seqlen_q)
        keep = keep & (keys[None, None, :] <= q_pos[:, :, None])[:, None]
    if attention_mask is not None:
        if attention_mask.dim() == 2:
            keep = keep & attention_mask[:, None, None, :]
        elif attention_mask.dtype == torch.bool:
            keep = keep & attention_mask
        else:
            # -inf entries mask through ``keep`` (masked_fill), so rows that see nothing get zero gradients, not NaN.
            hidden = attention_mask == float("-inf")
            keep = keep & ~hidden
            scores = scores + attention_mask.masked_fill(hidden, 0.0).to(scores.dtype)
    scores = scores.masked_fill(~keep, float("-inf"))
    if sinks is not None:
        # As GPT-OSS's eager attention: one more column per row, dropped after the softmax.
        sinks = sinks[None, :, None] if sinks.dim() == 1 else sinks
        sink_column = sinks.to(scores.dtype).expand(batch, heads, seqlen_q)[..., None]
        # A -inf sink is no sink: masked_fill stops its gradient, which a row that sees nothing at all would make NaN.
        sink_column = sink_column.masked_fill(sink_column == float("-inf"), float("-inf"))
        scores = torch.cat([scores, sink_column], dim=-1)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    if sinks is not None:
        probs = probs[..., :-1]
    if dropout_mask is not None:
        probs = probs * dropout_mask / (1.0 - dropout_p)
    if seqused_q is not None:
        padding_rows = torch.arange(seqlen_q, device=q.device)[None, :] >= seqused_q[:, None]
        probs = probs.masked_fill(padding_rows[:, None, :, None], 0.0)
    return torch.matmul(probs, v)
