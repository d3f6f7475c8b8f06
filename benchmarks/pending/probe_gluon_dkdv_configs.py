"""The Gluon dK/dV kernel's configuration at head dims 80 and 96 (v in two tiles; taken as head_dim 128's, 3 stages
and one K/V slot, never swept): at 96 it runs 892 µs at B4 H16 S4096 causal against 923 at head_dim 128 (H100 and
H200; benchmarks/RESULTS.md, session 41), so the narrower head dim saves it little. Per row and configuration: the
dK/dV kernel's GPU time (torch.profiler, µs per forward+backward, best of two) and dk/dv's max |difference| from the
default's. Offline (triton 3.9) at 96: 64 bytes of spills with one K/V slot (2, 3 or 4 stages), 84 with two.

    PYTHONPATH=. python benchmarks/pending/probe_gluon_dkdv_configs.py
"""
import dataclasses

import torch

import hf_triton_attn
from benchmarks.common import kernels_gpu_time_us
from hf_triton_attn import configs

# (batch, heads, kv heads, sequence length, head dim, causal)
ROWS = [(4, 16, 16, 4096, 96, True), (4, 16, 16, 4096, 96, False), (16, 32, 8, 1024, 96, True),
        (4, 16, 16, 4096, 80, True)]
VARIANTS = {"default": {}, "stages 4": dict(stages=4), "stages 2": dict(stages=2), "kv slots 2": dict(kv_slots=2),
            "kv slots 2, stages 2": dict(kv_slots=2, stages=2), "kv slots 2, stages 4": dict(kv_slots=2, stages=4)}
default_dkdv_config = configs.hopper_dkdv_config


def main() -> None:
    for batch, heads, kv_heads, seqlen, head_dim, causal in ROWS:
        generator = torch.Generator(device="cuda").manual_seed(0)

        def randn(h):
            return torch.randn(batch, h, seqlen, head_dim, device="cuda", dtype=torch.bfloat16, generator=generator)
        q, k, v = randn(heads).requires_grad_(), randn(kv_heads).requires_grad_(), randn(kv_heads).requires_grad_()
        grad_out = randn(heads)

        def run():
            out = hf_triton_attn.attention(q, k, v, causal=causal)
            return torch.autograd.grad(out, (k, v), grad_out)

        reference = None
        cells = []
        for name, fields in VARIANTS.items():
            def config(*args, **kwargs):
                default = default_dkdv_config(*args, **kwargs)
                return default and dataclasses.replace(default, **fields)
            configs.hopper_dkdv_config = config
            try:
                grads = run()
                reference = reference or grads
                diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(grads, reference))
                best = min(kernels_gpu_time_us(run, "dkdv") for _ in range(2))
                cells.append(f"{name} {best:.0f} ({diff:.0e})")
            except Exception as error:  # a configuration that does not fit: say so and go on
                cells.append(f"{name} {type(error).__name__}")
            finally:
                configs.hopper_dkdv_config = default_dkdv_config
        print(f"D{head_dim} B{batch} H{heads}/{kv_heads} S{seqlen} {'causal' if causal else 'full'} | "
              + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
