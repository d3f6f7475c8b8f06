"""The Triton dK/dV kernel's tiles where a head-dim or v split changed its registers since they were chosen (session
41 found 32 x 128 tiles 1.5x faster at head dim 192 under a causal mask; benchmarks/RESULTS.md, session 41, table
4), with the Gluon dK/dV kernel beside them where it has a configuration. Per row and tile (block_m x block_n, warps,
stages): the dK/dV kernel's GPU time (torch.profiler, µs per forward+backward, best of two) and dk/dv's max
|difference| from the first variant's; "gluon" is the Gluon dK/dV kernel in its long-row configuration.

    PYTHONPATH=. python benchmarks/pending/probe_dkdv_tiles.py [--rows SUBSTRING ...]
"""
import argparse
import dataclasses

import torch

import hf_triton_attn
from benchmarks.common import kernels_gpu_time_us
from hf_triton_attn import configs

# (block_m, block_n, warps, stages), the first the Triton kernel's tile now. Offline (triton 3.9, sm_90), bytes of
# spills: at 192 without a causal mask 12, 100, 16, 20, 36, 0; at 192/128 16, 0, 0, 0, 0, 0 (64 x 128 spills 700 and
# 308); none at 80 and 96. At 256 (one tile) every tile but 64 x 64 (436) spills over 3 KB, so 256 is left out.
TILES_192 = [(64, 64, 8, 2), (32, 64, 4, 3), (16, 64, 4, 3), (32, 128, 8, 2), (32, 128, 8, 3), (16, 128, 8, 2)]
TILES_SHORT_CAUSAL = [(32, 64, 4, 3), (32, 64, 4, 2), (16, 64, 4, 3), (64, 64, 8, 2), (32, 128, 8, 2),
                      (64, 128, 8, 2), (64, 128, 8, 3)]
# name: (batch, heads, kv heads, sequence length, head dim, v head dim, causal, tiles)
ROWS = {
    "D192 full S4096": (4, 16, 16, 4096, 192, 192, False, TILES_192),
    "D192 full S1024": (16, 16, 16, 1024, 192, 192, False, TILES_192),
    "MLA causal S4096": (4, 16, 16, 4096, 192, 128, True, TILES_192),
    "MLA causal S1024": (16, 16, 16, 1024, 192, 128, True, TILES_192),
    "D96 causal S1024": (16, 16, 16, 1024, 96, 96, True, TILES_SHORT_CAUSAL),
    "D80 causal S512": (32, 16, 16, 512, 80, 80, True, TILES_SHORT_CAUSAL),
    "D96 causal S512": (32, 16, 16, 512, 96, 96, True, TILES_SHORT_CAUSAL),
}
default_backward_config = configs.backward_config
default_dkdv_config = configs.hopper_dkdv_config


def install(tile) -> None:
    """``tile`` for the Triton dK/dV kernel, or "gluon" for the Gluon one in its long-row configuration."""
    if tile == "gluon":
        configs.GLUON_DKDV = True
        configs.hopper_dkdv_config = (lambda head_dim, itemsize, capability, seqlen_k, group, causal, value_dim=None:
                                      default_dkdv_config(head_dim, itemsize, capability, max(seqlen_k, 4096), 4,
                                                          False, value_dim))
        return
    configs.GLUON_DKDV = False
    launch = configs.LaunchConfig(*tile)
    configs.backward_config = lambda *args, **kwargs: dataclasses.replace(default_backward_config(*args, **kwargs),
                                                                          dkdv=launch)


def restore() -> None:
    configs.GLUON_DKDV = True
    configs.hopper_dkdv_config = default_dkdv_config
    configs.backward_config = default_backward_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", nargs="+", help="only the rows whose name contains one of these")
    args = parser.parse_args()
    for name, (batch, heads, kv_heads, seqlen, head_dim, value_dim, causal, tiles) in ROWS.items():
        if args.rows and not any(part in name for part in args.rows):
            continue
        generator = torch.Generator(device="cuda").manual_seed(0)

        def randn(h, d):
            return torch.randn(batch, h, seqlen, d, device="cuda", dtype=torch.bfloat16, generator=generator)
        q, k, v = randn(heads, head_dim).requires_grad_(), randn(kv_heads, head_dim).requires_grad_(), \
            randn(kv_heads, value_dim).requires_grad_()
        grad_out = randn(heads, value_dim)

        def run():
            out = hf_triton_attn.attention(q, k, v, causal=causal)
            return torch.autograd.grad(out, (k, v), grad_out)

        reference = None
        has_gluon = default_dkdv_config(head_dim, 2, (9, 0), 4096, 4, False, value_dim) is not None
        for tile in ["gluon", *tiles] if has_gluon else tiles:
            label = tile if tile == "gluon" else "{}x{} w{} s{}".format(*tile)
            try:
                install(tile)
                grads = run()
                reference = reference or grads
                diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(grads, reference))
                best = min(kernels_gpu_time_us(run, "dkdv") for _ in range(2))
                print(f"{name} | {label} | {best:.0f} µs | max |d dk, dv| {diff:.1e}", flush=True)
            except Exception as error:  # a tile that does not fit, or no Gluon kernel for the row: say so, go on
                print(f"{name} | {label} | {type(error).__name__}: {str(error)[:100]}", flush=True)
            finally:
                restore()


if __name__ == "__main__":
    main()
