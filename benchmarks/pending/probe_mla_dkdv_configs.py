"""The Gluon dK/dV kernel at multi-head latent attention's head dims (q/k 192, v 128) in configurations that spill
less offline (triton 3.9: the default 340 bytes; 232 consumer registers 124; two K/V slots with two stages 256),
forward+backward µs, best of two alternating rounds, with each one's max |difference| from the default's dk and dv.
Where one wins on every row, configs.hopper_dkdv_config should take it.

    PYTHONPATH=. python benchmarks/pending/probe_mla_dkdv_configs.py
"""
import dataclasses

import torch

import hf_triton_attn
from benchmarks.common import best_of_alternating_rounds_us
from hf_triton_attn import configs

ROWS = [(4, 16, 4096, True), (4, 16, 4096, False), (1, 128, 4096, True), (16, 16, 1024, True)]
DEFAULT = configs.hopper_dkdv_config(192, 2, (9, 0), 4096, 1, True, 128)
CANDIDATES = {"default": DEFAULT, "regs 232": dataclasses.replace(DEFAULT, consumer_regs=232),
              "kv slots 2, stages 2": dataclasses.replace(DEFAULT, kv_slots=2, stages=2)}


def main() -> None:
    taken = configs.hopper_dkdv_config
    print("row | " + " | ".join(CANDIDATES) + " | max |dk|, |dv| difference from the default's")
    for batch, heads, seqlen, causal in ROWS:
        generator = torch.Generator(device="cuda").manual_seed(0)
        q, k = (torch.randn(batch, heads, seqlen, 192, device="cuda", dtype=torch.bfloat16, generator=generator)
                .requires_grad_() for _ in range(2))
        v = torch.randn(batch, heads, seqlen, 128, device="cuda", dtype=torch.bfloat16, generator=generator)
        v.requires_grad_()
        grad_out = torch.randn(batch, heads, seqlen, 128, device="cuda", dtype=torch.bfloat16, generator=generator)

        def run_with(cfg):
            def run():
                configs.hopper_dkdv_config = lambda *args, **kwargs: cfg if taken(*args, **kwargs) else None
                try:
                    out = hf_triton_attn.attention(q, k, v, causal=causal)
                    return torch.autograd.grad(out, (k, v), grad_out)
                finally:
                    configs.hopper_dkdv_config = taken
            return run

        runs = {name: run_with(cfg) for name, cfg in CANDIDATES.items()}
        reference = runs["default"]()
        errors = {name: [(grad - ref).abs().max().item() for grad, ref in zip(run(), reference)]
                  for name, run in runs.items()}
        best = best_of_alternating_rounds_us(runs)
        print(f"B{batch} H{heads} S{seqlen} {'causal' if causal else 'full'} | "
              + " | ".join(f"{best[name]:.0f}" for name in runs) + " | "
              + ", ".join(f"{name} {errors[name][0]:.1e} {errors[name][1]:.1e}" for name in runs), flush=True)


if __name__ == "__main__":
    main()
