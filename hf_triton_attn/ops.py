"""Launchers and PyTorch registration of the attention kernels.

Two custom ops, ``hf_triton_attn::attention_forward`` and ``hf_triton_attn::attention_backward``, each with a
fake (meta) implementation, joined by ``torch.library.register_autograd``: autograd, ``torch.compile``
(``fullgraph=True``) and ``torch.library.opcheck`` all see one opaque op. ``forward_impl`` is the forward op's
body, for callers that need neither autograd nor tracing (the dispatcher's Python overhead is most of a short
decoding step); :class:`EagerAttention` gives eager calls that need gradients the same autograd without the
dispatcher. Inputs are validated in :mod:`hf_triton_attn.functional`; this layer trusts them.

On Hopper, 16-bit forwards at head_dims 80, 96, 128, 192 and 256 (and 64 on long rows) with no mask but causal and
a key-padding one (no seqused_q or seqused_k, dropout or softcap; attention sinks allowed) take the persistent
warp-specialised Gluon kernel of _kernels/fwd_gluon.py (:func:`_hopper_forward_config` says when;
``HF_TRITON_ATTN_GLUON=0`` turns it off), with q, k, v and the output at 80, 96 and 192 in the two tiles of
:func:`configs.head_dim_tiles` and :func:`configs.value_dim_tiles`; it writes the output and log-sum-exp in the
Triton forward's layout and units, so the backward is the same.
Backwards of the same scope (the backward kernels see attention sinks only through the LSE) at head_dims 80, 96, 128
and 192 (and 192/128) compute dQ (and Delta) with the Gluon kernel of _kernels/bwd_dq_gluon.py
(:func:`_hopper_dq_config`, same switch), and dK/dV with the Gluon kernel of _kernels/bwd_dkdv_gluon.py where
:func:`_hopper_dkdv_config` takes them (head_dims 64, 80, 96, 128 and 192, and 192/128), else with the Triton
kernels. Every launch goes through
:class:`hf_triton_attn.launch.KernelLauncher`. The Triton forward reads Q/K/V tiles, and the Triton dQ kernel K/V
tiles, through tensor descriptors (TMA on Hopper) where :func:`configs.forward_uses_tma` and
:func:`configs.dq_uses_tma` pick them and the tensors' strides allow (16-byte aligned, unit stride last), through
pointer arithmetic otherwise; the split-KV (decoding) kernel always through pointers. A v whose head dim differs
from q's and k's (multi-head latent attention) is read at its own head dim by the Triton kernels, and by the Gluon
ones at DeepSeek's 192/128 on Hopper (q and k in tiles of 128 and 64 columns).

Tensor conventions: q (B, H, Sq, D), k (B, Hkv, Skv, D), v (B, Hkv, Skv, Dv) with any strides (Dv = D but in
multi-head latent attention); the output is allocated as (B, Sq, H, Dv), the layout Transformers reshapes to
(B, Sq, H*Dv) without a copy; LSE is (B, H, Sq) float32 in
log2 units. Optional tensors: ``key_mask`` (B, Skv) keep-flags, ``seqused_k`` (B,) keys in use, ``seqused_q`` (B,)
query rows in use (the rest are padding: zero output and gradients, no work), ``key_range``
the key mask's (B, 3) :func:`kept_key_ranges`, ``mask`` a dense (B|1, H|1, Sq, Skv) boolean or additive float
mask, ``seed`` a one-element int64 tensor, ``sinks`` (B|1, H|1, Sq|1) attention-sink logits (one per query row,
broadcast: a logit the row's softmax adds to its denominator, with no value). The kernels join the sinks when they
normalise the rows, so the LSE includes them and the backward kernels need nothing more; the sinks' own gradient is
:func:`_sink_gradient`.
A dense mask gets its spans of visible keys per row (and of queries per key) and its clear runs from one extra
launch, so that the kernels skip the blocks it hides and compute without it the blocks it shows in full
(:func:`_visible_spans_of`); a key mask gets its kept range from another (:func:`kept_key_ranges`), unless the
caller passes it as ``key_range`` (computed once for all the layers that share the mask). Eager autograd hands
the forward's summaries to the backward (:class:`EagerAttention`).
"""
import functools
from typing import NamedTuple, Optional

import torch
import triton
from triton.compiler.errors import CompilationError
from triton.runtime.interpreter import InterpretedFunction
from triton.tools.tensor_descriptor import TensorDescriptor

from . import configs
from ._kernels.bwd import _attn_bwd_dkdv, _attn_bwd_dq
from ._kernels.common import LOG2E
from ._kernels.decode import _attn_combine_splits, _attn_fwd_split
from ._kernels.fwd import _attn_fwd
from ._kernels.key_range import _key_ranges
from ._kernels.mask_range import _visible_spans
from .launch import KernelLauncher

try:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor

    from ._kernels.bwd_dkdv_gluon import _attn_bwd_dkdv_ws
    from ._kernels.bwd_dq_gluon import _attn_bwd_dq_ws
    from ._kernels.fwd_gluon import CONSUMERS, _attn_fwd_ws

    GLUON_CONSUMERS = CONSUMERS.value
except ImportError:  # a Triton without Gluon's Hopper API: the Triton kernels serve every call
    _attn_fwd_ws = _attn_bwd_dq_ws = _attn_bwd_dkdv_ws = None

INTERPRET = isinstance(_attn_fwd, InterpretedFunction)

# Every launch goes through a KernelLauncher, which skips most of Triton's per-launch host work (see launch.py).
_launch_fwd = KernelLauncher(_attn_fwd)
_launch_fwd_split = KernelLauncher(_attn_fwd_split)
_launch_combine_splits = KernelLauncher(_attn_combine_splits)
_launch_bwd_dkdv = KernelLauncher(_attn_bwd_dkdv)
_launch_bwd_dq = KernelLauncher(_attn_bwd_dq)
_launch_key_ranges = KernelLauncher(_key_ranges)
_launch_visible_spans = KernelLauncher(_visible_spans)
_launch_fwd_gluon = KernelLauncher(_attn_fwd_ws) if _attn_fwd_ws is not None else None
_launch_bwd_dq_gluon = KernelLauncher(_attn_bwd_dq_ws) if _attn_bwd_dq_ws is not None else None
_launch_bwd_dkdv_gluon = KernelLauncher(_attn_bwd_dkdv_ws) if _attn_bwd_dkdv_ws is not None else None

_NO_TENSOR_STRIDES = (0, 0)
_GLUON_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16} if _attn_fwd_ws is not None else {}


def _on_tensor_device(fn):
    """Runs ``fn`` with the CUDA device of its first argument (a tensor, or None: nothing to launch) current. Triton
    launches on the current device, and a model split across GPUs (``device_map="auto"``) calls the layers on the
    other devices without making theirs current. A check per call where the device already is current."""
    @functools.wraps(fn)
    def on_device(first, *args, **kwargs):
        if first is not None and first.is_cuda and first.device.index != torch.cuda.current_device():
            with torch.cuda.device(first.device):
                return fn(first, *args, **kwargs)
        return fn(first, *args, **kwargs)
    return on_device


def _dot_precision(dtype: torch.dtype) -> str:
    # float32 inputs keep float32 products (tf32 would cost ~1e-3 relative error against eager).
    return "ieee" if dtype == torch.float32 else "tf32"


def _as_kernel_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if mask is not None and mask.dtype == torch.bool:
        return mask.view(torch.uint8)
    return mask


def _mask_args(key_mask, mask, q, sq, skv):
    """Kernel pointers, strides and flags for the optional masks (broadcast dims get stride 0). A key mask is
    (B, Skv) already (validated in functional.py): no expand, ~1.4 µs of host time per call."""
    key_mask = _as_kernel_mask(key_mask)
    mask = _as_kernel_mask(mask)
    km_strides = _NO_TENSOR_STRIDES
    if key_mask is not None:
        km_strides = key_mask.stride()
    m_strides = (0, 0, 0, 0)
    mask_kind = 0
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], sq, skv)
        m_strides = mask.stride()
        mask_kind = 1 if mask.dtype == torch.uint8 else 2
    return key_mask, mask, km_strides, m_strides, mask_kind


@_on_tensor_device
def kept_key_ranges(key_mask: Optional[torch.Tensor], seqused_k: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Where each row's key mask keeps keys, (B, 3) int32 (see _kernels/key_range.py), or None without a key mask.
    ``key_mask`` is the (B, Skv) boolean mask or the kernels' uint8 view of it from :func:`_mask_args`."""
    key_mask = _as_kernel_mask(key_mask)
    if key_mask is None:
        return None
    ranges = torch.empty((key_mask.shape[0], 3), device=key_mask.device, dtype=torch.int32)
    _launch_key_ranges((key_mask.shape[0],), key_mask, seqused_k, ranges, *key_mask.stride(), key_mask.shape[1],
                       HAS_SEQUSED=seqused_k is not None, BLOCK=1024, num_warps=4)
    return ranges


def _visible_spans_of(mask: Optional[torch.Tensor], by_key: bool = False, group: int = 1):
    """Kernel arguments (spans, three strides) for a dense mask, or (None, 0, 0, 0) without one.

    Spans are (B|1, H|1, Sq, 4) int32 (see _kernels/mask_range.py): per query row, the first key the mask lets it
    see and one past the last, then the row's clear run (the keys where the mask changes nothing); with
    ``by_key``, the same per key over the queries that see it, (B|1, Hkv|1, Skv, 4), merged over the ``group``
    query heads of each kv head (the union of their spans, the intersection of their clear runs). Built from the
    mask as given (before broadcasting), so a mask shared by all heads is read once."""
    if mask is None:
        return None, 0, 0, 0
    mask = _as_kernel_mask(mask)
    batch, heads, sq, skv = mask.shape
    rows, cols = (skv, sq) if by_key else (sq, skv)
    stride_b, stride_h, stride_m, stride_n = mask.stride()
    stride_r, stride_c = (stride_n, stride_m) if by_key else (stride_m, stride_n)
    spans = torch.empty((batch, heads, rows, 4), device=mask.device, dtype=torch.int32)
    if INTERPRET:
        block_r, block_c = 16, 16
    else:
        # A decoding step's mask has a row or a few: wide column blocks, or its few programs walk the row serially
        # (B8 L4096, one row: 12.9 µs of GPU time with 256 columns a step, 2.0 with these; the attention takes 47).
        block_r = min(16, configs.next_power_of_2(rows))
        block_c = max(256, min(configs.next_power_of_2(cols), 4096 // block_r))
    _launch_visible_spans((configs.cdiv(rows, block_r), batch * heads), mask, spans,
                          stride_b, stride_h, stride_r, stride_c, *spans.stride()[:3], heads, rows, cols,
                          IS_ADDITIVE=mask.dtype != torch.uint8, BLOCK_R=block_r, BLOCK_C=block_c,
                          num_warps=1 if INTERPRET else 4)
    if by_key and heads > 1 and group > 1:
        spans = spans.view(batch, heads // group, group, rows, 4)
        spans = torch.stack((spans[..., 0].amin(2), spans[..., 1].amax(2), spans[..., 2].amax(2),
                             spans[..., 3].amin(2)), dim=-1)
    # Stride 0 along a dimension the mask broadcasts, as for the mask itself.
    return spans, *(stride if size > 1 else 0 for stride, size in zip(spans.stride()[:2], spans.shape[:2])), 4


def _flags(key_mask, seqused_k, seqused_q, mask_kind, causal, softcap, dropout_p, dtype):
    return dict(
        IS_CAUSAL=causal,
        HAS_KEY_MASK=key_mask is not None,
        HAS_SEQUSED=seqused_k is not None,
        HAS_SEQUSED_Q=seqused_q is not None,
        MASK_KIND=mask_kind,
        HAS_SOFTCAP=softcap > 0.0,
        HAS_DROPOUT=dropout_p > 0.0,
        DOT_PRECISION=_dot_precision(dtype),
    )


class MaskSummaries(NamedTuple):
    """What one call's launches summarised of its masks: ``key_range`` from :func:`kept_key_ranges` (or the
    caller), ``query_spans`` from :func:`_visible_spans_of`; None where not computed. The backward takes them from
    its forward (eager autograd) rather than reading the masks again."""
    key_range: Optional[torch.Tensor] = None
    query_spans: Optional[tuple] = None


def forward_impl(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    key_mask: Optional[torch.Tensor], seqused_k: Optional[torch.Tensor], seqused_q: Optional[torch.Tensor],
    key_range: Optional[torch.Tensor], mask: Optional[torch.Tensor], seed: Optional[torch.Tensor],
    sinks: Optional[torch.Tensor], causal: bool, scale: float, softcap: float, dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``key_range``: the key mask's :func:`kept_key_ranges`, computed beforehand (a model's layers share it), or
    None. v's head dim may differ from q's and k's (multi-head latent attention); the output has v's."""
    out, lse, _ = _forward(q, k, v, key_mask, seqused_k, seqused_q, key_range, mask, seed, sinks, causal, scale,
                           softcap, dropout_p)
    return out, lse


@_on_tensor_device
def _forward(q, k, v, key_mask, seqused_k, seqused_q, key_range, mask, seed, sinks, causal, scale, softcap,
             dropout_p):
    """:func:`forward_impl`'s body; also returns the :class:`MaskSummaries` it computed or was given."""
    batch, heads, sq, head_dim = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    out = torch.empty((batch, sq, heads, v.shape[3]), device=q.device, dtype=q.dtype)
    lse = torch.empty((batch, heads, sq), device=q.device, dtype=torch.float32)
    if out.numel() == 0:
        return out, lse, MaskSummaries(key_range)
    # The split-KV kernel has no padding query rows to leave out: calls with seqused_q take the forward kernel.
    if seqused_q is None and _takes_split_kv(sq, heads // hkv, skv, dropout_p):
        spans = _forward_split_kv(q, k, v, out, lse, key_mask, seqused_k, mask, sinks, causal, scale, softcap)
        return out, lse, MaskSummaries(key_range, spans)
    value_dim = v.shape[3]
    if seqused_k is None and seqused_q is None and mask is None and softcap == 0.0 and dropout_p == 0.0:
        hopper = _hopper_forward_config(q, k, v, key_mask, causal, scale)
        if hopper is not None:
            key_mask = _as_kernel_mask(key_mask)
            if key_mask is not None and key_range is None:
                key_range = kept_key_ranges(key_mask, None)
            _forward_hopper(q, k, v, out, lse, key_mask, key_range, sinks, causal, scale, hopper)
            return out, lse, MaskSummaries(key_range)
    spans = _visible_spans_of(mask)
    key_mask, mask, km_strides, m_strides, mask_kind = _mask_args(key_mask, mask, q, sq, skv)
    if key_range is None:
        key_range = kept_key_ranges(key_mask, seqused_k)
    block_d, block_d_tail = configs.head_dim_tiles(head_dim)
    block_dv, block_dv_tail = configs.value_dim_tiles(value_dim)
    tma = (configs.forward_uses_tma(head_dim, q.element_size(), INTERPRET)
           and configs.forward_uses_tma(value_dim, q.element_size(), INTERPRET) and _tma_compatible(q, k, v))
    # Tiles as for the wider of the two head dims, padded.
    cfg = configs.forward_config(configs.padded_head_dim(max(head_dim, value_dim)), causal, q.element_size(),
                                 INTERPRET, tma, dropout_p > 0.0, key_mask is not None, skv, mask is not None)
    descriptors = ((_descriptor(q, cfg.block_m), _descriptor(k, cfg.block_n), _descriptor(v, cfg.block_n))
                   if tma else (None, None, None))
    grid = (configs.cdiv(sq, cfg.block_m), batch * heads)
    _launch_fwd(
        grid,
        q, k, v, *descriptors, out, lse, key_mask, key_range, seqused_k, seqused_q, mask, spans[0],
        seed, sinks, scale, softcap, dropout_p,
        *q.stride(), *k.stride(), *v.stride(), *_bhsd_strides(out),
        *km_strides, *m_strides, *spans[1:], *_sink_strides(sinks),
        heads, sq, skv, heads // hkv,
        HEAD_DIM=head_dim, VALUE_DIM=value_dim, BLOCK_D=block_d, BLOCK_D_TAIL=block_d_tail, BLOCK_DV=block_dv,
        BLOCK_DV_TAIL=block_dv_tail, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        **_flags(key_mask, seqused_k, seqused_q, mask_kind, causal, softcap, dropout_p, q.dtype),
        USE_TMA=tma, SCALE_IN_EXP=scale > 0.0 and softcap == 0.0 and mask_kind != 2, HAS_SINKS=sinks is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, maxnreg=cfg.max_registers,
    )
    return out, lse, MaskSummaries(key_range, spans)


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> tuple:
    return torch.cuda.get_device_capability(device)


def _gluon_may_take(kernel, switched_on: bool, q, k, key_mask, scale: float) -> bool:
    """What every Gluon kernel needs before its configuration is looked up: Gluon's Hopper API (``kernel`` imported)
    and its switch on, a CUDA device (not the interpreter), a positive scale (the kernels take row maxima before
    scaling), keys, and a key mask with unit stride along the keys."""
    return (kernel is not None and switched_on and not INTERPRET and q.device.type == "cuda" and scale > 0.0
            and k.shape[2] > 0 and (key_mask is None or key_mask.stride(1) == 1))


def _hopper_forward_config(q, k, v, key_mask, causal, scale) -> Optional[configs.HopperForwardConfig]:
    """The Gluon forward's configuration where it takes this call (no mask but causal and a key-padding one, see
    :func:`_forward`), else None: Gluon's Hopper API present and not switched off (``configs.GLUON_FORWARD``), a
    CUDA device and shape that :func:`configs.hopper_forward_config` accepts, a positive scale (the kernel takes
    row maxima before scaling), keys, no more queries than keys when causal (Skv >= Sq), a key mask with unit
    stride along the keys, and tensors a TMA descriptor can describe."""
    if not _gluon_may_take(_attn_fwd_ws, configs.GLUON_FORWARD, q, k, key_mask, scale):
        return None
    cfg = configs.hopper_forward_config(q.shape[3], q.element_size(), _capability(q.device), q.shape[2], causal,
                                        v.shape[3])
    if cfg is None or (causal and k.shape[2] < q.shape[2]) or not _tma_compatible(q, k, v):
        return None
    return cfg


@functools.lru_cache(maxsize=64)
def _gluon_layout(rows: int, head_dim: int, dtype: torch.dtype):
    return gl.NVMMASharedLayout.get_default_for([1, 1, rows, head_dim], _GLUON_DTYPES[dtype])


def _gluon_compile_failure(kernel: str, head_dim: int) -> RuntimeError:
    """The error for a Gluon kernel this Triton cannot compile: Gluon is Triton's experimental API and changes
    between releases (run on 3.6; compiled with 3.7 and 3.9), and the switch keeps every call on the Triton kernels."""
    return RuntimeError(
        f"hf_triton_attn's Gluon {kernel} (Hopper, head_dim {head_dim}) does not compile with triton "
        f"{triton.__version__}. Set HF_TRITON_ATTN_GLUON=0 before importing hf_triton_attn to use its Triton kernels "
        f"for every call, or use triton 3.6.")


def _gluon_descriptor(t: torch.Tensor, rows: int, shape=None, strides=None, columns=None):
    """A Gluon descriptor over the (B, H, S, D) tensor ``t`` (or over ``t`` seen with ``shape`` and ``strides``) whose
    loads are ``rows`` positions of one head, all D columns or ``columns`` of them, built as :func:`_descriptor` is."""
    shape = list(t.shape) if shape is None else shape
    strides = list(t.stride()) if strides is None else strides
    columns = shape[3] if columns is None else columns
    return _unchecked(GluonTensorDescriptor, base=t, shape=shape, strides=strides, block_shape=[1, 1, rows, columns],
                      layout=_gluon_layout(rows, columns, t.dtype))


def _gluon_tiles(t: torch.Tensor, rows: int, tiles: tuple[int, int], describe=None) -> tuple:
    """Gluon descriptors of ``t``'s rows (see :func:`_gluon_descriptor`; ``describe``, e.g.
    :func:`_gluon_descriptor_bshd`, in its place) in the column tiles ``tiles`` (first, tail) of
    :func:`configs.head_dim_tiles` or :func:`configs.value_dim_tiles`: the first tile's, and the tail's or None."""
    describe = describe or _gluon_descriptor
    first, tail = tiles
    return describe(t, rows, columns=first), describe(t, rows, columns=tail) if tail else None


def _gluon_descriptor_bshd(t: torch.Tensor, rows: int, columns=None):
    """:func:`_gluon_descriptor` over a (B, S, H, D) tensor seen as (B, H, S, D), without building that view."""
    batch, seq, heads, dim = t.shape
    return _gluon_descriptor(t, rows, [batch, heads, seq, dim], list(_bhsd_strides(t)), columns)


# Per (device, CUDA stream): the int32 the Gluon forward's programs take tiles from (see _tile_counter).
_TILE_COUNTERS: dict = {}


def _tile_counter(device: torch.device) -> torch.Tensor:
    """A zeroed int32 for the Gluon forward's tile counter, which each launch leaves zeroed again. Launches on one
    stream run one after another, so an eager launch reuses its stream's counter (no zero fill per call). A launch
    captured into a CUDA graph gets its own, zeroed inside the graph, so that a replay on any stream shares a counter
    with no other work."""
    if _capturing(device):
        return torch.zeros(1, dtype=torch.int32, device=device)
    key = (device, torch.cuda.current_stream(device).cuda_stream)
    counter = _TILE_COUNTERS.get(key)
    if counter is None:
        counter = _TILE_COUNTERS[key] = torch.zeros(1, dtype=torch.int32, device=device)
    return counter


def _gluon_schedule(q, k, causal: bool, block_mw: int) -> tuple[int, int]:
    """(tiles, heads per section) of a persistent Gluon kernel's schedule: a tile is the two consumers' query rows of
    one (batch, head); under a causal mask the tiles go in sections of heads whose K/V fit ``configs.GLUON_L2_BYTES``
    together (see _kernels/fwd_gluon.py's ``_tile``)."""
    batch, heads, sq, head_dim = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    tiles = configs.cdiv(sq, GLUON_CONSUMERS * block_mw) * batch * heads
    heads_per_section = 1
    if causal:
        kv_bytes_per_head = 2 * skv * head_dim * k.element_size() * hkv // heads
        heads_per_section = max(1, min(batch * heads, configs.GLUON_L2_BYTES // kv_bytes_per_head))
    return tiles, heads_per_section


def _forward_hopper(q, k, v, out, lse, key_mask, key_range, sinks, causal, scale,
                    cfg: configs.HopperForwardConfig) -> None:
    """Writes out and lse with the warp-specialised Gluon forward (see _kernels/fwd_gluon.py); ``key_mask`` is the
    kernels' uint8 view with its :func:`kept_key_ranges` ``key_range``, or both None; ``sinks`` (B|1, H|1, Sq|1) or
    None. One persistent program per SM (at most one tile each when there are fewer tiles), each taking the next tile
    from a counter as it finishes one; under a causal mask the tiles go in sections of heads whose K/V fit
    ``configs.GLUON_L2_BYTES`` together. Launched through a :class:`KernelLauncher` like the other kernels."""
    batch, heads, sq, head_dim = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    tiles, heads_per_section = _gluon_schedule(q, k, causal, cfg.block_mw)
    block_d, block_d_tail = configs.head_dim_tiles(head_dim)
    block_dv, block_dv_tail = configs.value_dim_tiles(v.shape[3])
    desc_q, desc_q_tail = _gluon_tiles(q, cfg.block_mw, (block_d, block_d_tail))
    desc_k, desc_k_tail = _gluon_tiles(k, cfg.block_n, (block_d, block_d_tail))
    desc_v, desc_v_tail = _gluon_tiles(v, cfg.block_n, (block_dv, block_dv_tail))
    desc_o = desc_o_tail = None  # the consumers store the output by pointer
    if cfg.tma_store:
        desc_o, desc_o_tail = _gluon_tiles(out, cfg.block_mw, (block_dv, block_dv_tail), _gluon_descriptor_bshd)
    try:
        _launch_fwd_gluon(
            (min(tiles, _sm_count(q.device)),),
            desc_q, desc_q_tail, desc_k, desc_k_tail, desc_v, desc_v_tail, desc_o, desc_o_tail, out, lse, key_mask,
            key_range, sinks, _tile_counter(q.device), scale * LOG2E.value, out.stride(0), out.stride(1),
            out.stride(2), 0 if key_mask is None else key_mask.stride(0), *_sink_strides(sinks), heads, sq, skv,
            heads // hkv, tiles, heads_per_section,
            HEAD_DIM=block_d, HEAD_DIM_TAIL=block_d_tail, VALUE_DIM=block_dv, VALUE_DIM_TAIL=block_dv_tail,
            BLOCK_MW=cfg.block_mw,
            BLOCK_N=cfg.block_n, STAGES=cfg.stages, IS_CAUSAL=causal,
            HAS_KEY_MASK=key_mask is not None, TMA_STORE=cfg.tma_store, Q_SLOTS=cfg.q_slots,
            HAS_SINKS=sinks is not None,
            CONSUMER_REGS=cfg.consumer_regs, num_warps=4, maxnreg=cfg.max_registers,
        )
    except CompilationError as error:
        raise _gluon_compile_failure("forward", head_dim) from error


def _hopper_dq_config(q, k, v, out, grad_out, key_mask, causal, scale) -> Optional[configs.HopperDQConfig]:
    """The Gluon dQ kernel's configuration where it takes this backward (no mask but causal and a key-padding one,
    see :func:`_backward`), else None: the conditions of :func:`_hopper_forward_config` with
    ``configs.GLUON_DQ`` and :func:`configs.hopper_dq_config`, and an output and output gradient a TMA descriptor can
    describe too."""
    if not _gluon_may_take(_attn_bwd_dq_ws, configs.GLUON_DQ, q, k, key_mask, scale):
        return None
    cfg = configs.hopper_dq_config(q.shape[3], q.element_size(), _capability(q.device), q.shape[2], v.shape[3])
    if cfg is None or (causal and k.shape[2] < q.shape[2]) or not _tma_compatible(q, k, v, out, grad_out):
        return None
    return cfg


def _backward_dq_hopper(q, k, v, out, grad_out, dq, lse, delta, key_mask, key_range, causal, scale,
                        cfg: configs.HopperDQConfig) -> None:
    """Writes dq and delta with the warp-specialised Gluon dQ kernel (see _kernels/bwd_dq_gluon.py), scheduled as the
    Gluon forward (:func:`_forward_hopper`); ``key_mask`` is a (B, Skv) mask or None, ``key_range`` its
    :func:`kept_key_ranges`."""
    batch, heads, sq, head_dim = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    key_mask = _as_kernel_mask(key_mask)
    tiles, heads_per_section = _gluon_schedule(q, k, causal, cfg.block_mw)
    qk_tiles = block_d, block_d_tail = configs.head_dim_tiles(head_dim)
    value_tiles = block_dv, block_dv_tail = configs.value_dim_tiles(v.shape[3])
    try:
        _launch_bwd_dq_gluon(
            (min(tiles, _sm_count(q.device)),),
            *_gluon_tiles(q, cfg.block_mw, qk_tiles), *_gluon_tiles(k, cfg.block_n, qk_tiles),
            *_gluon_tiles(v, cfg.block_n, value_tiles),
            *_gluon_tiles(out, cfg.block_mw, value_tiles, _gluon_descriptor_bshd),
            *_gluon_tiles(grad_out, cfg.block_mw, value_tiles, _gluon_descriptor_bshd), dq, lse, delta, key_mask,
            key_range,
            _tile_counter(q.device), scale * LOG2E.value, scale, dq.stride(0), dq.stride(1), dq.stride(2),
            0 if key_mask is None else key_mask.stride(0), heads, sq, skv, heads // hkv, tiles, heads_per_section,
            HEAD_DIM=block_d, HEAD_DIM_TAIL=block_d_tail, VALUE_DIM=block_dv, VALUE_DIM_TAIL=block_dv_tail,
            BLOCK_MW=cfg.block_mw,
            BLOCK_N=cfg.block_n, STAGES=cfg.stages, IS_CAUSAL=causal,
            HAS_KEY_MASK=key_mask is not None, CONSUMER_REGS=cfg.consumer_regs, num_warps=4,
            maxnreg=cfg.max_registers,
        )
    except CompilationError as error:
        raise _gluon_compile_failure("dQ kernel", head_dim) from error


def _hopper_dkdv_config(q, k, v, grad_out, key_mask, causal, scale) -> Optional[configs.HopperDKDVConfig]:
    """The Gluon dK/dV kernel's configuration where it takes this backward (no mask but causal and a key-padding one,
    see :func:`_backward`), else None: the conditions of :func:`_hopper_forward_config` with ``configs.GLUON_DKDV``
    and :func:`configs.hopper_dkdv_config`, and an output gradient a TMA descriptor can describe too."""
    if not _gluon_may_take(_attn_bwd_dkdv_ws, configs.GLUON_DKDV, q, k, key_mask, scale):
        return None
    cfg = configs.hopper_dkdv_config(q.shape[3], q.element_size(), _capability(q.device), k.shape[2],
                                     q.shape[1] // k.shape[1], causal, v.shape[3])
    if cfg is None or (causal and k.shape[2] < q.shape[2]) or not _tma_compatible(q, k, v, grad_out):
        return None
    return cfg


def _backward_dkdv_hopper(q, k, v, grad_out, dk, dv, lse, delta, key_mask, key_range, causal, scale,
                          cfg: configs.HopperDKDVConfig) -> None:
    """Writes dk and dv with the warp-specialised Gluon dK/dV kernel (see _kernels/bwd_dkdv_gluon.py): persistent
    programs, one per SM, take tiles of two consumers' keys of one (batch, kv head) from the Gluon kernels' counter;
    under a causal mask the key blocks every query sees first, in sections of (batch, kv head)s whose queries and
    output gradients fit ``configs.GLUON_L2_BYTES`` together. ``key_mask`` is a (B, Skv) mask or None, ``key_range``
    its :func:`kept_key_ranges`; ``delta`` is the dQ kernel's."""
    batch, heads, sq, head_dim = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    key_mask = _as_kernel_mask(key_mask)
    tiles = configs.cdiv(skv, GLUON_CONSUMERS * cfg.block_nw) * batch * hkv
    heads_per_section = 1
    if causal:
        query_bytes_per_kv_head = 2 * sq * head_dim * q.element_size() * (heads // hkv)
        heads_per_section = max(1, min(batch * hkv, configs.GLUON_L2_BYTES // query_bytes_per_kv_head))
    qk_tiles = block_d, block_d_tail = configs.head_dim_tiles(head_dim)
    value_tiles = block_dv, block_dv_tail = configs.value_dim_tiles(v.shape[3])
    try:
        _launch_bwd_dkdv_gluon(
            (min(tiles, _sm_count(q.device)),),
            *_gluon_tiles(q, cfg.block_m, qk_tiles), *_gluon_tiles(k, cfg.block_nw, qk_tiles),
            *_gluon_tiles(v, cfg.block_nw, value_tiles),
            *_gluon_tiles(grad_out, cfg.block_m, value_tiles, _gluon_descriptor_bshd), dk, dv, lse, delta, key_mask,
            key_range,
            _tile_counter(q.device), scale * LOG2E.value, scale, dk.stride(0), dk.stride(1), dk.stride(2),
            dv.stride(0), dv.stride(1), dv.stride(2), 0 if key_mask is None else key_mask.stride(0), heads, sq, skv,
            heads // hkv, tiles, heads_per_section,
            HEAD_DIM=block_d, HEAD_DIM_TAIL=block_d_tail, VALUE_DIM=block_dv, VALUE_DIM_TAIL=block_dv_tail,
            BLOCK_M=cfg.block_m,
            BLOCK_NW=cfg.block_nw, STAGES=cfg.stages, KV_SLOTS=cfg.kv_slots, IS_CAUSAL=causal,
            HAS_KEY_MASK=key_mask is not None, STATS_IN_SCORE_LAYOUT=cfg.stats_in_score_layout,
            CONSUMER_REGS=cfg.consumer_regs, num_warps=4, maxnreg=cfg.max_registers,
        )
    except CompilationError as error:
        raise _gluon_compile_failure("dK/dV kernel", head_dim) from error


def _sink_strides(sinks: Optional[torch.Tensor]) -> tuple[int, int, int]:
    """The (batch, head, query row) strides of the (B|1, H|1, Sq|1) sinks, 0 along a dimension they broadcast."""
    if sinks is None:
        return 0, 0, 0
    return tuple(stride if size > 1 else 0 for stride, size in zip(sinks.stride(), sinks.shape))


def _bhsd_strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    """The strides of ``t.transpose(1, 2)`` for a (B, S, H, D) tensor, without building the view (~2 µs)."""
    batch, seq, head, dim = t.stride()
    return batch, head, seq, dim


def _tma_compatible(*tensors: torch.Tensor) -> bool:
    """Whether every tensor can have a tensor descriptor: no empty dim (no keys: cross-attention over an empty
    context), a 16-byte aligned base, unit stride in the last dim and the other strides positive multiples of 16
    bytes. Plain loops: this runs on every call, and nested generators took ~4 µs for three tensors on the CPU
    machine."""
    for t in tensors:
        *outer, last = t.stride()
        if last != 1 or t.data_ptr() % 16 or 0 in t.shape:
            return False
        itemsize = t.element_size()
        for stride in outer:
            if stride <= 0 or stride * itemsize % 16:
                return False
    return True


def _descriptor(t: torch.Tensor, block_rows: int) -> TensorDescriptor:
    """A descriptor over the (B, H, S, D) tensor whose loads are ``block_rows`` positions of one head."""
    return _unchecked(TensorDescriptor, base=t, shape=list(t.shape), strides=list(t.stride()),
                      block_shape=[1, 1, block_rows, t.shape[3]])


def _unchecked(descriptor_class, **fields):
    """A host tensor descriptor (Triton's or Gluon's dataclass) with these fields, the others at their defaults,
    without its constructor's checks: they repeat :func:`_tma_compatible`'s, which every caller has passed, and the
    block shapes come from :mod:`configs`. The checks took more than half of a descriptor's host time (CPU machine:
    2.2 -> 1.1 µs for a Triton descriptor, 3.0 -> 1.2 for a Gluon one), and a backward builds up to nine. Triton's
    launcher reads the fields (base, shape, strides, block shape, layout, padding), not how they were set."""
    descriptor = descriptor_class.__new__(descriptor_class)
    descriptor.__dict__.update(fields)
    return descriptor


attention_forward = torch.library.custom_op("hf_triton_attn::attention_forward", forward_impl, mutates_args=())


def _takes_split_kv(sq: int, group: int, skv: int, dropout_p: float) -> bool:
    return (dropout_p == 0.0 and sq <= configs.SPLIT_KV_MAX_QUERIES and sq * group <= configs.SPLIT_KV_MAX_ROWS
            and skv > sq)


def _capturing(device: torch.device) -> bool:
    """Whether this call's launches are being captured into a CUDA graph (their host time then is not repeated)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _forward_split_kv(q, k, v, out, lse, key_mask, seqused_k, mask, sinks, causal, scale, softcap) -> tuple:
    """Writes out and lse; returns the mask's row spans (:func:`_visible_spans_of`)."""
    batch, heads, sq, head_dim = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    group = heads // hkv
    value_dim = v.shape[3]
    spans = _visible_spans_of(mask)
    key_mask, mask, km_strides, m_strides, mask_kind = _mask_args(key_mask, mask, q, sq, skv)
    block_d, block_dv = configs.padded_head_dim(head_dim), configs.padded_head_dim(value_dim)
    # Planned as for the wider of the two head dims.
    plan = configs.split_kv_plan(group * sq, batch * hkv, skv, max(block_d, block_dv), q.element_size(),
                                 _sm_count(q.device), INTERPRET, host_bound=not _capturing(q.device))
    # One split writes the output itself: no workspace, no merge launch (host time is what limits short steps).
    single = plan.num_splits == 1
    # Per (batch * kv head, split, packed row): a partial output row, its max and its sum.
    work = None if single else torch.empty(batch * hkv * plan.num_splits * plan.block_r * (block_dv + 2),
                                           device=q.device, dtype=torch.float32)
    _launch_fwd_split(
        (plan.num_splits, batch * hkv),
        q, k, v, work, out, lse, key_mask, seqused_k, mask, spans[0], sinks,
        scale, softcap,
        *q.stride(), *k.stride(), *v.stride(), *_bhsd_strides(out), *km_strides, *m_strides, *spans[1:],
        *_sink_strides(sinks), heads, hkv, sq, skv, group, plan.split_size, plan.num_splits,
        HEAD_DIM=head_dim, VALUE_DIM=value_dim, BLOCK_D=block_d, BLOCK_DV=block_dv, BLOCK_R=plan.block_r,
        BLOCK_N=plan.block_n, IS_CAUSAL=causal, HAS_KEY_MASK=key_mask is not None, HAS_SEQUSED=seqused_k is not None,
        MASK_KIND=mask_kind, HAS_SOFTCAP=softcap > 0.0, DOT_PRECISION=_dot_precision(q.dtype), WRITE_OUT=single,
        HAS_SINKS=sinks is not None, num_warps=plan.num_warps, num_stages=plan.num_stages,
    )
    if not single:
        _launch_combine_splits(
            (group * sq, batch * hkv),
            work, out, lse, sinks, *_bhsd_strides(out), *_sink_strides(sinks),
            heads, hkv, sq, group, plan.num_splits,
            VALUE_DIM=value_dim, BLOCK_DV=block_dv, BLOCK_R=plan.block_r,
            BLOCK_S=plan.block_s, HAS_SINKS=sinks is not None, num_warps=1 if INTERPRET else 4,
        )
    return spans


@attention_forward.register_fake
def _(q, k, v, key_mask, seqused_k, seqused_q, key_range, mask, seed, sinks, causal, scale, softcap, dropout_p):
    batch, heads, sq, _ = q.shape
    out = q.new_empty((batch, sq, heads, v.shape[3]))
    lse = q.new_empty((batch, heads, sq), dtype=torch.float32)
    return out, lse


def backward_impl(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor,
    key_mask: Optional[torch.Tensor], seqused_k: Optional[torch.Tensor], seqused_q: Optional[torch.Tensor],
    key_range: Optional[torch.Tensor], mask: Optional[torch.Tensor], seed: Optional[torch.Tensor],
    causal: bool, scale: float, softcap: float, dropout_p: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_out and out are (B, Sq, H, D) like the forward's output; returns dq, dk, dv shaped like q, k, v."""
    return _backward(grad_out, q, k, v, out, lse, key_mask, seqused_k, seqused_q, key_range, mask, seed, causal,
                     scale, softcap, dropout_p)


@_on_tensor_device
def _backward(grad_out, q, k, v, out, lse, key_mask, seqused_k, seqused_q, key_range, mask, seed, causal, scale,
              softcap, dropout_p, query_spans=None):
    """:func:`backward_impl`'s body, reusing the forward's key range and the mask's row spans where given."""
    batch, heads, sq, head_dim = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    if query_spans is None:
        query_spans = _visible_spans_of(mask)
    key_spans = _visible_spans_of(mask, by_key=True, group=heads // hkv)
    key_mask, mask, km_strides, m_strides, mask_kind = _mask_args(key_mask, mask, q, sq, skv)
    value_dim = v.shape[3]
    block_d, block_d_tail = configs.head_dim_tiles(head_dim)
    block_dv, block_dv_tail = configs.value_dim_tiles(value_dim)
    # Tiles as for the wider of the two head dims, padded.
    cfg = configs.backward_config(configs.padded_head_dim(max(head_dim, value_dim)), q.element_size(), INTERPRET,
                                  dropout_p > 0.0, causal, skv, block_d_tail > 0 and block_dv_tail > 0)

    delta = torch.empty_like(lse)  # rowsum(O * dO), written by the dQ kernel for the dK/dV kernel
    if key_range is None:
        key_range = kept_key_ranges(key_mask, seqused_k)
    flags = dict(HEAD_DIM=head_dim, VALUE_DIM=value_dim, BLOCK_D=block_d, BLOCK_D_TAIL=block_d_tail, BLOCK_DV=block_dv,
                 BLOCK_DV_TAIL=block_dv_tail,
                 **_flags(key_mask, seqused_k, seqused_q, mask_kind, causal, softcap, dropout_p, q.dtype))
    hopper_dq = hopper_dkdv = None
    if seqused_k is None and seqused_q is None and mask is None and softcap == 0.0 and dropout_p == 0.0:
        hopper_dq = _hopper_dq_config(q, k, v, out, grad_out, key_mask, causal, scale)
        hopper_dkdv = _hopper_dkdv_config(q, k, v, grad_out, key_mask, causal, scale)
    if hopper_dq is not None:
        _backward_dq_hopper(q, k, v, out, grad_out, dq, lse, delta, key_mask, key_range, causal, scale, hopper_dq)
    else:
        tma = (configs.dq_uses_tma(head_dim, q.element_size(), INTERPRET, skv)
               and configs.dq_uses_tma(value_dim, q.element_size(), INTERPRET, skv) and _tma_compatible(k, v))
        kv_descriptors = (_descriptor(k, cfg.dq.block_n), _descriptor(v, cfg.dq.block_n)) if tma else (None, None)
        _launch_bwd_dq(
            (configs.cdiv(sq, cfg.dq.block_m), batch * heads),
            q, k, v, *kv_descriptors, out, grad_out, dq, lse, delta, key_mask, key_range, seqused_k, seqused_q, mask,
            query_spans[0], seed, scale, softcap, dropout_p,
            *q.stride(), *k.stride(), *v.stride(), *_bhsd_strides(out), *_bhsd_strides(grad_out), *dq.stride(),
            *km_strides, *m_strides, *query_spans[1:],
            heads, sq, skv, heads // hkv,
            BLOCK_M=cfg.dq.block_m, BLOCK_N=cfg.dq.block_n, USE_TMA=tma,
            num_warps=cfg.dq.num_warps, num_stages=cfg.dq.num_stages, maxnreg=cfg.dq.max_registers, **flags,
        )
    if hopper_dkdv is not None:
        _backward_dkdv_hopper(q, k, v, grad_out, dk, dv, lse, delta, key_mask, key_range, causal, scale, hopper_dkdv)
        return dq, dk, dv
    key_blocks = configs.cdiv(skv, cfg.dkdv.block_n)
    key_blocks_outer = configs.dkdv_key_blocks_outer(causal, key_blocks * batch * hkv, _sm_count(q.device))
    _launch_bwd_dkdv(
        (batch * hkv, key_blocks) if key_blocks_outer else (key_blocks, batch * hkv),
        q, k, v, grad_out, dk, dv, lse, delta, key_mask, key_range, seqused_k, seqused_q, mask, key_spans[0], seed,
        scale, softcap, dropout_p,
        *q.stride(), *k.stride(), *v.stride(), *_bhsd_strides(grad_out), *dk.stride(), *dv.stride(),
        *km_strides, *m_strides, *key_spans[1:],
        heads, hkv, sq, skv, heads // hkv,
        BLOCK_M=cfg.dkdv.block_m, BLOCK_N=cfg.dkdv.block_n, GROUPED=heads > hkv, KEY_BLOCKS_OUTER=key_blocks_outer,
        num_warps=cfg.dkdv.num_warps, num_stages=cfg.dkdv.num_stages, maxnreg=cfg.dkdv.max_registers, **flags,
    )
    return dq, dk, dv


attention_backward = torch.library.custom_op("hf_triton_attn::attention_backward", backward_impl, mutates_args=())


@attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, key_mask, seqused_k, seqused_q, key_range, mask, seed, causal, scale, softcap,
      dropout_p):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, key_mask, seqused_k, seqused_q, key_range, mask, seed, sinks, causal, scale, softcap, dropout_p = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_mask, seqused_k, seqused_q, key_range, mask, seed, sinks)
    ctx.params = (causal, scale, softcap, dropout_p)


def _gradients(ctx, grad_out, backward) -> tuple:
    """Gradients for the forward's 14 inputs from ``backward`` (the custom op or its body): dq, dk, dv, None for the
    masks, lengths and seed, the sinks' gradient where they need one (:func:`_sink_gradient`), None for the rest.
    No ``grad_out`` (nothing downstream gave the output a gradient; eager autograd does not materialise one): None
    for all."""
    dq = dk = dv = dsinks = None
    if grad_out is not None:
        q, k, v, out, lse, key_mask, seqused_k, seqused_q, key_range, mask, seed, sinks = ctx.saved_tensors
        dq, dk, dv = backward(grad_out, q, k, v, out, lse, key_mask, seqused_k, seqused_q, key_range, mask, seed,
                              *ctx.params)
        if sinks is not None and ctx.needs_input_grad[9]:
            dsinks = _sink_gradient(grad_out, out, lse, sinks)
    return dq, dk, dv, None, None, None, None, None, None, dsinks, None, None, None, None


def _sink_gradient(grad_out: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """d loss / d sink of a row = -p_sink * rowsum(dO * O), where p_sink = exp(sink - LSE) is the weight the sink
    took (the output is the keys' weights times their values, and raising the sink scales all of them down by its
    own weight), summed over the rows that share a sink. A few elementwise passes in PyTorch, next to the backward
    kernels."""
    delta = (grad_out.float() * out.float()).sum(-1).transpose(1, 2)
    # The sink is part of the LSE, so p_sink <= 1; padding rows (seqused_q) have an LSE of 0 and a zero delta, and
    # the clamp keeps exp2 there finite.
    p_sink = torch.exp2((sinks.float() * LOG2E.value - lse).clamp(max=0.0))
    return (-(p_sink * delta)).sum_to_size(sinks.shape).to(sinks.dtype)


def _op_backward(ctx, grad_out, _grad_lse):
    return _gradients(ctx, grad_out, attention_backward)


torch.library.register_autograd("hf_triton_attn::attention_forward", _op_backward, setup_context=_setup_context)


class EagerAttention(torch.autograd.Function):
    """The custom ops' autograd for eager calls on plain tensors, calling the ops' bodies directly. Same kernels,
    same results; what it skips is the custom ops' dispatch in Python, ~0.1 ms of host time per forward+backward on
    the H100 machine (benchmarks/RESULTS.md, "Host time of a training call"), and the backward reuses the
    forward's :class:`MaskSummaries` instead of launching them again (the custom op's backward, which sees only
    tensors the forward returned or took, recomputes them). Tracing, compiling and dispatch or functorch modes
    must use the custom op (see functional.py).

    ``forward`` takes ``ctx`` (no separate ``setup_context``): with a ``setup_context``, ``Function.apply`` binds
    the arguments through ``inspect.signature`` on every call, tens of microseconds of host time."""

    @staticmethod
    def forward(ctx, q, k, v, key_mask, seqused_k, seqused_q, key_range, mask, seed, sinks, causal, scale, softcap,
                dropout_p):
        out, lse, summaries = _forward(q, k, v, key_mask, seqused_k, seqused_q, key_range, mask, seed, sinks, causal,
                                       scale, softcap, dropout_p)
        # The backward takes the key range the forward used (given or computed) and the mask's row spans.
        ctx.query_spans = summaries.query_spans
        _setup_context(ctx, (q, k, v, key_mask, seqused_k, seqused_q, summaries.key_range, mask, seed, sinks, causal,
                             scale, softcap, dropout_p), (out, lse))
        ctx.mark_non_differentiable(lse)
        # lse never gets a gradient: materialized, it would cost a zero-filled tensor (an allocation and a launch)
        # on every backward.
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, _grad_lse):
        return _gradients(ctx, grad_out, functools.partial(_backward, query_spans=ctx.query_spans))
