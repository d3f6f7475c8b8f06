"""Triton flash-attention for Hugging Face Transformers.

``import hf_triton_attn`` registers ``attn_implementation="triton"`` (and ``"triton_skip_padding"``, which leaves
out the right padding of causal self-attention: see :func:`triton_attention_forward`); :func:`attention` is the
functional API
(:func:`attention_bshd` returns its output in the (batch, seqlen_q, heads, head_dim) layout itself), and
:func:`kept_key_ranges` summarises a key-padding mask once for every call that shares it.
"""
from .functional import attention, attention_bshd, kept_key_ranges
from .hf import SKIP_PADDING_ATTN_IMPLEMENTATION, register, triton_attention_forward
from .masks import triton_attention_mask

__version__ = "0.1.0"
__all__ = ["attention", "attention_bshd", "kept_key_ranges", "register", "triton_attention_forward",
           "triton_attention_mask", "__version__"]

register()
register(SKIP_PADDING_ATTN_IMPLEMENTATION, skip_padding_rows=True)
