"""Transformers' masks in the kernel's compact form: the mask function registered for ``"triton"``.

Transformers calls :func:`triton_attention_mask` (through ``AttentionMaskInterface``) once per forward and
hands its result, unchanged, to every attention layer as ``attention_mask``. It returns:

- ``None``: every key is valid; causality comes from the layer's ``is_causal``. A bidirectional mask function's
  result is never None (while not tracing) but an all-True mask recorded as such, which layers hand the kernels as
  None: a module that does not say whether it is causal takes the mask's kind (:func:`_as_bidirectional`).
- a (batch, kv_length) boolean key-validity mask: padding (left, right, holes) and the unwritten tail of a
  static cache. Layers with fewer queries than keys (a cache) align the causal diagonal to the cache position that
  this function records for the mask it returns (:func:`keys_in_use_cached`), as eager's mask does.
- a (batch, 1, q_length, kv_length) boolean mask whenever the composed ``mask_function`` is anything but
  plain causal or bidirectional (sliding windows, packed sequences, image-token overlays, chunks, blocks):
  built by Transformers' own ``sdpa_mask`` with every shortcut disabled and applied by the kernel as given.
"""
from typing import Optional, Union

import torch
from transformers.masking_utils import (bidirectional_mask_function, causal_mask_function, prepare_padding_mask,
                                       sdpa_mask)

from .functional import kept_key_ranges

_COMPACT_MASK_FUNCTIONS = (causal_mask_function, bidirectional_mask_function)
# Model types whose own attention code (it calls no attention function) applies the mask made for the model's
# attn_implementation, adding it to its scores as eager's additive mask: ours is for our kernels only. Found by
# scripts/model_sweep.py (a model that never calls the attention function, yet differs from eager).
_OWN_ATTENTION_READS_THE_MASK = {"git": "GIT's text layers"}


def triton_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Union[int, torch.Tensor] = 0,
    kv_offset: int = 0,
    mask_function=causal_mask_function,
    attention_mask: Optional[torch.Tensor] = None,
    device: Union[torch.device, str] = "cpu",
    use_vmap: bool = False,
    **kwargs,
) -> Optional[torch.Tensor]:
    model_type = getattr(kwargs.get("config"), "model_type", None)
    if model_type in _OWN_ATTENTION_READS_THE_MASK:
        raise NotImplementedError(
            f"{_OWN_ATTENTION_READS_THE_MASK[model_type]} compute attention in their own code, which adds the attention "
            f"mask to the scores as eager's additive mask; the mask attn_implementation='triton' makes is for its "
            f"kernels and would silently lose causality and padding there. Load this model with "
            f"attn_implementation='eager'.")
    if mask_function not in _COMPACT_MASK_FUNCTIONS:
        return sdpa_mask(
            batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
            mask_function=mask_function, attention_mask=attention_mask, allow_is_causal_skip=False,
            allow_is_bidirectional_skip=False, use_vmap=use_vmap, device=device,
        )
    key_valid = _key_validity(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask, device)
    if mask_function is bidirectional_mask_function:
        return _as_bidirectional(key_valid, batch_size, kv_length, device)
    if key_valid is None:
        return None
    return _with_query_positions(key_valid, q_length, q_offset, kv_offset)


def _key_validity(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask, device):
    """The (batch, kv_length) key-validity mask, or None where every key is valid."""
    if attention_mask is None:
        if isinstance(q_offset, int) and q_offset + q_length == kv_offset + kv_length:
            return None
        # A static cache (tensor q_offset) holds kv_length slots of which only q_offset + q_length are written:
        # since Transformers 5.18 generate() drops an all-ones 2D mask, so the tail is masked from the offsets.
        written = torch.arange(kv_offset, kv_offset + kv_length, device=device) < q_offset + q_length
        return written.expand(batch_size, kv_length)
    key_valid = prepare_padding_mask(attention_mask.to(device=device, dtype=torch.bool), kv_length, kv_offset)
    key_valid = key_valid[:, kv_offset: kv_offset + kv_length]
    no_tail = isinstance(q_offset, int) and q_offset + q_length == kv_offset + kv_length
    if no_tail and not _is_tracing() and bool(key_valid.all()):
        return None
    return key_valid


def _as_bidirectional(key_valid: Optional[torch.Tensor], batch_size: int, kv_length: int, device):
    """A bidirectional mask function's result: its key-validity mask, recorded as bidirectional, and where every key
    is valid an all-True one recorded as such (not None, which says nothing of the mask function). A layer whose
    module does not say whether it is causal (some encoders: Splinter, ALIGN's and CLAP's text towers) then takes
    the mask's kind, as eager does, rather than Transformers' default of causal; the all-True mask reaches the
    kernels as None (:func:`bidirectional_mask_keeps_every_key`). Nothing is recorded while tracing."""
    if _is_tracing():
        return key_valid
    keeps_every_key = key_valid is None
    if keeps_every_key:
        key_valid = torch.ones(batch_size, kv_length, dtype=torch.bool, device=device)
    _remember("bidirectional", key_valid, None, keeps_every_key)
    return key_valid


def bidirectional_mask_keeps_every_key(attention_mask: Optional[torch.Tensor]) -> Optional[bool]:
    """For a mask :func:`triton_attention_mask` made for a bidirectional mask function: whether it keeps every key;
    None for any other mask (a causal one, a 4D one, None, or one made while tracing)."""
    if attention_mask is None or attention_mask.dim() != 2 or _is_tracing():
        return None
    return _recall("bidirectional", attention_mask, None)


def _with_query_positions(key_valid: torch.Tensor, q_length: int, q_offset: Union[int, torch.Tensor],
                          kv_offset: int) -> torch.Tensor:
    """``key_valid``, with one past each row's newest query among the keys recorded for it where a causal mask has
    fewer queries than keys (a cache): the cache position ``q_offset + q_length - kv_offset``, the same for every row.
    The layers take it as ``seqused_k`` (:func:`keys_in_use_cached`), so that query i sees the keys up to its own
    position, as in eager's mask, whatever the padding. The mask alone cannot say where that is: a right-padded
    prompt written into a static cache ends in padding and then in the unwritten tail. While tracing nothing is
    recorded, and the layers fall back on :func:`keys_in_use`."""
    batch_size, kv_length = key_valid.shape
    if q_length != kv_length and not _is_tracing():
        newest = q_offset + (q_length - kv_offset)
        if isinstance(newest, torch.Tensor):
            in_use = newest.to(device=key_valid.device, dtype=torch.int32).reshape(1).repeat(batch_size)
        else:
            in_use = torch.full((batch_size,), newest, device=key_valid.device, dtype=torch.int32)
        _remember("keys_in_use", key_valid, None, in_use)
    return key_valid


def keys_in_use(key_valid: torch.Tensor) -> torch.Tensor:
    """Per row, one past the last valid key: where the newest query sits when continuing from a cache, for masks
    without a recorded position (:func:`_with_query_positions`: while tracing, or a mask this module did not make).

    With a cache, queries are the newest tokens, so the last valid key of a row is the last query's own key when
    the padding is on the left (it and a static cache's unwritten tail both lie elsewhere). Right padding has no
    such anchor, as with FlashAttention-2.
    """
    positions = torch.arange(1, key_valid.shape[-1] + 1, device=key_valid.device, dtype=torch.int32)
    return (key_valid.to(torch.int32) * positions).amax(dim=-1)


# Per kind of summary, the latest calls' (mask, its version counter, the other input, the summary), newest first.
_latest_summaries: dict[str, list[tuple]] = {}
# Masks remembered per kind: a decoder layer alternates between its self-attention mask and its cross-attention one.
_MASKS_KEPT = 2


def _once_per_mask(kind: str, key_valid: torch.Tensor, other: Optional[torch.Tensor], summarise):
    """``summarise()`` of the mask ``key_valid`` (and ``other``), computed once per mask rather than once per layer.

    Transformers hands one mask object to every layer of a forward. While decoding, each layer's attention takes
    microseconds of GPU time, and a summary's kernel launches would cost more host time than that; so the result
    for one of the latest masks (the same object, unchanged since: same version counter; the same ``other``
    object) is reused.

    Tensors made under ``torch.inference_mode()`` (generation in pipelines) have no version counter; for them the
    object alone decides. That is safe for the masks this module's mask function returns: it makes a new tensor on
    every forward, and nothing writes to it between the layers.
    """
    result = _recall(kind, key_valid, other)
    return _remember(kind, key_valid, other, summarise()) if result is None else result


def _recall(kind: str, key_valid: torch.Tensor, other: Optional[torch.Tensor]):
    """The ``kind`` summary kept for ``key_valid`` (and ``other``) by :func:`_remember`, or None."""
    version = _version(key_valid)
    for mask, mask_version, mask_other, result in _latest_summaries.get(kind, ()):
        if mask is key_valid and mask_version == version and mask_other is other:
            return result
    return None


def _version(key_valid: torch.Tensor) -> Optional[int]:
    return None if key_valid.is_inference() else key_valid._version


def _remember(kind: str, key_valid: torch.Tensor, other: Optional[torch.Tensor], result):
    """Keeps ``result`` as the ``kind`` summary of ``key_valid`` (and ``other``) for :func:`_once_per_mask`."""
    latest = _latest_summaries.setdefault(kind, [])
    latest.insert(0, (key_valid, _version(key_valid), other, result))
    del latest[_MASKS_KEPT:]
    return result


def keys_in_use_cached(key_valid: torch.Tensor) -> torch.Tensor:
    """One past each row's newest query among the keys: the cache position :func:`triton_attention_mask` recorded
    for this mask, else :func:`keys_in_use`, once per mask (see :func:`_once_per_mask`); on every call while
    tracing."""
    if _is_tracing():
        return keys_in_use(key_valid)
    return _once_per_mask("keys_in_use", key_valid, None, lambda: keys_in_use(key_valid))


def kept_key_ranges_cached(key_valid: torch.Tensor, seqused_k: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """:func:`hf_triton_attn.kept_key_ranges`, once per mask and ``seqused_k`` (see :func:`_once_per_mask`); None
    while tracing or capturing a CUDA graph, where the attention op computes it itself (its launch is then part
    of the graph, or costs no host time on replay)."""
    if _is_tracing() or (key_valid.is_cuda and torch.cuda.is_current_stream_capturing()):
        return None
    return _once_per_mask("kept_key_ranges", key_valid, seqused_k, lambda: kept_key_ranges(key_valid, seqused_k))


def _is_tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()
