"""Comparison helpers shared by the tests."""
import pytest
import torch
from triton.compiler.errors import CompilationError

from hf_triton_attn import configs, ops
from hf_triton_attn.reference import attention_reference

SKIP_WITHOUT_GLUON = "the Gluon forward runs on Hopper GPUs with Gluon's Hopper API"


def hopper_with_gluon() -> bool:
    """Whether attention() takes the Gluon forward where it applies: a Hopper GPU, Gluon's Hopper API, not
    switched off."""
    return (ops._attn_fwd_ws is not None and configs.GLUON_FORWARD and torch.cuda.is_available()
            and torch.cuda.get_device_capability() == (9, 0))


# A query length at which every head dim the Gluon forward serves takes it, with its long-row configuration.
LONG_ROWS = 16384


def take_gluon_as_at(monkeypatch, seqlen_q: int) -> None:
    """Every call takes the Gluon forward's configuration for ``seqlen_q`` queries (same head dim, dtype, device and
    mask), whatever its own length, so that test shapes far from ``seqlen_q`` reach the configuration taken there:
    head_dim 64 takes the Gluon forward on long rows only, and head_dim 256 changes its key blocks at
    GLUON_D256_WIDE_MIN_QUERIES."""
    default = configs.hopper_forward_config

    def config(head_dim, itemsize, capability, _, causal, value_dim=None):
        return default(head_dim, itemsize, capability, seqlen_q, causal, value_dim)
    monkeypatch.setattr(configs, "hopper_forward_config", config)


def gluon_forward_calls(monkeypatch, seqlen_q: int = LONG_ROWS) -> list:
    """The Gluon forward's GPU tests' start: skips unless it runs here (hopper_with_gluon), makes every call take its
    configuration for ``seqlen_q`` queries (take_gluon_as_at), and returns the list that records its launches
    (``ops._forward_hopper``'s calls, count_calls)."""
    if not hopper_with_gluon():
        pytest.skip(SKIP_WITHOUT_GLUON)
    take_gluon_as_at(monkeypatch, seqlen_q)
    return count_calls(monkeypatch, ops, "_forward_hopper")


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_close_to_reference(ours: torch.Tensor, ref64: torch.Tensor, same_dtype: torch.Tensor, factor: float = 2.0,
                              floor: float = 1e-5, what: str = "output") -> None:
    """Our error against the float64 oracle must stay within ``factor`` x plain PyTorch's error in our dtype."""
    assert torch.isfinite(ours).all(), f"{what} has non-finite values"
    err, base = max_err(ours, ref64), max_err(same_dtype, ref64)
    assert err <= factor * base + floor, f"{what}: error {err:.3e} > {factor} x torch's {base:.3e} + {floor:.0e}"


def random_qkv(batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim, dtype, device, requires_grad=False):
    def make(h, s):
        return torch.randn(batch, h, s, head_dim, dtype=dtype, device=device, requires_grad=requires_grad)
    return make(heads, seqlen_q), make(kv_heads, seqlen_k), make(kv_heads, seqlen_k)


def qkv_in_layout(layout, batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim, dtype, device):
    """Random q, k, v seen as (B, H, S, D): contiguous that way ("bhsd"), or views of (B, S, H, D) memory ("bshd"),
    as Transformers' models pass them."""
    if layout == "bhsd":
        return random_qkv(batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim, dtype, device)
    return tuple(torch.randn(batch, s, h, head_dim, device=device, dtype=dtype).transpose(1, 2)
                 for h, s in ((heads, seqlen_q), (kv_heads, seqlen_k), (kv_heads, seqlen_k)))


def reference_pair(q, k, v, **kwargs):
    """(float64 oracle, the same math in the inputs' own dtype)."""
    ref64 = attention_reference(q.double(), k.double(), v.double(), **_mask_to(kwargs, torch.float64))
    same = attention_reference(q, k, v, **_mask_to(kwargs, q.dtype))
    return ref64, same


def _mask_to(kwargs, dtype):
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.is_floating_point():
        kwargs = {**kwargs, "attention_mask": mask.to(dtype)}
    return kwargs


def inputs_with_unused_nan_keys(seqlen_q, head_dim, device):
    """fp16 q, k, v (batch 2, heads 4/2, 70 keys) and seqused_k = [50, 70]: batch 0's 20 unused key rows hold NaN,
    which a tensor-descriptor load reads and the kernels must keep out of every result."""
    q, k, v = random_qkv(2, 4, 2, seqlen_q, 70, head_dim, torch.float16, device)
    seqused = torch.tensor([50, 70], device=device, dtype=torch.int32)
    k[0, :, 50:], v[0, :, 50:] = float("nan"), float("nan")
    return q, k, v, seqused


def fail_gluon_launch(monkeypatch, launcher: str) -> None:
    """``ops.<launcher>`` raises the CompilationError of a Triton that no longer compiles that Gluon kernel; the
    descriptors and the tile counter are stubbed, so the launch path runs on any machine."""
    def launch(grid, *args, **kwargs):
        raise CompilationError(None, None, "a Gluon builtin this Triton does not have")
    monkeypatch.setattr(ops, launcher, launch)
    monkeypatch.setattr(ops, "_gluon_descriptor", lambda *args, **kwargs: None)
    monkeypatch.setattr(ops, "_tile_counter", lambda device: None)


def count_calls(monkeypatch, owner, name: str) -> list:
    """A list that grows by one at each call of ``owner.<name>`` (which still runs), e.g. a kernel launcher."""
    calls = []
    function = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *args, **kwargs: calls.append(1) or function(*args, **kwargs))
    return calls


def count_descriptors(monkeypatch, ops) -> list:
    """A list that grows by one for each tensor descriptor ``ops`` builds."""
    return count_calls(monkeypatch, ops, "_descriptor")
