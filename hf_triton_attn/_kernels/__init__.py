"""Triton kernels: plain tensors, strides and constexpr flags; nothing here knows Transformers or autograd."""
