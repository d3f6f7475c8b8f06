"""Triton flash-attention for Hugging Face Transformers.

``import hf_triton_attn`` registers ``attn_implementation="triton"``; :func:`attention` is the functional API.
"""
from .functional import attention
from .hf import register, triton_attention_forward
from .masks import triton_attention_mask

__version__ = "0.1.0"
__all__ = ["attention", "register", "triton_attention_forward", "triton_attention_mask", "__version__"]

register()
