"""The ``attn_implementation="triton"`` backend for Hugging Face Transformers.

:func:`register` puts :func:`triton_attention_forward` into ``transformers.AttentionInterface`` and
:func:`~hf_triton_attn.masks.triton_attention_mask` into ``transformers.masking_utils.AttentionMaskInterface``
under one name. Both are needed: for a name with no mask function, Transformers passes ``attention_mask=None``
to every layer and padding is silently lost.

Two names are registered on import: ``"triton"``, which computes what eager attention computes, padding query rows
included, and ``"triton_skip_padding"``, which leaves out the padding query rows it can recognise (see
:func:`triton_attention_forward`'s ``skip_padding_rows``).

A registered name skips Transformers' capability checks, so every keyword that changes the math is either
implemented here or refused with an error; none is ignored.
"""
import functools
from typing import Optional

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .functional import attention_bshd
from .masks import (bidirectional_mask_keeps_every_key, kept_key_ranges_cached, keys_in_use_cached,
                    triton_attention_mask)

ATTN_IMPLEMENTATION = "triton"
SKIP_PADDING_ATTN_IMPLEMENTATION = "triton_skip_padding"


def triton_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    softcap: Optional[float] = None,
    position_bias: Optional[torch.Tensor] = None,
    s_aux: Optional[torch.Tensor] = None,
    sinks: Optional[torch.Tensor] = None,
    output_attentions: bool = False,
    skip_padding_rows: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Transformers' attention-function contract: q (B, H, Sq, D), k/v (B, Hkv, Skv, D) -> ((B, Sq, H, D), None).

    ``skip_padding_rows`` (what ``"triton_skip_padding"`` sets): in causal self-attention over a key-padding mask
    without a cache offset (a decoder's training step or prompt), query ``i`` is key ``i``'s token, so the rows
    after each sequence's last token are its right padding; they are left out (:func:`attention`'s ``seqused_q``):
    zero output and gradients, no work, as with FlashAttention-2. Valid rows are unchanged. Other calls compute
    every row: without causality a call whose query and key lengths match may be cross-attention, where key
    padding says nothing about the queries.

    Attention sinks are :func:`attention`'s ``sinks``: ``s_aux`` (GPT-OSS and others: one logit per query head) or
    ``sinks`` (Inkling 2: one per query token, (B, H, Sq, 1), as its eager attention concatenates them)."""
    _refuse_unsupported(output_attentions, attention_mask, kwargs)
    sinks = _sinks_of(s_aux, sinks)
    keeps_every_key = bidirectional_mask_keeps_every_key(attention_mask)
    # An explicit is_causal wins over the module's flag (encoders, cross-attention and BERT-as-decoder differ); a
    # module without one is causal (Transformers' default) unless its mask was made bidirectional.
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", keeps_every_key is None)
    if keeps_every_key:
        attention_mask = None
    seqused_k = seqused_q = key_ranges = None
    if attention_mask is not None and attention_mask.dim() == 4:
        # A dense mask from the mask function already holds causality, windows and overlays, as eager's does.
        causal = False
    elif attention_mask is not None:
        if causal and query.shape[2] != key.shape[2]:
            seqused_k = keys_in_use_cached(attention_mask)
        elif causal and skip_padding_rows:
            # One past each row's last token: where its right padding starts (the end, when it has none).
            seqused_q = keys_in_use_cached(attention_mask)
        if position_bias is None and query.shape[2] > 1:
            # A decoding step's single query takes the split-KV kernel, which reads the key mask itself.
            key_ranges = kept_key_ranges_cached(attention_mask, seqused_k)
    if position_bias is not None:
        attention_mask = _with_position_bias(position_bias, attention_mask)
    out = attention_bshd(
        query, key, value,
        causal=causal, scale=scaling, attention_mask=attention_mask, seqused_k=seqused_k, seqused_q=seqused_q,
        dropout_p=dropout, softcap=softcap, kept_key_ranges=key_ranges, sinks=sinks,
    )
    return out, None


def _refuse_unsupported(output_attentions, attention_mask, kwargs) -> None:
    if output_attentions:
        raise ValueError("attn_implementation='triton' never materialises attention weights, so "
                         "output_attentions=True cannot be honoured; load the model with attn_implementation='eager' "
                         "to inspect attention weights.")
    for name, what in (("indices", "sparse attention's selected keys (DeepSeek sparse attention)"),
                       ("block_indices", "block-sparse attention's selected key blocks")):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"{name} ({what}) reached attn_implementation='triton', which attends to every "
                                      f"key the mask allows and cannot honour it; use 'eager' or 'sdpa' for this "
                                      f"model.")
    if kwargs.get("cache") is not None:
        raise NotImplementedError("paged attention caches (continuous batching) are not supported by "
                                  "attn_implementation='triton'.")
    dense_mask = attention_mask is not None and attention_mask.dim() == 4
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is not None and cu_seq_lens.numel() > 2 and not dense_mask:
        raise NotImplementedError("packed sequences (cu_seq_lens_q/k) reached attn_implementation='triton' without "
                                  "a packed-sequence mask; pass position_ids so Transformers builds the mask.")
    sliding_window = kwargs.get("sliding_window")
    if sliding_window is not None and not dense_mask:
        raise NotImplementedError("a sliding_window reached attn_implementation='triton' without the sliding "
                                  "window mask that Transformers builds for it; create the mask with "
                                  "transformers.masking_utils (create_sliding_window_causal_mask).")


def _sinks_of(s_aux: Optional[torch.Tensor], sinks: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The one attention-sink tensor of a call, for :func:`attention`: ``s_aux`` as given, ``sinks`` without its
    trailing singleton dimension."""
    if s_aux is not None and sinks is not None:
        raise ValueError("both s_aux and sinks (attention sinks) were passed to attn_implementation='triton'; a call "
                         "takes one.")
    if sinks is not None and (sinks.dim() != 4 or sinks.shape[-1] != 1):
        raise ValueError(f"sinks passed to attn_implementation='triton' must be (batch, heads, seqlen_q, 1), one "
                         f"logit per query token, got {tuple(sinks.shape)}.")
    return s_aux if sinks is None else sinks.squeeze(-1)


def _with_position_bias(position_bias: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """T5's relative position bias, merged with the mask into one additive 4D mask (as Transformers' sdpa does)."""
    if position_bias.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError("training through T5's position_bias (its gradient) is not supported by "
                                  "attn_implementation='triton'; use 'eager' or 'sdpa' to train this model.")
    if attention_mask is None:
        return position_bias
    if attention_mask.dim() == 2:
        attention_mask = attention_mask[:, None, None, :]
    if attention_mask.dtype == torch.bool:
        return position_bias.masked_fill(~attention_mask, float("-inf"))
    return position_bias + attention_mask


def register(name: str = ATTN_IMPLEMENTATION, *, skip_padding_rows: bool = False) -> None:
    """Register the attention and mask functions under ``name`` (idempotent), the attention function with
    ``skip_padding_rows`` (see :func:`triton_attention_forward`). Done on ``import hf_triton_attn`` for
    ``"triton"`` and, with ``skip_padding_rows=True``, ``"triton_skip_padding"``."""
    forward = (functools.partial(triton_attention_forward, skip_padding_rows=True) if skip_padding_rows
               else triton_attention_forward)
    AttentionInterface.register(name, forward)
    AttentionMaskInterface.register(name, triton_attention_mask)
