"""The Gluon dQ and dK/dV kernels at head dims 80 and 96 (q/k, v, O, dO and the gradients in two column tiles each,
landed in session 40 untimed), and at 192 with benchmarks/pending/gluon_backward_d192.patch applied (without it the
Triton kernels take 192 in every column): forward+backward with both, with the Triton kernel in place of one or the other
(configs.GLUON_DQ / GLUON_DKDV off; the forward is the Gluon one throughout) and with SDPA's cuDNN backend, best of
two alternating rounds (µs), and each one's max |difference| from cuDNN's dq and dk. Where a Gluon kernel loses,
its configuration (configs.hopper_dq_config, hopper_dkdv_config) should return None there.

    PYTHONPATH=. python benchmarks/pending/probe_backward_value_tiles.py
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import hf_triton_attn
from benchmarks.common import best_of_alternating_rounds_us
from hf_triton_attn import configs

# (batch, heads, kv heads, sequence length, causal)
ROWS = [(4, 16, 16, 4096, True), (4, 16, 16, 4096, False), (4, 32, 8, 4096, True), (16, 16, 16, 1024, True),
        (16, 16, 16, 1024, False)]
# (Gluon dQ, Gluon dK/dV) per variant.
VARIANTS = {"gluon both": (True, True), "triton dq": (False, True), "triton dkdv": (True, False),
            "triton both": (False, False)}


def main() -> None:
    for head_dim in (80, 96, 192):
        print(f"D{head_dim} row | " + " | ".join(VARIANTS) + " | cudnn | max err of dq, dk against cudnn's")
        for batch, heads, kv_heads, seqlen, causal in ROWS:
            generator = torch.Generator(device="cuda").manual_seed(0)

            def randn(h):
                return torch.randn(batch, h, seqlen, head_dim, device="cuda", dtype=torch.bfloat16,
                                   generator=generator).requires_grad_()
            q, k, v = randn(heads), randn(kv_heads), randn(kv_heads)
            grad_out = torch.randn(batch, heads, seqlen, head_dim, device="cuda", dtype=torch.bfloat16,
                                   generator=generator)

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
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=kv_heads != heads)
                return torch.autograd.grad(out, (q, k, v), grad_out)[:2]

            runs = {**{name: ours(*flags) for name, flags in VARIANTS.items()}, "cudnn": cudnn}
            try:
                reference = [grad.float() for grad in cudnn()]
            except RuntimeError:  # no cuDNN kernel for this call: the Triton kernels' gradients as the reference
                runs.pop("cudnn")
                reference = [grad.float() for grad in runs["triton both"]()]
            errors = {name: [(grad.float() - ref).abs().max().item() for grad, ref in zip(run(), reference)]
                      for name, run in runs.items()}
            best = best_of_alternating_rounds_us(runs)
            print(f"D{head_dim} B{batch} H{heads}/{kv_heads} S{seqlen} {'causal' if causal else 'full'} | "
                  + " | ".join(f"{best[name]:.0f}" if name in best else "n/a" for name in [*VARIANTS, "cudnn"])
                  + " | " + ", ".join(f"{name} {errors[name][0]:.1e} {errors[name][1]:.1e}" for name in runs),
                  flush=True)


if __name__ == "__main__":
    main()
