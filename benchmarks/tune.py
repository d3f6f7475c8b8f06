"""Sweep the launch configurations of our kernels on a GPU and print the fastest per case.

The winners are meant to be copied into hf_triton_attn/configs.py (the defaults the package launches with), so
that no user pays for an autotuning sweep. Each candidate is checked against the default configuration's output
before it is timed. Run on the GPU the numbers are for:

    PYTHONPATH=. python benchmarks/tune.py --out $OUT [--kinds fwd bwd decode] [--max-seconds 300]
"""
import argparse
import functools
import itertools
import os
import sys
import time

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment_info, format_table, print_environment, require_cuda, short_error, write_json  # noqa: E402

from hf_triton_attn import attention, configs  # noqa: E402

DEVICE = "cuda"  # one constant, so that the logic can be exercised on a CPU by patching it
# (batch, heads, kv_heads, seqlen, head_dim, causal): the dense shapes of PEERS.md, one per head dim and mode.
DENSE_CASES = [
    (4, 32, 32, 4096, 64, False), (4, 32, 32, 4096, 64, True),
    (4, 16, 16, 4096, 128, False), (4, 16, 16, 4096, 128, True),
    (2, 8, 8, 4096, 256, True),
]
# (batch, heads, kv_heads, cache length, head_dim)
DECODE_CASES = [(8, 32, 8, 1024, 128), (8, 32, 8, 8192, 128), (8, 32, 8, 32768, 128), (1, 32, 8, 131072, 128)]


def dense_candidates(head_dim: int, backward: bool) -> list[configs.LaunchConfig]:
    blocks = [(32, 64), (64, 64), (64, 128), (128, 64)] if backward else [(64, 64), (64, 128), (128, 64), (128, 128)]
    schedules = [(4, 2), (8, 2), (4, 3), (8, 3)] if backward else [(4, 3), (8, 3), (8, 4), (4, 4)]
    shared_limit = 64 * 128 if head_dim > 128 else None  # 256-wide tiles: keep blocks small enough to fit
    return [configs.LaunchConfig(m, n, warps, stages) for (m, n), (warps, stages) in itertools.product(blocks, schedules)
            if shared_limit is None or m * n <= shared_limit]


def timed(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def sweep(name: str, candidates: list, install, run, reference) -> dict:
    """Time ``run`` under each candidate installed by ``install``; skip candidates that fail or disagree."""
    results = []
    for candidate in candidates:
        install(candidate)
        try:
            out = run()
            err = (out.float() - reference.float()).abs().max().item()
            if not err <= 2e-2:
                results.append((candidate, None, f"wrong output (max diff {err:.2e})"))
                continue
            results.append((candidate, timed(run), ""))
        except Exception as exc:  # e.g. out of shared memory for this block shape
            results.append((candidate, None, short_error(exc, 80)))
    ok = sorted((r for r in results if r[1] is not None), key=lambda r: r[1])
    print(f"{name}: best {ok[0][0] if ok else None} at {ok[0][1]:.3f} ms" if ok else f"{name}: no candidate ran",
          flush=True)
    return {"case": name, "results": [{"config": str(c), "ms": ms, "note": note} for c, ms, note in results],
            "best": str(ok[0][0]) if ok else None, "best_ms": ok[0][1] if ok else None}


def tune_dense(backward: bool) -> list[dict]:
    records = []
    default_fwd, default_bwd = configs.forward_config, configs.backward_config
    for batch, heads, kv_heads, seqlen, head_dim, causal in DENSE_CASES:
        q, k, v = (torch.randn(batch, h, seqlen, head_dim, device=DEVICE, dtype=torch.bfloat16, requires_grad=backward)
                   for h in (heads, kv_heads, kv_heads))
        grad = torch.randn_like(q)

        def run():
            out = attention(q, k, v, causal=causal)
            if not backward:
                return out
            q.grad = k.grad = v.grad = None
            out.backward(grad)
            return q.grad

        reference = run()
        name = f"{'fwd+bwd' if backward else 'fwd'} B{batch} H{heads}/{kv_heads} S{seqlen} D{head_dim} " \
               f"{'causal' if causal else 'full'}"

        def install(cfg):
            if backward:
                configs.backward_config = lambda block_d, interpret: cfg
            else:
                configs.forward_config = lambda block_d, interpret: cfg

        records.append(sweep(name, dense_candidates(head_dim, backward), install, run, reference))
        configs.forward_config, configs.backward_config = default_fwd, default_bwd
    return records


def tune_decode() -> list[dict]:
    records = []
    default_plan = configs.split_kv_plan
    for batch, heads, kv_heads, cache_len, head_dim in DECODE_CASES:
        q = torch.randn(batch, heads, 1, head_dim, device=DEVICE, dtype=torch.bfloat16)
        k, v = (torch.randn(batch, kv_heads, cache_len, head_dim, device=DEVICE, dtype=torch.bfloat16)
                for _ in range(2))

        def run():
            return attention(q, k, v, causal=True)

        reference = run()
        candidates = [dict(block_n=n, num_stages=s, num_warps=w, programs_per_sm=p)
                      for n, s, w, p in itertools.product((32, 64, 128), (2, 3, 4), (4,), (1, 2, 4))]

        def install(overrides):
            configs.split_kv_plan = functools.partial(default_plan, **overrides)

        records.append(sweep(f"decode B{batch} H{heads}/{kv_heads} L{cache_len} D{head_dim}", candidates, install,
                             run, reference))
        configs.split_kv_plan = default_plan
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, metavar="DIR")
    parser.add_argument("--kinds", nargs="+", default=["fwd", "bwd", "decode"], choices=["fwd", "bwd", "decode"])
    args = parser.parse_args()
    require_cuda()
    env = environment_info()
    print_environment(env)
    started = time.perf_counter()
    records = []
    tuners = {"fwd": lambda: tune_dense(False), "bwd": lambda: tune_dense(True), "decode": tune_decode}
    for kind in args.kinds:
        records += tuners[kind]()
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            write_json(os.path.join(args.out, "tune.json"), {"environment": env, "cases": records})
    print(f"\ndone in {time.perf_counter() - started:.0f} s\n")
    print(format_table(["case", "best config", "ms"],
                       [[r["case"], r["best"] or "none", f"{r['best_ms']:.3f}" if r["best_ms"] else "-"]
                        for r in records]))


if __name__ == "__main__":
    main()
