"""The Gluon dQ kernel at multi-head latent attention's head dims (q/k 192, v 128), once
benchmarks/pending/gluon_value_tiles.patch is applied: forward+backward with it against the same with the Triton dQ
kernel (configs.GLUON_DQ off; the forward is the Gluon one in both) and SDPA's cuDNN backend, best of two alternating
rounds (µs), and each one's max |difference| from cuDNN's dq.

    patch -p1 < benchmarks/pending/gluon_value_tiles.patch
    PYTHONPATH=. python benchmarks/pending/probe_mla_dq.py
"""
import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import hf_triton_attn
from hf_triton_attn import configs

ROWS = [(4, 16, 4096, True), (4, 16, 4096, False), (1, 128, 4096, True), (16, 16, 1024, True)]


def main() -> None:
    print("row | gluon dq | triton dq | cudnn | gluon dq / triton dq (time) | max err of dq against cudnn's")
    for batch, heads, seqlen, causal in ROWS:
        generator = torch.Generator(device="cuda").manual_seed(0)
        q, k = (torch.randn(batch, heads, seqlen, 192, device="cuda", dtype=torch.bfloat16, generator=generator)
                .requires_grad_() for _ in range(2))
        v = torch.randn(batch, heads, seqlen, 128, device="cuda", dtype=torch.bfloat16, generator=generator)
        v.requires_grad_()
        grad_out = torch.randn(batch, heads, seqlen, 128, device="cuda", dtype=torch.bfloat16, generator=generator)

        def ours(gluon_dq):
            def run():
                configs.GLUON_DQ = gluon_dq
                try:
                    out = hf_triton_attn.attention(q, k, v, causal=causal)
                    return torch.autograd.grad(out, (q, k, v), grad_out)[0]
                finally:
                    configs.GLUON_DQ = True
            return run

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return torch.autograd.grad(out, (q, k, v), grad_out)[0]

        runs = {"gluon dq": ours(True), "triton dq": ours(False), "cudnn": cudnn}
        reference = cudnn().float()
        errors = {name: (run().float() - reference).abs().max().item() for name, run in runs.items()}
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(2):
            for name, run in runs.items():
                best[name] = min(best[name], triton.testing.do_bench(run, warmup=25, rep=150) * 1000)
        print(f"B{batch} H{heads} S{seqlen} {'causal' if causal else 'full'} | "
              + " | ".join(f"{best[name]:.0f}" for name in runs)
              + f" | {best['gluon dq'] / best['triton dq']:.3f} | "
              + ", ".join(f"{name} {errors[name]:.1e}" for name in runs), flush=True)


if __name__ == "__main__":
    main()
