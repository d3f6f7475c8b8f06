"""Forward+backward at head dim 192, B4 H16 S4096 and B16 H16 S1024, causal, bf16: ours (the Gluon forward and dQ
kernel, the Triton dK/dV kernel in configs.backward_config's tiles) against ours with the 64 x 64 dK/dV tiles taken
before session 41 and SDPA's cuDNN backend, µs, best of three alternating rounds (wall time), and each one's max
|difference| from cuDNN's dq, dk, dv.

    PYTHONPATH=. python benchmarks/pending/probe_d192_fwdbwd.py
"""
import dataclasses

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import hf_triton_attn
from benchmarks.common import best_of_alternating_rounds_us
from hf_triton_attn import configs

default_backward_config = configs.backward_config


def before_session_41(*args, **kwargs):
    return dataclasses.replace(default_backward_config(*args, **kwargs), dkdv=configs.LaunchConfig(64, 64, 8, 2))


def main() -> None:
    for batch, seqlen in ((4, 4096), (16, 1024)):
        generator = torch.Generator(device="cuda").manual_seed(0)
        q, k, v, grad_out = (torch.randn(batch, 16, seqlen, 192, device="cuda", dtype=torch.bfloat16,
                                         generator=generator) for _ in range(4))
        q, k, v = (t.requires_grad_() for t in (q, k, v))

        def ours(config):
            def run():
                configs.backward_config = config
                try:
                    out = hf_triton_attn.attention(q, k, v, causal=True)
                    return torch.autograd.grad(out, (q, k, v), grad_out)
                finally:
                    configs.backward_config = default_backward_config
            return run

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return torch.autograd.grad(out, (q, k, v), grad_out)

        runs = {"ours": ours(default_backward_config), "ours 64x64 dkdv": ours(before_session_41), "cudnn": cudnn}
        reference = [g.float() for g in cudnn()]
        errors = {name: ", ".join(f"{(g.float() - r).abs().max().item():.1e}" for g, r in zip(run(), reference))
                  for name, run in runs.items()}
        best = best_of_alternating_rounds_us(runs, rounds=3)
        print(f"D192 B{batch} H16 S{seqlen} causal | " + " | ".join(f"{name} {best[name]:.0f} µs (dq, dk, dv err "
                                                                     f"{errors[name]})" for name in runs), flush=True)


if __name__ == "__main__":
    main()
