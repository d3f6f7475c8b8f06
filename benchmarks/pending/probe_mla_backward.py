"""The Gluon dQ and dK/dV kernels at multi-head latent attention's head dims (q/k 192, v 128), once
benchmarks/pending/gluon_value_tiles.patch is applied: forward+backward with both, with the Triton kernel in place of
one or the other (configs.GLUON_DQ / GLUON_DKDV off; the forward is the Gluon one throughout) and with SDPA's cuDNN
backend, best of two alternating rounds (µs), and each one's max |difference| from cuDNN's dq and dk.

    patch -p1 < benchmarks/pending/gluon_value_tiles.patch
    PYTHONPATH=. python benchmarks/pending/probe_mla_backward.py
"""
import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import hf_triton_attn
from hf_triton_attn import configs

ROWS = [(4, 16, 4096, True), (4, 16, 4096, False), (1, 128, 4096, True), (16, 16, 1024, True)]
# (Gluon dQ, Gluon dK/dV) per variant.
VARIANTS = {"gluon both": (True, True), "triton dq": (False, True), "triton dkdv": (True, False),
            "triton both": (False, False)}


def main() -> None:
    print("row | " + " | ".join(VARIANTS) + " | cudnn | max err of dq, dk against cudnn's")
    for batch, heads, seqlen, causal in ROWS:
        generator = torch.Generator(device="cuda").manual_seed(0)
        q, k = (torch.randn(batch, heads, seqlen, 192, device="cuda", dtype=torch.bfloat16, generator=generator)
                .requires_grad_() for _ in range(2))
        v = torch.randn(batch, heads, seqlen, 128, device="cuda", dtype=torch.bfloat16, generator=generator)
        v.requires_grad_()
        grad_out = torch.randn(batch, heads, seqlen, 128, device="cuda", dtype=torch.bfloat16, generator=generator)

        def ours(gluon_dq, gluon_dkdv):
            def run():
                configs.GLUON_DQ, configs.GLUON_DKDV = gluon_dq, gluon_dkdv
                try:
                    out = hf_triton_attn.attention(q, k, v, causal=causal)
                    return torch.autograd.grad(out, (q, k, v), grad_out)[:2]
                finally:
                    configs.GLUON_DQ = configs.GLUON_DKDV = True
            return run

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return torch.autograd.grad(out, (q, k, v), grad_out)[:2]

        runs = {**{name: ours(*flags) for name, flags in VARIANTS.items()}, "cudnn": cudnn}
        reference = [grad.float() for grad in cudnn()]
        errors = {name: [(grad.float() - ref).abs().max().item() for grad, ref in zip(run(), reference)]
                  for name, run in runs.items()}
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(2):
            for name, run in runs.items():
                best[name] = min(best[name], triton.testing.do_bench(run, warmup=25, rep=150) * 1000)
        print(f"B{batch} H{heads} S{seqlen} {'causal' if causal else 'full'} | "
              + " | ".join(f"{best[name]:.0f}" for name in runs) + " | "
              + ", ".join(f"{name} {errors[name][0]:.1e} {errors[name][1]:.1e}" for name in runs), flush=True)


if __name__ == "__main__":
    main()
