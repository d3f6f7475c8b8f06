"""Where the Gluon dQ and dK/dV kernels start to win at head dims 80, 96 and 192 (v in two tiles; 192 with
benchmarks/pending/gluon_backward_d192.patch applied): forward+backward on rows of 512 to 4096 keys with each kernel
Gluon or Triton, the Gluon dK/dV kernel forced where its configuration declines (short causal rows without GQA).
Session 41's first probe read identical configurations 30% apart on S1024 rows (wall time, best of two rounds), so
this one reports the GPU time of the kernels (torch.profiler, per forward+backward, best of three rounds) beside the
wall time, and the dQ and dK/dV kernels' own times.

    PYTHONPATH=. python benchmarks/pending/probe_backward_short_rows.py
"""
import torch
from torch.autograd import DeviceType

import hf_triton_attn
from benchmarks.common import best_of_alternating_rounds_us
from hf_triton_attn import configs

# (batch, heads, kv heads, sequence length, causal)
ROWS = [(32, 16, 16, 512, True), (32, 16, 16, 512, False), (16, 16, 16, 1024, True), (16, 16, 16, 1024, False),
        (16, 32, 8, 1024, True), (8, 16, 16, 2048, True), (8, 16, 16, 2048, False), (4, 16, 16, 4096, True)]
# (Gluon dQ, Gluon dK/dV) per variant.
VARIANTS = {"triton both": (False, False), "gluon dq": (True, False), "gluon dkdv": (False, True),
            "gluon both": (True, True)}
PROFILED_CALLS = 10
default_dkdv_config = configs.hopper_dkdv_config


def forced_dkdv_config(head_dim, itemsize, capability, seqlen_k, group, causal, value_dim=None):
    """The configuration the Gluon dK/dV kernel takes on long rows, whatever the row's length."""
    return default_dkdv_config(head_dim, itemsize, capability, max(seqlen_k, 4096), group, causal, value_dim)


def set_variant(gluon_dq: bool, gluon_dkdv: bool) -> None:
    configs.GLUON_DQ, configs.GLUON_DKDV = gluon_dq, gluon_dkdv
    configs.hopper_dkdv_config = forced_dkdv_config if gluon_dkdv else default_dkdv_config


def kernel_times_us(run) -> dict:
    """GPU µs per call of ``run``: all kernels, the dQ kernels' and the dK/dV kernels'."""
    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_CALLS):
            run()
        torch.cuda.synchronize()
    times = dict.fromkeys(("all", "dq", "dkdv"), 0.0)
    for event in prof.events():
        if event.device_type != DeviceType.CUDA:
            continue
        elapsed = event.time_range.elapsed_us() / PROFILED_CALLS
        times["all"] += elapsed
        for part in ("dkdv", "dq"):
            if part in event.name:
                times[part] += elapsed
                break
    return times


def main() -> None:
    for head_dim in (80, 96, 192):
        print(f"D{head_dim} row | " + " | ".join(f"{name} gpu (dq, dkdv) / wall" for name in VARIANTS), flush=True)
        for batch, heads, kv_heads, seqlen, causal in ROWS:
            generator = torch.Generator(device="cuda").manual_seed(0)

            def randn(h):
                return torch.randn(batch, h, seqlen, head_dim, device="cuda", dtype=torch.bfloat16,
                                   generator=generator).requires_grad_()
            q, k, v = randn(heads), randn(kv_heads), randn(kv_heads)
            grad_out = torch.randn(batch, heads, seqlen, head_dim, device="cuda", dtype=torch.bfloat16,
                                   generator=generator)

            def run():
                out = hf_triton_attn.attention(q, k, v, causal=causal)
                return torch.autograd.grad(out, (q, k, v), grad_out)

            gpu = {name: None for name in VARIANTS}
            wall = dict.fromkeys(VARIANTS, float("inf"))
            try:
                for _ in range(3):
                    for name, flags in VARIANTS.items():
                        set_variant(*flags)
                        times = kernel_times_us(run)
                        if gpu[name] is None or times["all"] < gpu[name]["all"]:
                            gpu[name] = times
                        wall[name] = min(wall[name], best_of_alternating_rounds_us({name: run}, rounds=1)[name])
            finally:
                set_variant(True, True)
                configs.hopper_dkdv_config = default_dkdv_config
            print(f"D{head_dim} B{batch} H{heads}/{kv_heads} S{seqlen} {'causal' if causal else 'full'} | "
                  + " | ".join(f"{gpu[name]['all']:.0f} ({gpu[name]['dq']:.0f}, {gpu[name]['dkdv']:.0f}) / "
                               f"{wall[name]:.0f}" for name in VARIANTS), flush=True)


if __name__ == "__main__":
    main()
