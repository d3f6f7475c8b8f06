"""The public attention functions: input validation and mask normalisation over :mod:`hf_triton_attn.ops`."""
import math
from typing import Optional

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import ops

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 512


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    attention_mask: Optional[torch.Tensor] = None,
    seqused_k: Optional[torch.Tensor] = None,
    seqused_q: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    softcap: Optional[float] = None,
    kept_key_ranges: Optional[torch.Tensor] = None,
    sinks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Scaled dot-product attention computed by a fused Triton kernel (flash-attention style).

    Never materialises the Sq x Skv score matrix; memory grows linearly in sequence length. Differentiable
    (Triton backward kernels) and traceable by ``torch.compile(fullgraph=True)``.

    Args:
        q: (batch, heads, seqlen_q, head_dim), float16, bfloat16 or float32; any strides.
        k, v: (batch, kv_heads, seqlen_k, head_dim), same dtype and device as ``q``. ``heads`` must be a
            multiple of ``kv_heads`` (MHA, GQA, MQA): query head ``h`` reads kv head ``h // (heads // kv_heads)``,
            without copying k/v. ``head_dim`` is 1 to 512 and need not be a power of two. ``v`` may have
            another head dim (at most 512; multi-head latent attention, e.g. DeepSeek-V3: 192 for q/k, 128 for
            v), and the output has v's head dim; every kernel reads v as it is, without a copy (on Hopper such
            calls take the Triton kernels, not the Gluon ones).
        causal: mask keys after the query, with the diagonal aligned to the bottom-right corner: query ``i``
            sees keys ``j <= i + kv_end - seqlen_q``, where ``kv_end`` is ``seqused_k[b]`` if given, else
            ``seqlen_k``. With seqlen_q=2, seqlen_k=5 (1 = attended)::

                1 1 1 1 0
                1 1 1 1 1

            so decoding with a cache (seqlen_q=1) sees every key.
        scale: multiplies ``q @ k^T``, finite; default ``1 / sqrt(head_dim)``.
        attention_mask: optional, combined with ``causal`` (a key must pass every mask):

            - (batch, seqlen_k) boolean: key-padding mask, True = attend (left, right or holes).
            - (batch or 1, heads or 1, seqlen_q or 1, seqlen_k) boolean (True = attend) or floating additive
              mask (added to the scaled scores; ``-inf`` masks, and so do values below about -2.4e38, such as
              float32's lowest, which Transformers' eager masks use). Read tile by tile inside the kernel; key
              blocks it hides from a whole tile of queries (``False`` or ``-inf`` throughout) are skipped, and
              blocks inside every row's clear run (a span of ``True``, or of ``0.0``, without holes) are
              computed without reading it.

            Query rows with no visible key return zeros (never NaN).
        seqused_k: optional (batch,) integer tensor: only the first ``seqused_k[b]`` keys of row ``b`` are
            used (e.g. the written part of a static KV cache); the causal diagonal is aligned to it.
        seqused_q: optional (batch,) integer tensor: query rows ``seqused_q[b]`` and later of row ``b`` are
            padding (a right-padded batch): their output is zero, they get zero gradients and no key is read
            for them; the other rows are unchanged (the causal diagonal does not move). Without it every row is
            computed, padding rows too, as eager attention does. Calls with it never take the split-KV
            (decoding) kernel.
        dropout_p: probability of dropping an attention weight (training). The mask comes from a
            counter-based generator seeded from PyTorch's default generator, so ``torch.manual_seed``
            makes runs reproducible, and the backward regenerates the same mask. Each weight is dropped with
            probability ``dropout_p`` rounded to a multiple of 2**-16 (16-bit uniforms, 8 per Philox call).
        softcap: if set, scores become ``softcap * tanh(scores / softcap)`` before masking (Gemma 2).
        kept_key_ranges: optional, with a (batch, seqlen_k) key-padding ``attention_mask`` only: what
            :func:`kept_key_ranges` returns for that mask and ``seqused_k``. Without it each call summarises the
            mask in one small extra kernel launch; the layers of a model share one mask, so computing it once per
            forward saves that launch's host time in every other layer. The caller vouches that it belongs to this
            call's mask and ``seqused_k`` (one of another mask gives wrong results, as a FlexAttention block
            mask of another mask would).
        sinks: optional attention-sink logits, floating: (heads,), one per query head (GPT-OSS's ``sinks``), or
            (batch or 1, heads or 1, seqlen_q or 1), one per query row: each row's softmax takes its sink as one
            more score (not scaled, softcapped or masked) that has no value, so the weights of the keys sum to
            less than one. Differentiable. A row with no visible key returns zeros, as without sinks.

    Returns:
        (batch, heads, seqlen_q, v's head_dim), same dtype as ``q``. It is a transposed view of a contiguous
        (batch, seqlen_q, heads, head_dim) tensor, so ``out.transpose(1, 2)`` costs nothing.

    Raises:
        ValueError: malformed input (ranks, shapes, dtypes, devices, mask shape, CPU tensors without the
            Triton interpreter). NotImplementedError: valid but unsupported requests.
    """
    return attention_bshd(q, k, v, causal=causal, scale=scale, attention_mask=attention_mask, seqused_k=seqused_k,
                          seqused_q=seqused_q, dropout_p=dropout_p, softcap=softcap,
                          kept_key_ranges=kept_key_ranges, sinks=sinks).transpose(1, 2)


def attention_bshd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: Optional[float] = None,
    attention_mask: Optional[torch.Tensor] = None,
    seqused_k: Optional[torch.Tensor] = None,
    seqused_q: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    softcap: Optional[float] = None,
    kept_key_ranges: Optional[torch.Tensor] = None,
    sinks: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """:func:`attention`, returning its output as the contiguous (batch, seqlen_q, heads, head_dim) tensor: the
    layout Transformers' attention functions return, without the two transposes that would cost a short call
    ~3 µs of host time. Same arguments and errors as :func:`attention`."""
    _check_qkv(q, k, v)
    batch, heads, seqlen_q, head_dim = q.shape
    seqlen_k = k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale}.")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}.")
    if dropout_p > 0.0 and seqlen_q * seqlen_k >= 2**31:
        raise NotImplementedError(f"dropout with seqlen_q * seqlen_k >= 2**31 ({seqlen_q} x {seqlen_k}) is not "
                                  "supported: the dropout generator's per-head offsets are 32-bit.")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive or None, got {softcap}.")
    key_mask, dense_mask = _split_mask(attention_mask, q, seqlen_k)
    if seqused_k is not None:
        seqused_k = _seqused_arg(seqused_k, q)
    if seqused_q is not None:
        seqused_q = _seqused_arg(seqused_q, q, "seqused_q")
    if kept_key_ranges is not None:
        _check_kept_key_ranges(kept_key_ranges, key_mask, q)
    if sinks is not None:
        sinks = _sinks_arg(sinks, q)
    seed = None
    if dropout_p > 0.0:
        seed = torch.randint(0, 2**31 - 1, (1,), device=q.device, dtype=torch.int64)
    if not _runs_eagerly((q, k, v, key_mask, seqused_k, seqused_q, kept_key_ranges, dense_mask, sinks)):
        forward = ops.attention_forward
    elif torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                      or (sinks is not None and sinks.requires_grad)):
        # No other input can need a gradient: a mask that does was refused above, the rest are integers.
        forward = ops.EagerAttention.apply
    else:
        forward = ops.forward_impl
    out, _ = forward(q, k, v, key_mask, seqused_k, seqused_q, kept_key_ranges, dense_mask, seed, sinks, causal,
                     float(scale), float(softcap or 0.0), float(dropout_p))
    return out


def kept_key_ranges(attention_mask: torch.Tensor, seqused_k: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Where each row of a key-padding mask keeps keys, for :func:`attention`'s ``kept_key_ranges``.

    Args:
        attention_mask: (batch, seqlen_k) boolean, True = attend, on a CUDA device (or the CPU under the
            Triton interpreter).
        seqused_k: optional (batch,) integer tensor, as given to :func:`attention`: only the first
            ``seqused_k[b]`` keys of row ``b`` count.

    Returns:
        (batch, 3) int32 on the mask's device, per row: the first kept key, one past the last, and 1 when every
        key in between is kept (left or right padding without holes), else 0. Written by one small kernel launch,
        made directly: call it outside ``torch.compile``d code. Compiled calls leave ``kept_key_ranges`` out, and
        the attention op computes the ranges inside the graph.
    """
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2 or attention_mask.dtype != torch.bool:
        raise ValueError(f"kept_key_ranges takes a (batch, seqlen_k) boolean key-padding mask, got "
                         f"{getattr(attention_mask, 'dtype', type(attention_mask).__name__)} "
                         f"{tuple(getattr(attention_mask, 'shape', ()))}.")
    _check_device(attention_mask.device)
    if seqused_k is not None:
        seqused_k = _seqused_arg(seqused_k, attention_mask)
    return ops.kept_key_ranges(attention_mask, seqused_k)


def _runs_eagerly(tensors: tuple[Optional[torch.Tensor], ...]) -> bool:
    """True for a call on plain tensors (None for those not given) under no compiler, tracer, dispatch mode or
    functorch transform.

    The custom op exists for tracing (torch.compile, export, fake tensors, dispatch modes, torch.func); an
    eager call can skip it and launch the kernels directly (``ops.forward_impl``, or ``ops.EagerAttention``
    when a gradient is needed), saving the dispatcher's Python overhead: tens of microseconds per inference
    call, the bulk of a decoding step at short cache lengths, and ~0.1 ms of a forward+backward.
    Same kernels, same results.
    """
    return (not torch.compiler.is_compiling()
            and all(t is None or type(t) is torch.Tensor for t in tensors)
            and _get_current_dispatch_mode() is None
            and not torch._C._are_functorch_transforms_active())


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if not _qkv_ok(q, k, v):
        _explain_bad_qkv(q, k, v)


def _qkv_ok(q, k, v) -> bool:
    """Whether q, k and v pass every check of :func:`_explain_bad_qkv`, in one expression: this runs on every call
    (a decoding step's whole attention call is host-bound), and the checks with their messages took twice as long."""
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        return False
    q_shape, k_shape = q.shape, k.shape
    v_shape = v.shape
    return (len(q_shape) == 4 and len(k_shape) == 4 and len(v_shape) == 4 and k_shape[:3] == v_shape[:3]
            and q.dtype in SUPPORTED_DTYPES and k.dtype == q.dtype and v.dtype == q.dtype
            and k_shape[0] == q_shape[0] and 0 < k_shape[3] == q_shape[3] <= MAX_HEAD_DIM and v_shape[3] <= MAX_HEAD_DIM
            and k_shape[1] > 0 and q_shape[1] % k_shape[1] == 0
            and (q.is_cuda or (ops.INTERPRET and q.is_cpu)) and q.device == k.device == v.device)


def _explain_bad_qkv(q, k, v) -> None:
    """Raise the error that names what is wrong with q, k or v (called once :func:`_qkv_ok` said something is)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4D tensor (batch, heads, seqlen, head_dim), got "
                             f"{getattr(t, 'shape', type(t).__name__)}.")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q has dtype {q.dtype}; supported: float16, bfloat16, float32.")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}.")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}.")
    _check_device(q.device)
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must have the same batch, kv heads and seqlen, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}.")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"k/v {tuple(k.shape)} do not match q {tuple(q.shape)} in batch or head_dim.")
    if q.shape[3] == 0:
        raise ValueError(f"q and k have head_dim 0 ({tuple(q.shape)}); attention needs a head_dim of at least 1.")
    heads, kv_heads = q.shape[1], k.shape[1]
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"the number of query heads ({heads}) must be a multiple of the number of kv heads "
                         f"({kv_heads}).")
    for name, head_dim in (("head_dim", q.shape[3]), ("value head_dim", v.shape[3])):
        if head_dim > MAX_HEAD_DIM:
            raise NotImplementedError(f"{name} {head_dim} is not supported; the kernels take head dims <= "
                                      f"{MAX_HEAD_DIM}.")


def _check_device(device: torch.device) -> None:
    if device.type == "cuda":
        return
    if device.type == "cpu" and ops.INTERPRET:
        return
    if device.type == "cpu":
        raise ValueError(
            "hf_triton_attn runs Triton kernels and needs CUDA tensors: move the model/inputs to a CUDA device, "
            "or set TRITON_INTERPRET=1 before importing hf_triton_attn to run the (slow) Triton interpreter on CPU."
        )
    raise ValueError(f"tensors on {device.type} are not supported; hf_triton_attn needs CUDA tensors.")


def _split_mask(mask: Optional[torch.Tensor], q: torch.Tensor, seqlen_k: int):
    """Return (key_mask, dense_mask): a (B, Skv) key-padding mask goes to the cheap per-key path."""
    if mask is None:
        return None, None
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"attention_mask must be a torch.Tensor or None, got {type(mask).__name__}.")
    if mask.device != q.device:
        raise ValueError(f"attention_mask is on {mask.device} but q is on {q.device}.")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"attention_mask must be boolean (True = attend) or floating (additive), got {mask.dtype}.")
    batch, heads, seqlen_q, _ = q.shape
    if mask.dim() == 2:
        if mask.dtype != torch.bool or tuple(mask.shape) != (batch, seqlen_k):
            raise ValueError(f"a 2D attention_mask must be a boolean key-padding mask of shape (batch, seqlen_k) = "
                             f"{(batch, seqlen_k)}, got {mask.dtype} {tuple(mask.shape)}.")
        return mask, None
    if mask.dim() == 4:
        b, h, m, n = mask.shape
        if b not in (1, batch) or h not in (1, heads) or m not in (1, seqlen_q) or n != seqlen_k:
            raise ValueError(f"a 4D attention_mask must have shape (batch or 1, heads or 1, seqlen_q or 1, seqlen_k) "
                             f"= ({batch} or 1, {heads} or 1, {seqlen_q} or 1, {seqlen_k}), got {tuple(mask.shape)}.")
        if mask.requires_grad and torch.is_grad_enabled():
            raise NotImplementedError("gradients with respect to attention_mask are not supported; detach the mask.")
        # One row for every query (the extended masks of older encoders, e.g. LayoutLM): a view, each row read as
        # the kernels read a full mask's.
        return None, mask if m == seqlen_q else mask.expand(b, h, seqlen_q, n)
    raise ValueError(f"attention_mask must be 2D (batch, seqlen_k) or 4D (batch, heads, seqlen_q, seqlen_k), "
                     f"got {mask.dim()}D {tuple(mask.shape)}.")


def _check_kept_key_ranges(ranges: torch.Tensor, key_mask: Optional[torch.Tensor], q: torch.Tensor) -> None:
    if key_mask is None:
        raise ValueError("kept_key_ranges goes with a (batch, seqlen_k) key-padding attention_mask, and this call has "
                         "none; pass the mask it was computed from, or drop kept_key_ranges.")
    if (not isinstance(ranges, torch.Tensor) or tuple(ranges.shape) != (q.shape[0], 3)
            or ranges.dtype != torch.int32):
        raise ValueError(f"kept_key_ranges must be an int32 tensor of shape (batch, 3) = ({q.shape[0]}, 3), as "
                         f"hf_triton_attn.kept_key_ranges(attention_mask) returns, got "
                         f"{getattr(ranges, 'dtype', type(ranges).__name__)} {tuple(getattr(ranges, 'shape', ()))}.")
    if ranges.device != q.device:
        raise ValueError(f"kept_key_ranges is on {ranges.device} but q is on {q.device}.")


def _sinks_arg(sinks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The validated sinks as a (B|1, H|1, Sq|1) view, in any floating dtype and any strides (the kernels read them
    through their strides)."""
    batch, heads, seqlen_q, _ = q.shape
    ok = isinstance(sinks, torch.Tensor) and sinks.is_floating_point()
    if ok and sinks.dim() == 1:
        ok = sinks.shape[0] == heads
    elif ok:
        ok = sinks.dim() == 3 and all(n in (1, full) for n, full in zip(sinks.shape, (batch, heads, seqlen_q)))
    if not ok:
        raise ValueError(f"sinks must be a floating tensor of shape (heads,) = ({heads},), one logit per query head, "
                         f"or (batch or 1, heads or 1, seqlen_q or 1) = ({batch} or 1, {heads} or 1, {seqlen_q} or 1), "
                         f"one per query row, got {getattr(sinks, 'dtype', type(sinks).__name__)} "
                         f"{tuple(getattr(sinks, 'shape', ()))}.")
    if sinks.device != q.device:
        raise ValueError(f"sinks is on {sinks.device} but q is on {q.device}.")
    return sinks[None, :, None] if sinks.dim() == 1 else sinks


def _seqused_arg(seqused: torch.Tensor, q: torch.Tensor, name: str = "seqused_k") -> torch.Tensor:
    """The validated ``seqused_k``/``seqused_q``, contiguous: the kernels read element b at offset b (a strided view,
    such as one column of a (B, 2) tensor, would be read wrongly)."""
    if (not isinstance(seqused, torch.Tensor) or seqused.dim() != 1 or seqused.shape[0] != q.shape[0]
            or seqused.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be an int32/int64 tensor of shape (batch,) = ({q.shape[0]},), got "
                         f"{getattr(seqused, 'dtype', type(seqused).__name__)} {tuple(getattr(seqused, 'shape', ()))}.")
    if seqused.device != q.device:
        raise ValueError(f"{name} is on {seqused.device} but q is on {q.device}.")
    return seqused.contiguous()
