"""The Triton dK/dV kernel's tiles at head dim 192 under a causal mask, where it serves the call (the Gluon one loses
there; benchmarks/RESULTS.md, session 41). configs.backward_config picks them from the padded head dim, 256: 64 x 64
with 8 warps and 2 stages, measured in session 13, before q/k and v were split into 128 + 64 columns. Each candidate's
dK/dV kernel GPU time (torch.profiler, µs per forward+backward, best of two) and its dk/dv's max |difference| from
the default's, the Gluon forward and dQ kernels as they run.

    PYTHONPATH=. python benchmarks/pending/probe_d192_dkdv_tiles.py
"""
import dataclasses

import torch
from torch.autograd import DeviceType

import hf_triton_attn
from hf_triton_attn import configs

ROWS = [(4, 16, 16, 4096), (16, 16, 16, 1024)]  # (batch, heads, kv heads, sequence length), causal, head dim 192
# (block_m, block_n, warps, stages); the first is the default.
# Offline (triton 3.9), spill bytes: 96, 100, 88, 0, 0, 4, 64, 0; 64 x 64 with 4 warps spills 1028 and is left out.
CANDIDATES = [(64, 64, 8, 2), (64, 64, 8, 3), (32, 64, 4, 2), (32, 64, 8, 2), (32, 64, 8, 3), (16, 64, 4, 3),
              (32, 128, 8, 2), (16, 128, 8, 2)]
default_backward_config = configs.backward_config


def dkdv_time_us(run, calls: int = 10) -> float:
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    return sum(event.time_range.elapsed_us() for event in prof.events()
               if event.device_type == DeviceType.CUDA and "dkdv" in event.name) / calls


def main() -> None:
    for batch, heads, kv_heads, seqlen in ROWS:
        generator = torch.Generator(device="cuda").manual_seed(0)

        def randn(h):
            return torch.randn(batch, h, seqlen, 192, device="cuda", dtype=torch.bfloat16,
                               generator=generator).requires_grad_()
        q, k, v = randn(heads), randn(kv_heads), randn(kv_heads)
        grad_out = torch.randn(batch, heads, seqlen, 192, device="cuda", dtype=torch.bfloat16, generator=generator)

        def run():
            out = hf_triton_attn.attention(q, k, v, causal=True)
            return torch.autograd.grad(out, (k, v), grad_out)

        reference = None
        for block_m, block_n, warps, stages in CANDIDATES:
            tile = configs.LaunchConfig(block_m, block_n, warps, stages)

            def config(*args, **kwargs):
                return dataclasses.replace(default_backward_config(*args, **kwargs), dkdv=tile)
            configs.backward_config = config
            try:
                grads = run()
                reference = reference or grads
                diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(grads, reference))
                best = min(dkdv_time_us(run) for _ in range(2))
                print(f"B{batch} H{heads} S{seqlen} causal D192 dkdv {block_m}x{block_n} w{warps} s{stages}: "
                      f"{best:.0f} µs, max |d dk, dv| {diff:.1e}", flush=True)
            except Exception as error:  # a tile that does not fit: say so and go on
                print(f"B{batch} H{heads} S{seqlen} dkdv {block_m}x{block_n} w{warps} s{stages}: "
                      f"{type(error).__name__}: {str(error)[:100]}", flush=True)
            finally:
                configs.backward_config = default_backward_config


if __name__ == "__main__":
    main()
