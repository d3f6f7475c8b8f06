"""Sweep the launch configurations of our kernels on a GPU and print the fastest per case.

The winners are meant to be copied into hf_triton_attn/configs.py (the defaults the package launches with), so
that no user pays for an autotuning sweep. Each candidate is checked against the default configuration's output
before it is timed. Run on the GPU the numbers are for:

    PYTHONPATH=. python benchmarks/tune.py --out $OUT [--kinds fwd gluon bwd decode] [--max-seconds 300]
        [--cases SUBSTRING ...] [--layout bhsd|bshd]

``fwd`` sweeps the Triton forward's tiles (with the Gluon forward switched off), ``gluon`` the Hopper Gluon
forward's (configs.hopper_forward_config) at head_dims 64, 128 and 256, the Triton forward ("None") among them.
"""
import argparse
import dataclasses
import functools
import itertools
import os
import sys
import time

import torch
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    environment_info, format_table, print_environment, require_cuda, selected, short_error, write_json)

from hf_triton_attn import attention, configs  # noqa: E402

DEVICE = "cuda"  # one constant, so that the logic can be exercised on a CPU by patching it
# (batch, heads, kv_heads, seqlen, head_dim, causal): the dense shapes of PEERS.md, one per head dim and mode, and
# a short causal one (configs.forward_config takes its own tiles for those).
DENSE_CASES = [
    (4, 32, 32, 4096, 64, False), (4, 32, 32, 4096, 64, True),
    (4, 16, 16, 4096, 128, False), (4, 16, 16, 4096, 128, True), (16, 16, 16, 1024, 128, True),
    (2, 8, 8, 4096, 256, True),
    (4, 32, 8, 4096, 64, True),  # the Llama-0.7B train step's attention
]
# (batch, heads, kv_heads, cache length, head_dim)
DECODE_CASES = [(8, 32, 8, 1024, 128), (8, 32, 8, 4096, 128), (8, 32, 8, 32768, 128), (1, 32, 8, 131072, 128),
                (1, 32, 8, 1024, 128)]


def forward_candidates(head_dim: int) -> list[configs.LaunchConfig]:
    blocks = [(64, 64), (64, 128), (128, 64), (128, 128)]
    schedules = [(4, 3), (8, 3), (8, 4), (4, 4)]
    return [configs.LaunchConfig(m, n, warps, stages)
            for (m, n), (warps, stages) in itertools.product(blocks, schedules)
            if head_dim <= 128 or m * n <= 64 * 128]  # 256-wide tiles: keep blocks small enough to fit


def backward_candidates(head_dim: int, kernel: str) -> list[configs.LaunchConfig]:
    """dK/dV programs own many keys and walk few queries at a time; dQ the other way round."""
    blocks = [(32, 64), (32, 128), (64, 64), (64, 128)]
    if kernel == "dq":
        blocks = [(n, m) for m, n in blocks]
    schedules = [(4, 3), (8, 2), (8, 3)]
    return [configs.LaunchConfig(m, n, warps, stages)
            for (m, n), (warps, stages) in itertools.product(blocks, schedules)
            if head_dim <= 128 or m * n <= 64 * 64]


def timed(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def timed_graph(fn) -> float:
    """GPU time alone, replayed from a CUDA graph: an eager decoding call is host-bound at short caches."""
    return do_bench_cudagraph(fn, rep=100, return_mode="median")


def sweep(name: str, candidates: list, install, run, reference, deadline: float, timer=timed) -> dict:
    """Time ``run`` with ``timer`` under each candidate installed by ``install``; skip candidates that fail or
    disagree, and all of them once ``deadline`` (a time.perf_counter() value) has passed. Returns (record, best
    candidate)."""
    results = []
    for candidate in candidates:
        if time.perf_counter() > deadline:
            results.append((candidate, None, "not run: --max-seconds reached"))
            continue
        install(candidate)
        try:
            out = run()
            err = (out.float() - reference.float()).abs().max().item()
            if not err <= 2e-2:
                results.append((candidate, None, f"wrong output (max diff {err:.2e})"))
                continue
            results.append((candidate, timer(run), ""))
        except Exception as exc:  # e.g. out of shared memory for this block shape
            results.append((candidate, None, short_error(exc, 80)))
    ok = sorted((r for r in results if r[1] is not None), key=lambda r: r[1])
    print(f"{name}: best {ok[0][0]} at {ok[0][1]:.3f} ms" if ok else f"{name}: no candidate ran", flush=True)
    record = {"case": name, "results": [{"config": str(c), "ms": ms, "note": note} for c, ms, note in results],
              "best": str(ok[0][0]) if ok else None, "best_ms": ok[0][1] if ok else None}
    return record, (ok[0][0] if ok else None)


# "bhsd": contiguous (B, H, S, D) inputs. "bshd": (B, S, H, D) memory seen as (B, H, S, D), the views Transformers'
# models pass after their projections; the kernels' times differ between the two (benchmarks/NOTES.md, session 24).
LAYOUT = "bhsd"


def dense_inputs(batch, heads, kv_heads, seqlen, head_dim, requires_grad):
    def make(h):
        if LAYOUT == "bshd":
            t = torch.randn(batch, seqlen, h, head_dim, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2)
        else:
            t = torch.randn(batch, h, seqlen, head_dim, device=DEVICE, dtype=torch.bfloat16)
        return t.requires_grad_(requires_grad)
    return [make(h) for h in (heads, kv_heads, kv_heads)]


def case_name(kind, batch, heads, kv_heads, seqlen, head_dim, causal):
    return f"{kind} B{batch} H{heads}/{kv_heads} S{seqlen} D{head_dim} {'causal' if causal else 'full'}"


def decode_case_name(batch, heads, kv_heads, cache_len, head_dim):
    return f"decode B{batch} H{heads}/{kv_heads} L{cache_len} D{head_dim}"


def tune_forward(cases: list, deadline: float) -> list[dict]:
    records = []
    default = configs.forward_config
    gluon = configs.GLUON_FORWARD
    configs.GLUON_FORWARD = False  # else the head_dim-128 cases would time the Gluon kernel under every candidate
    for batch, heads, kv_heads, seqlen, head_dim, causal in cases:
        q, k, v = dense_inputs(batch, heads, kv_heads, seqlen, head_dim, False)

        def run():
            return attention(q, k, v, causal=causal)

        def install(cfg):
            configs.forward_config = lambda *args: cfg

        reference = run()
        records.append(sweep(case_name("fwd", batch, heads, kv_heads, seqlen, head_dim, causal),
                             forward_candidates(head_dim), install, run, reference, deadline)[0])
        configs.forward_config = default
    configs.GLUON_FORWARD = gluon
    return records


def gluon_candidates(head_dim: int) -> list:
    """None (the Triton forward), then the Gluon forward's tiles; one that does not fit in shared memory fails and
    is listed as such. Head_dim 256 sweeps narrower key blocks and one query slot per consumer instead of the
    register counts."""
    if head_dim == 256:
        return [None] + [configs.HopperForwardConfig(64, block_n, stages, 240, 168, tma_store, q_slots)
                         for block_n, stages, tma_store, q_slots in itertools.product((32, 64), (2, 3), (True, False),
                                                                                      (1, 2))]
    return [None] + [configs.HopperForwardConfig(64, block_n, stages, regs, 168, tma_store)
                     for block_n, stages, regs, tma_store in itertools.product((64, 128), (2, 3), (232, 240),
                                                                               (True, False))]


def tune_gluon(cases: list, deadline: float) -> list[dict]:
    records = []
    default = configs.hopper_forward_config
    for batch, heads, kv_heads, seqlen, head_dim, causal in cases:
        if head_dim not in (64, 128, 256):
            continue
        q, k, v = dense_inputs(batch, heads, kv_heads, seqlen, head_dim, False)

        def run():
            return attention(q, k, v, causal=causal)

        def install(cfg):
            configs.hopper_forward_config = lambda *args: cfg

        install(None)
        reference = run()
        records.append(sweep(case_name("gluon fwd", batch, heads, kv_heads, seqlen, head_dim, causal),
                             gluon_candidates(head_dim), install, run, reference, deadline)[0])
        configs.hopper_forward_config = default
    return records


def tune_backward(cases: list, deadline: float) -> list[dict]:
    """dK/dV first (dQ at its default), then dQ with the best dK/dV; each timed as a whole forward+backward. These are
    the Triton kernels' tiles: the Gluon dQ and dK/dV kernels, which Hopper takes where they apply, are switched off
    here (their configurations are ``configs.hopper_dq_config`` and ``configs.hopper_dkdv_config``)."""
    records = []
    default = configs.backward_config
    gluon_dq, gluon_dkdv = configs.GLUON_DQ, configs.GLUON_DKDV
    configs.GLUON_DQ = configs.GLUON_DKDV = False
    for batch, heads, kv_heads, seqlen, head_dim, causal in cases:
        q, k, v = dense_inputs(batch, heads, kv_heads, seqlen, head_dim, True)
        grad = torch.randn_like(q)

        def run():
            q.grad = k.grad = v.grad = None
            attention(q, k, v, causal=causal).backward(grad)
            return torch.cat([q.grad.flatten(), k.grad.flatten(), v.grad.flatten()])

        reference = run()
        base = default(configs.padded_head_dim(head_dim), 2, False, False, causal, seqlen)
        for kernel in ("dkdv", "dq"):
            def install(cfg, kernel=kernel):
                chosen = dataclasses.replace(base, **{kernel: cfg})
                configs.backward_config = lambda *args: chosen

            record, best = sweep(case_name(f"fwd+bwd [{kernel}]", batch, heads, kv_heads, seqlen, head_dim, causal),
                                 backward_candidates(head_dim, kernel), install, run, reference, deadline)
            if best is not None:
                base = dataclasses.replace(base, **{kernel: best})
            records.append(record)
        configs.backward_config = default
    configs.GLUON_DQ, configs.GLUON_DKDV = gluon_dq, gluon_dkdv
    return records


def tune_decode(cases: list, deadline: float) -> list[dict]:
    records = []
    default_plan = configs.split_kv_plan
    for batch, heads, kv_heads, cache_len, head_dim in cases:
        q = torch.randn(batch, heads, 1, head_dim, device=DEVICE, dtype=torch.bfloat16)
        k, v = (torch.randn(batch, kv_heads, cache_len, head_dim, device=DEVICE, dtype=torch.bfloat16)
                for _ in range(2))

        def run():
            return attention(q, k, v, causal=True)

        reference = run()
        candidates = [dict(block_n=n, num_stages=s, num_warps=w, programs_per_sm=p)
                      for n, s, w, p in itertools.product((32, 64, 128), (2, 3, 4), (4, 8), (1, 2, 3))]

        def install(overrides):
            configs.split_kv_plan = functools.partial(default_plan, **overrides)

        records.append(sweep(decode_case_name(batch, heads, kv_heads, cache_len, head_dim), candidates, install,
                             run, reference, deadline, timer=timed_graph)[0])
        configs.split_kv_plan = default_plan
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, metavar="DIR")
    parser.add_argument("--kinds", nargs="+", default=["fwd", "gluon", "bwd", "decode"],
                        choices=["fwd", "gluon", "bwd", "decode"])
    parser.add_argument("--max-seconds", type=float, default=float("inf"),
                        help="stop starting new candidates after this long (the ones not run are listed as such)")
    parser.add_argument("--cases", nargs="+", default=None, metavar="SUBSTRING",
                        help="only the shapes whose name contains one of these (case-insensitive), e.g. "
                             "'H32/8 S4096 D64 causal' or 'L32768'")
    parser.add_argument("--layout", choices=["bhsd", "bshd"], default="bhsd",
                        help="memory layout of the dense inputs: contiguous (B, H, S, D), or (B, S, H, D) seen as "
                             "(B, H, S, D) as Transformers' models pass them")
    args = parser.parse_args()
    global LAYOUT
    LAYOUT = args.layout
    require_cuda()
    env = environment_info()
    print_environment(env)
    print(f"dense inputs: {LAYOUT}", flush=True)
    started = time.perf_counter()
    records = []
    deadline = started + args.max_seconds
    tuners = {"fwd": tune_forward, "gluon": tune_gluon, "bwd": tune_backward, "decode": tune_decode}
    dense = [c for c in DENSE_CASES if selected(case_name("", *c), args.cases)]
    decode = [c for c in DECODE_CASES if selected(decode_case_name(*c), args.cases)]
    for kind in args.kinds:
        records += tuners[kind](decode if kind == "decode" else dense, deadline)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            write_json(os.path.join(args.out, "tune.json"), {"environment": env, "layout": LAYOUT, "cases": records})
    print(f"\ndone in {time.perf_counter() - started:.0f} s\n")
    print(format_table(["case", "best config", "ms"],
                       [[r["case"], r["best"] or "none", f"{r['best_ms']:.3f}" if r["best_ms"] else "-"]
                        for r in records]))


if __name__ == "__main__":
    main()
