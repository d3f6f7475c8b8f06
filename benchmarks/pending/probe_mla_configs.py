"""The Gluon forward at multi-head latent attention's head dims (q/k 192, v 128), once
benchmarks/pending/gluon_mla_forward.patch is applied: four tile configurations against the Triton forward and
SDPA's cuDNN backend, best of two alternating rounds (µs), and each one's max |difference| from cuDNN's output.

    patch -p1 < benchmarks/pending/gluon_mla_forward.patch
    PYTHONPATH=. python benchmarks/pending/probe_mla_configs.py
"""
import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import hf_triton_attn
from hf_triton_attn import configs

Config = configs.HopperForwardConfig
# (block_mw, block_n, stages, consumer_regs, max_registers, tma_store, q_slots); all fit 227 KiB at 192/128 and
# compile without spills offline (triton 3.9), except the 128-key one (56 bytes).
CANDIDATES = {"bn64 st2 qs2 tma": Config(64, 64, 2, 240, 168, True, 2),
              "bn128 st2 qs1": Config(64, 128, 2, 240, 168, False, 1),
              "bn64 st3 qs2": Config(64, 64, 3, 240, 168, False, 2),
              "bn64 st3 qs1 tma": Config(64, 64, 3, 240, 168, True, 1)}
ROWS = [(4, 16, 4096, True), (4, 16, 4096, False), (1, 128, 4096, True), (16, 16, 1024, True)]


def main() -> None:
    default = configs.hopper_forward_config
    print("row | " + " | ".join(["triton", *CANDIDATES, "cudnn"]) + " | best gluon / cudnn")
    for batch, heads, seqlen, causal in ROWS:
        generator = torch.Generator(device="cuda").manual_seed(0)
        q, k = (torch.randn(batch, heads, seqlen, 192, device="cuda", dtype=torch.bfloat16, generator=generator)
                for _ in range(2))
        v = torch.randn(batch, heads, seqlen, 128, device="cuda", dtype=torch.bfloat16, generator=generator)

        def ours(cfg):
            def run():
                configs.hopper_forward_config = lambda *args: cfg
                try:
                    return hf_triton_attn.attention(q, k, v, causal=causal)
                finally:
                    configs.hopper_forward_config = default
            return run

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        runs = {"triton": ours(None), **{name: ours(cfg) for name, cfg in CANDIDATES.items()}, "cudnn": cudnn}
        reference = cudnn().float()
        errors = {name: (run().float() - reference).abs().max().item() for name, run in runs.items()}
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(2):
            for name, run in runs.items():
                best[name] = min(best[name], triton.testing.do_bench(run, warmup=25, rep=150) * 1000)
        gluon = min(best[name] for name in CANDIDATES)
        print(f"B{batch} H{heads} S{seqlen} {'causal' if causal else 'full'} | "
              + " | ".join(f"{best[name]:.0f}" for name in runs) + f" | {gluon / best['cudnn']:.2f} (max err: "
              + ", ".join(f"{errors[name]:.1e}" for name in runs) + ")", flush=True)


if __name__ == "__main__":
    main()
