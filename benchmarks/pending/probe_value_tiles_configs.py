"""The Gluon forward at head dims 80, 96 and 192 (q/k, v and the output in two tiles each), once
benchmarks/pending/gluon_value_tiles.patch is applied: four tile configurations per head dim against the Triton
forward and SDPA's cuDNN backend, best of two alternating rounds (µs), and each one's max |difference| from cuDNN's
output.

    patch -p1 < benchmarks/pending/gluon_value_tiles.patch
    PYTHONPATH=. python benchmarks/pending/probe_value_tiles_configs.py
"""
import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

import hf_triton_attn
from hf_triton_attn import configs

Config = configs.HopperForwardConfig
# (block_mw, block_n, stages, consumer_regs, max_registers, tma_store, q_slots) per head dim, the patch's default
# first; all fit 227 KiB and compile without spills offline (triton 3.9).
CANDIDATES = {
    80: {"bn128 st2 qs2 tma": Config(64, 128, 2, 240, 168, True, 2),
         "bn128 st3 qs2 tma": Config(64, 128, 3, 240, 168, True, 2),
         "bn64 st3 qs2 tma": Config(64, 64, 3, 240, 168, True, 2),
         "bn128 st2 qs2": Config(64, 128, 2, 240, 168, False, 2)},
    192: {"bn64 st2 qs1 tma": Config(64, 64, 2, 240, 168, True, 1),
          "bn64 st2 qs2": Config(64, 64, 2, 240, 168, False, 2),
          "bn64 st3 qs1": Config(64, 64, 3, 240, 168, False, 1),
          "bn32 st3 qs1 tma": Config(64, 32, 3, 240, 168, True, 1)}}
CANDIDATES[96] = CANDIDATES[80]
ROWS = [(head_dim, *row) for head_dim in (80, 96, 192)
        for row in ((4, 16, 4096, True), (4, 16, 4096, False), (16, 16, 1024, True))]


def main() -> None:
    default = configs.hopper_forward_config
    for head_dim, batch, heads, seqlen, causal in ROWS:
        candidates = CANDIDATES[head_dim]
        generator = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(batch, heads, seqlen, head_dim, device="cuda", dtype=torch.bfloat16,
                               generator=generator) for _ in range(3))

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

        runs = {"triton": ours(None), **{name: ours(cfg) for name, cfg in candidates.items()}, "cudnn": cudnn}
        reference = cudnn().float()
        errors = {name: (run().float() - reference).abs().max().item() for name, run in runs.items()}
        best = dict.fromkeys(runs, float("inf"))
        for _ in range(2):
            for name, run in runs.items():
                best[name] = min(best[name], triton.testing.do_bench(run, warmup=25, rep=150) * 1000)
        gluon = min(best[name] for name in candidates)
        print(f"D{head_dim} B{batch} H{heads} S{seqlen} {'causal' if causal else 'full'} | "
              + " | ".join(f"{name} {best[name]:.0f}" for name in runs) + f" | {gluon / best['cudnn']:.2f} (max err: "
              + ", ".join(f"{errors[name]:.1e}" for name in runs) + ")", flush=True)


if __name__ == "__main__":
    main()
