"""hf_triton_attn.launch: the cache key must determine Triton's specialization, and cached launches must compute
what the normal launch path computes."""
import itertools

import pytest
import torch
import triton
import triton.language as tl
from triton import knobs
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend
from triton.tools.tensor_descriptor import TensorDescriptor

try:
    from triton.experimental.gluon import language as gl
except ImportError:  # no Gluon: _gluon_descriptors() is empty
    gl = None

import hf_triton_attn
from hf_triton_attn import ops
from hf_triton_attn.launch import (FAST_PATH_AVAILABLE, GluonTensorDescriptor, KernelLauncher, cache_key,
                                   specialization_key)

from conftest import DEVICE


@triton.jit
def _scaled_copy(X, Y, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    tl.store(Y + offs, tl.load(X + offs, mask=keep) * scale, mask=keep)


@triton.jit
def _descriptor_block_copy(Desc, Y, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    tile = Desc.load([tl.program_id(0) * BLOCK_R, 0])
    tl.store(Y + rows[:, None] * BLOCK_C + tl.arange(0, BLOCK_C)[None, :], tile)


def _key(*args, device=0, **kwargs):
    return cache_key(device, args, kwargs)


def _tensors():
    base32 = torch.zeros(64)
    base16 = torch.zeros(64, dtype=torch.float16)
    return {
        "fp32": base32, "fp32 other": torch.zeros(8), "fp32 +4 bytes": base32[1:], "fp32 +8 bytes": base32[2:],
        "fp32 +16 bytes": base32[4:], "fp16": base16, "fp16 +2 bytes": base16[1:], "fp16 +16 bytes": base16[8:],
        "int64": torch.zeros(4, dtype=torch.int64), "bool": torch.zeros(4, dtype=torch.bool),
    }


def _descriptors():
    base = torch.zeros(2, 4, 64, 128, dtype=torch.bfloat16)

    def over(t, block_rows=64, **kwargs):
        return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, block_rows, t.shape[3]], **kwargs)
    return {
        "desc": over(base), "desc other base": over(torch.ones(1, 2, 16, 128, dtype=torch.bfloat16)),
        "desc offset rows": over(base[:, :, 16:]), "desc 32-row blocks": over(base, 32),
        "desc fp16": over(base.half()), "desc nan padding": over(base, padding="nan"),
    }


def test_key_separates_what_triton_specializes_on():
    t = _tensors()
    different = [
        ((1,), (2,)), ((16,), (17,)), ((0,), (1,)), ((2**31 - 16,), (2**31,)), ((-2**31,), (-2**31 - 16,)),
        ((2**63 - 16,), (2**63,)), ((1,), (True,)), ((True,), (1.0,)), ((16,), (16.0,)),
        ((t["fp32"],), (t["fp32 +4 bytes"],)), ((t["fp32"],), (t["fp16"],)), ((t["fp32"],), (None,)),
        ((None,), (1,)), ((1, 16), (16, 1)),
    ]
    for a, b in different:
        assert _key(*a) != _key(*b), (a, b)
    assert _key(t["fp32"], BLOCK=64) != _key(t["fp32"], BLOCK=32)
    assert _key(t["fp32"], BLOCK=64, num_warps=4) != _key(t["fp32"], BLOCK=64, num_warps=8)
    assert _key(t["fp32"], BLOCK=64, num_stages=2) != _key(t["fp32"], BLOCK=64, num_stages=3)
    assert _key(t["fp32"], DOT_PRECISION="ieee") != _key(t["fp32"], DOT_PRECISION="tf32")
    assert _key(t["fp32"], device=0) != _key(t["fp32"], device=1)


def test_key_is_equal_where_triton_specializes_alike():
    t = _tensors()
    same = [
        ((32,), (48,)), ((0,), (-16,)), ((17,), (3,)), ((2**31 - 1,), (-2**31 + 1,)), ((2**31,), (2**40,)),
        ((0.5,), (-3.0,)), ((True,), (False,)), ((None,), (None,)),
        ((t["fp32"],), (t["fp32 other"],)), ((t["fp32"],), (t["fp32 +16 bytes"],)),
        ((t["fp32 +4 bytes"],), (t["fp32 +8 bytes"],)), ((t["fp16"], 64, 0.1), (t["fp16 +16 bytes"], 4096, 2.0)),
    ]
    for a, b in same:
        assert _key(*a, BLOCK=64, num_warps=4) == _key(*b, BLOCK=64, num_warps=4), (a, b)


def _gluon_descriptors():
    """Gluon's descriptors (which carry their shared-memory layout) over the bases _descriptors() uses, or none where
    this Triton has no Gluon Hopper API."""
    if GluonTensorDescriptor is None:
        return {}
    base = torch.zeros(2, 4, 64, 128, dtype=torch.bfloat16)

    def over(t, block_rows=64, swizzle=None, **kwargs):
        block = [1, 1, block_rows, t.shape[3]]
        layout = gl.NVMMASharedLayout.get_default_for(block, gl.float16 if t.dtype == torch.float16 else gl.bfloat16)
        if swizzle is not None:
            layout = gl.NVMMASharedLayout(swizzle, 16, rank=4)
        return GluonTensorDescriptor(t, list(t.shape), list(t.stride()), block, layout, **kwargs)
    return {
        "gluon desc": over(base), "gluon desc other base": over(torch.ones(1, 2, 16, 128, dtype=torch.bfloat16)),
        "gluon desc offset rows": over(base[:, :, 16:]), "gluon desc 32-row blocks": over(base, 32),
        "gluon desc fp16": over(base.half()), "gluon desc nan padding": over(base, padding="nan"),
        "gluon desc 64-byte swizzle": over(base, swizzle=64),
    }


def test_key_partitions_arguments_exactly_like_the_installed_triton():
    """Pairwise over a corpus: equal keys if and only if native_specialize_impl gives equal specializations."""
    values = [0, 1, 2, 15, 16, 17, 32, 48, -1, -16, -17, 2**31 - 1, 2**31, 2**31 + 16, -2**31, -2**31 - 1,
              -2**31 - 16, 2**32, 2**63 - 1, 2**63 - 16, 2**63, 2**63 + 16, 2**64 - 1, True, False, 0.0, 1.0, -2.5,
              1e300, None, *_tensors().values(), *_descriptors().values(), *_gluon_descriptors().values()]
    triton_spec = [native_specialize_impl(BaseBackend, v, False, True, True) for v in values]
    ours = [specialization_key((v,)) for v in values]
    for (v1, s1, k1), (v2, s2, k2) in itertools.combinations(zip(values, triton_spec, ours), 2):
        assert (k1 == k2) == (s1 == s2), (v1, v2, s1, s2)


def test_interpreter_takes_the_normal_path():
    if not ops.INTERPRET:
        pytest.skip("the interpreter runs only without a GPU")
    x = torch.randn(40)
    y = torch.zeros(40)
    launcher = KernelLauncher(_scaled_copy)
    for _ in range(2):
        launcher((1,), x, y, 40, 2.0, BLOCK=64)
    torch.testing.assert_close(y, 2 * x)
    assert launcher._kernels == {}


def _count_normal_launches(monkeypatch, jit_fn) -> list:
    """Record every call of jit_fn.run, the normal launch path (what jit_fn[grid](...) calls)."""
    calls = []
    run = jit_fn.run

    def counting_run(*args, **kwargs):
        calls.append(kwargs.get("grid"))
        return run(*args, **kwargs)

    monkeypatch.setattr(jit_fn, "run", counting_run)
    return calls


def _scaled_copy_through(launch, x, n, scale, **kwargs):
    """y[:n] = x[:n] * scale; y past n stays NaN, so a kernel compiled for another specialization shows."""
    y = torch.full((x.numel() + 16,), float("nan"), device=x.device, dtype=x.dtype)
    kwargs = {"BLOCK": 64, **kwargs}
    launch((triton.cdiv(n, kwargs["BLOCK"]),), x, y, n, scale, **kwargs)
    return y


@pytest.mark.gpu
def test_cached_launches_match_the_normal_path(monkeypatch):
    assert FAST_PATH_AVAILABLE, f"triton {triton.__version__}: launch.py's fast path is off; check it still applies"
    normal_launches = _count_normal_launches(monkeypatch, _scaled_copy)
    launcher = KernelLauncher(_scaled_copy)
    x32 = torch.randn(4096, device=DEVICE)
    x16 = torch.randn(4096, device=DEVICE, dtype=torch.float16)
    cases = [  # (x, n, scale, keywords, a specialization not launched before)
        (x32, 64, 2.0, {}, True),
        (x32, 4096, 2.0, {}, False),  # a multiple of 16 like 64
        (x32, 4096, -0.5, {}, False),  # a float's value is not specialized on
        (x32, 17, 2.0, {}, True),
        (x32, 33, 3.0, {}, False),
        (x32, 1, 2.0, {}, True),  # 1 is compiled in as a constant
        (x32[1:], 48, 2.0, {}, True),  # misaligned pointer
        (x32[3:], 4000, 2.0, {}, False),
        (x32[4:], 4000, 2.0, {}, False),  # 16-byte aligned again
        (x16, 100, 2.0, {}, True),
        (x32, 100, 2.0, {"BLOCK": 128}, True),
        (x32, 100, 2.0, {"BLOCK": 128, "num_warps": 2}, True),
    ]
    expected_normal = 0
    for x, n, scale, kwargs, new in cases:
        expected_normal += new
        for attempt in range(2):  # the second launch of a specialization is always a cached one
            y = _scaled_copy_through(launcher, x, n, scale, **kwargs)
            assert len(normal_launches) == expected_normal, (n, kwargs, attempt)
            y_normal = _scaled_copy_through(lambda grid, *a, **k: _scaled_copy[grid](*a, **k), x, n, scale, **kwargs)
            expected_normal += 1
            torch.testing.assert_close(y, y_normal, equal_nan=True)
            torch.testing.assert_close(y[:n], x[:n] * scale)
            assert y[n:].isnan().all()
    assert len(launcher._kernels) == sum(new for *_, new in cases)


@pytest.mark.gpu
def test_cached_descriptor_launches_read_each_call_s_descriptor(monkeypatch):
    """A cached launch hands the TensorDescriptor to the compiled launcher, which builds the TMA descriptor from it on
    every call: a new base, a shorter shape (rows past it read as padding) or NaN padding must show in the output."""
    normal_launches = _count_normal_launches(monkeypatch, _descriptor_block_copy)
    launcher = KernelLauncher(_descriptor_block_copy)
    block_r, block_c = 16, 32

    def copy_through(launch, x, padding):
        desc = TensorDescriptor(x, list(x.shape), list(x.stride()), [block_r, block_c], padding=padding)
        grid = (triton.cdiv(x.shape[0], block_r),)
        y = torch.empty(grid[0] * block_r, block_c, device=x.device, dtype=x.dtype)
        launch(grid, desc, y, BLOCK_R=block_r, BLOCK_C=block_c)
        return y

    cases = [  # (rows, dtype, padding, a specialization not launched before)
        (40, torch.float32, "zero", True), (40, torch.float32, "zero", False), (24, torch.float32, "zero", False),
        (40, torch.float32, "nan", False), (40, torch.float16, "zero", True),
    ]
    for rows, dtype, padding, new in cases:
        x = torch.randn(rows, block_c, device=DEVICE, dtype=dtype)
        launched_before = len(normal_launches)
        y = copy_through(launcher, x, padding)
        assert len(normal_launches) == launched_before + new, (rows, dtype, padding)
        y_normal = copy_through(lambda grid, *a, **k: _descriptor_block_copy[grid](*a, **k), x, padding)
        torch.testing.assert_close(y, y_normal, equal_nan=True)
        torch.testing.assert_close(y[:rows], x)
        tail = y[rows:]
        assert (tail.isnan().all() if padding == "nan" else (tail == 0).all()), (rows, padding)
    assert len(launcher._kernels) == sum(new for *_, new in cases)


@pytest.mark.gpu
def test_launch_hooks_see_every_launch(monkeypatch):
    normal_launches = _count_normal_launches(monkeypatch, _scaled_copy)
    launcher = KernelLauncher(_scaled_copy)
    x = torch.randn(256, device=DEVICE)
    _scaled_copy_through(launcher, x, 256, 2.0)  # cached from here on, while no hook is set
    seen = []

    def hook(metadata):
        seen.append(metadata.get()["name"])

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        for _ in range(3):
            _scaled_copy_through(launcher, x, 256, 2.0)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert seen == ["_scaled_copy"] * 3
    assert len(normal_launches) == 4
    _scaled_copy_through(launcher, x, 256, 2.0)
    assert len(normal_launches) == 4


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_each_device_gets_its_own_kernel():
    launcher = KernelLauncher(_scaled_copy)
    for _ in range(2):
        for device in (0, 1):
            x = torch.randn(256, device=f"cuda:{device}")
            with torch.cuda.device(device):
                y = _scaled_copy_through(launcher, x, 256, 2.0)
            torch.testing.assert_close(y[:256], 2 * x)
    assert len(launcher._kernels) == 2


@pytest.mark.gpu
def test_attention_launches_are_cached(monkeypatch):
    """A decode call (split-KV pair) and training steps (forward + two backward kernels; at head_dim 128 in bf16
    the forward and dQ kernels take tensor descriptors, and on Hopper the forward is the Gluon one; at head_dim 64 a
    register cap, and a key mask with its key-range launch) launch from the cache the second time."""
    kernels = [ops._attn_fwd_split, ops._attn_combine_splits, ops._attn_fwd, ops._attn_bwd_dkdv, ops._attn_bwd_dq,
               ops._key_ranges] + ([ops._attn_fwd_ws] if ops._attn_fwd_ws is not None else [])
    normal_launches = {kernel: _count_normal_launches(monkeypatch, kernel) for kernel in kernels}
    q = torch.randn(2, 8, 1, 64, device=DEVICE, dtype=torch.float16)
    k = torch.randn(2, 2, 300, 64, device=DEVICE, dtype=torch.float16)
    v = torch.randn_like(k)
    train_inputs = [tuple(torch.randn(2, 4, 128, head_dim, device=DEVICE, dtype=dtype, requires_grad=True)
                          for _ in range(3))
                    for head_dim, dtype in ((64, torch.float16), (128, torch.bfloat16))]
    assert ops.configs.forward_uses_tma(128, 2, ops.INTERPRET)
    key_mask = torch.arange(128, device=DEVICE) < torch.tensor([[100], [128]], device=DEVICE)

    def step():
        results = [hf_triton_attn.attention(q, k, v, causal=True)]
        for qt, kt, vt in train_inputs:
            for mask in (None, key_mask):
                out = hf_triton_attn.attention(qt, kt, vt, causal=True, attention_mask=mask)
                results += [out, *torch.autograd.grad(out.square().sum(), (qt, kt, vt))]
        return results

    first = step()
    launched_before = {kernel: len(calls) for kernel, calls in normal_launches.items()}
    second = step()
    assert {kernel: len(calls) for kernel, calls in normal_launches.items()} == launched_before
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def test_launches_go_to_the_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device: the ops' bodies make their first tensor's device current where it
    is not (a model split across GPUs), and leave the current device alone otherwise. Checked here with the device
    calls recorded; tests/test_autograd.py runs it on two GPUs."""
    entered = []

    class Recorded:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    class OnCuda:
        is_cuda = True

        def __init__(self, index):
            self.device = torch.device("cuda", index)

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Recorded)
    body = ops._on_tensor_device(lambda first, *args, **kwargs: (first, args, kwargs))
    first = OnCuda(1)
    assert body(first, 2, three=3) == (first, (2,), {"three": 3})
    assert entered == [torch.device("cuda", 1)]
    body(OnCuda(0))
    body(None)
    body(torch.zeros(1))
    assert entered == [torch.device("cuda", 1)]


def _descriptor_fields(descriptor) -> tuple:
    return (type(descriptor), descriptor.base.data_ptr(), descriptor.base.dtype, descriptor.shape, descriptor.strides,
            descriptor.block_shape, descriptor.padding, getattr(descriptor, "round_f32_to_tf32", False),
            getattr(descriptor, "layout", None))


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
def test_ops_descriptors_equal_the_checked_constructors(layout):
    """The op layer builds its tensor descriptors without the constructors' checks (its own compatibility check
    comes first): what Triton's launcher reads of them equals what the constructors build, for tensors in both
    layouts, and for the Gluon kernels' (B, S, H, D) outputs seen as (B, H, S, D) without the transposed view."""
    q = torch.randn(2, 3, 40, 64, dtype=torch.float16)
    if layout == "bshd":
        q = torch.randn(2, 40, 3, 64, dtype=torch.float16).transpose(1, 2)
    assert ops._tma_compatible(q)
    checked = TensorDescriptor(q, list(q.shape), list(q.stride()), [1, 1, 32, 64])
    assert _descriptor_fields(ops._descriptor(q, 32)) == _descriptor_fields(checked)
    if GluonTensorDescriptor is None:
        return
    layout_32 = ops._gluon_layout(32, 64, q.dtype)
    checked = GluonTensorDescriptor(q, list(q.shape), list(q.stride()), [1, 1, 32, 64], layout_32)
    assert _descriptor_fields(ops._gluon_descriptor(q, 32)) == _descriptor_fields(checked)
    bshd = q.transpose(1, 2)
    assert _descriptor_fields(ops._gluon_descriptor_bshd(bshd, 32)) == _descriptor_fields(checked)
