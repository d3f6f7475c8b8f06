"""Host time of short attention calls (GPU): where the microseconds go when the GPU's work takes ~10 µs.

A decoding step at a short cache is host-bound: each eager call costs its Python, validation and kernel
launches, and the GPU waits. This script issues many calls back to back and reports microseconds per call
for the public function, the integration layer's attention function (a decoding step as Transformers makes
it), the op layer below them, bare Triton launches with few and many arguments (plain ``kernel[grid](...)`` and
through ``hf_triton_attn.launch.KernelLauncher``), and SDPA for scale; then the GPU time alone (CUDA graph
replay) and a cProfile of the public call.

    PYTHONPATH=. python benchmarks/host_time.py [--out DIR]
"""
import argparse
import cProfile
import io
import os
import pstats
import time

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench_cudagraph

import hf_triton_attn
from hf_triton_attn import ops
from hf_triton_attn.launch import KernelLauncher

CALLS = 2000


@triton.jit
def _empty_1(X):
    pass


@triton.jit
def _empty_40(X, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, a20,
              a21, a22, a23, a24, a25, a26, a27, a28, a29, a30, a31, a32,
              C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr, C4: tl.constexpr, C5: tl.constexpr,
              C6: tl.constexpr, C7: tl.constexpr):
    pass


_launch_empty_1 = KernelLauncher(_empty_1)
_launch_empty_40 = KernelLauncher(_empty_40)


def per_call_us(fn) -> float:
    """Wall time per call of CALLS back-to-back calls, synchronised at the end: host time when host-bound."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / CALLS * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--cache-len", type=int, default=1024)
    args = parser.parse_args()

    torch.manual_seed(0)
    batch, heads, kv_heads, head_dim = 8, 32, 8, 128
    q = torch.randn(batch, 1, heads, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k = torch.randn(batch, kv_heads, args.cache_len, head_dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    scale = head_dim ** -0.5
    x = torch.empty(16, device="cuda")
    ints = list(range(1, 33))

    # A short padded prefill call (BERT-like: B16 H12 S<=512 D64), whose GPU work takes ~34 µs: with the key mask
    # alone (one key-range launch per call) and with its kept_key_ranges given, as every layer after a model's first.
    lengths = torch.randint(1, 513, (16,), device="cuda")
    key_mask = torch.arange(512, device="cuda")[None, :] < lengths[:, None]
    pq, pk, pv = (torch.randn(16, 512, 12, 64, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3))
    ranges = hf_triton_attn.kept_key_ranges(key_mask)
    # A decoding step as Transformers makes it (the integration layer's attention function, a left-padded batch's
    # key mask; the layer's keys in use are found once and reused, as for every layer after a model's first).
    decode_mask = torch.ones(batch, args.cache_len, device="cuda", dtype=torch.bool)
    decode_mask[: batch // 2, : args.cache_len // 10] = False
    layer = torch.nn.Module()
    layer.is_causal = True

    rows = {
        "hf_triton_attn.attention": lambda: hf_triton_attn.attention(q, k, v, causal=True),
        "attention, padded prefill, key mask":
            lambda: hf_triton_attn.attention(pq, pk, pv, attention_mask=key_mask),
        "attention, padded prefill, key mask + ranges":
            lambda: hf_triton_attn.attention(pq, pk, pv, attention_mask=key_mask, kept_key_ranges=ranges),
        "integration layer (hf), decoding step, key mask": lambda: hf_triton_attn.triton_attention_forward(
            layer, q, k, v, decode_mask, scaling=scale),
        "ops.forward_impl":
            lambda: ops.forward_impl(q, k, v, None, None, None, None, None, None, None, True, scale, 0.0, 0.0),
        "ops.attention_forward (custom op)":
            lambda: ops.attention_forward(q, k, v, None, None, None, None, None, None, None, True, scale, 0.0, 0.0),
        "empty Triton kernel, 1 argument": lambda: _empty_1[(1,)](x),
        "empty Triton kernel, 40 arguments":
            lambda: _empty_40[(1,)](x, *ints, C1=1, C2=2, C3=3, C4=4, C5=5, C6=6, C7=7),
        "empty Triton kernel, 1 argument, KernelLauncher": lambda: _launch_empty_1((1,), x),
        "empty Triton kernel, 40 arguments, KernelLauncher":
            lambda: _launch_empty_40((1,), x, *ints, C1=1, C2=2, C3=3, C4=4, C5=5, C6=6, C7=7),
        "torch.empty x3": lambda: (torch.empty(8, 32, 128, device="cuda"), torch.empty(8, 32, device="cuda"),
                                   torch.empty(100000, device="cuda")),
    }
    results = {name: per_call_us(fn) for name, fn in rows.items()}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        with sdpa_kernel([backend]):
            results[f"sdpa {backend.name.lower()}"] = per_call_us(
                lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    gpu_us = do_bench_cudagraph(rows["ops.forward_impl"], return_mode="median") * 1e3

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(500):
        hf_triton_attn.attention(q, k, v, causal=True)
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "host_profile.txt"), "w") as f:
            f.write(text.getvalue())

    print(f"decode B{batch} H{heads}/{kv_heads} L{args.cache_len} D{head_dim} bf16, {CALLS} calls back to back")
    for name, us in results.items():
        print(f"  {name:<50} {us:8.1f} us/call")
    print(f"  {'GPU time of ops.forward_impl (graph)':<50} {gpu_us:8.1f} us/call")
    print("\n".join(text.getvalue().splitlines()[:45]))


if __name__ == "__main__":
    main()
