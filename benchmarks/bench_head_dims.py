"""Head dims that are not powers of two, and multi-head latent attention (a v head dim of its own): our Triton
kernels as they run them against two ways they ran them before, next to SDPA and FlexAttention, in one process on
the same inputs (bench_kernels.py's cases, checks and timing).

    PYTHONPATH=. python benchmarks/bench_head_dims.py [--rounds 3] [--out DIR]

Our variants (not peers: the ratio column still compares "ours" with the best peer):

- "ours triton": the Triton kernels throughout, where the Gluon ones take the call (on Hopper from
  GLUON_MIN_QUERIES: the forward and dQ at 80, 96, 192 and 192/128, dK/dV where configs.hopper_dkdv_config takes
  it). The two variants below run the Triton kernels too, so compare them with this one.
- "ours one tile": the Triton kernels with q and k in one tile padded to a power of two (192 -> 256), where
  ``configs.head_dim_tiles`` splits them in two (192 = 128 + 64, 96 = 64 + 32, 80 = 64 + 16). Where this wins on a
  GPU, head_dim_tiles needs a rule that keeps one tile there (it lost everywhere on an H100 in session 38:
  benchmarks/RESULTS.md).
- "ours v one tile": v, the output and their gradients in one tile padded to a power of two in the Triton kernels,
  where ``configs.value_dim_tiles`` splits them in two (80 = 64 + 16, 96 = 64 + 32, 192 = 128 + 64), as before
  session 39 (the split measured 1.14-1.17x faster forward+backward on an H100 then: benchmarks/RESULTS.md).
- "ours v padded": v padded with zero columns to q's head dim and the output sliced back (rows of multi-head latent
  attention only), as attention() did before the kernels read v at its own head dim.

The summary prints each variant's time over ours (above 1: ours is faster).
"""
import argparse
import contextlib
import sys
import time

import torch
import torch.nn.functional as F

import bench_kernels
from bench_kernels import KernelCase, make_ours
from common import (add_common_arguments, environment_info, format_table, print_environment, require_cuda, selected,
                    write_json)

HEAD_DIMS = ((80, 0), (96, 0), (192, 0), (192, 128))  # (q/k head dim, v head dim where it differs)


def all_cases() -> list[KernelCase]:
    return [KernelCase(group, 4, 16, 16, 4096, head_dim, True, value_head_dim=value_head_dim)
            for group in ("dense fwd", "dense fwdbwd") for head_dim, value_head_dim in HEAD_DIMS]


@contextlib.contextmanager
def configs_replaced(name: str, value):
    """``hf_triton_attn.configs.<name>`` is ``value`` while inside."""
    from hf_triton_attn import configs

    kept = getattr(configs, name)
    setattr(configs, name, value)
    try:
        yield
    finally:
        setattr(configs, name, kept)


@contextlib.contextmanager
def triton_kernels_only():
    """The forward and both backward kernels run the Triton ones while inside, wherever a Gluon one would take the
    call (the tile overrides below are the Triton kernels': the Gluon ones take only the tiles their configurations
    were built for)."""
    with configs_replaced("GLUON_FORWARD", False), configs_replaced("GLUON_DQ", False), \
            configs_replaced("GLUON_DKDV", False):
        yield


@contextlib.contextmanager
def one_head_dim_tile():
    """The Triton kernels take q and k in one padded tile while inside (the Gluon kernels are off)."""
    from hf_triton_attn import configs

    with configs_replaced("head_dim_tiles", lambda head_dim: (configs.padded_head_dim(head_dim), 0)):
        with triton_kernels_only():
            yield


@contextlib.contextmanager
def value_in_one_tile():
    """The Triton kernels take v in one padded tile while inside (the Gluon kernels are off)."""
    from hf_triton_attn import configs

    with configs_replaced("value_dim_tiles", lambda value_dim: (configs.padded_head_dim(value_dim), 0)):
        with triton_kernels_only():
            yield


def make_ours_triton(case: KernelCase, inputs):
    _, forward = make_ours(case, inputs)
    return triton_kernels_only, forward


def make_ours_one_tile(case: KernelCase, inputs):
    _, forward = make_ours(case, inputs)
    return one_head_dim_tile, forward


def make_ours_value_in_one_tile(case: KernelCase, inputs):
    _, forward = make_ours(case, inputs)
    return value_in_one_tile, forward


def make_ours_v_padded(case: KernelCase, inputs):
    if not case.value_head_dim:
        raise NotImplementedError("v has q's head dim here")
    import hf_triton_attn

    def forward():
        v = F.pad(inputs.v, (0, case.head_dim - case.value_head_dim))
        out = hf_triton_attn.attention(inputs.q, inputs.k, v, causal=case.causal)
        return out[..., :case.value_head_dim]
    return contextlib.nullcontext, forward


VARIANTS = {"ours triton": make_ours_triton, "ours one tile": make_ours_one_tile,
            "ours v one tile": make_ours_value_in_one_tile,
            "ours v padded": make_ours_v_padded}


def variant_ratios(records: list[dict]) -> str:
    """Each variant's best time over ours, per case."""
    rows = []
    for record in records:
        ours = record["results"]["ours"]["ms"]
        cells = []
        for name in VARIANTS:
            ms = record["results"][name]["ms"]
            cells.append("n/a" if ms is None or ours is None else f"{ms / ours:.3f}")
        rows.append([record["name"], *cells])
    return "time over ours (above 1: ours is faster)\n" + format_table(["case", *VARIANTS], rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    cases = [c for c in all_cases() if selected(c.name, args.cases)]
    if args.quick:
        cases = cases[:1]
    if not cases:
        raise SystemExit("no case matches --cases")
    require_cuda()
    env = environment_info()
    print_environment(env)
    bench_kernels.PROVIDERS = {"ours": make_ours, **VARIANTS, **{name: bench_kernels.PROVIDERS[name]
                                                                 for name in bench_kernels.PEER_NAMES}}
    records = []
    started = time.perf_counter()
    for index, case in enumerate(cases, 1):
        print(f"[{index}/{len(cases)}] {case.name} ({time.perf_counter() - started:.0f} s)", flush=True)
        records.append(bench_kernels.run_case(case, args.rounds))
        if args.out:
            write_json(f"{args.out}/bench_head_dims.json", {"environment": env, "rounds": args.rounds,
                                                            "cases": records})
    print(f"\ndone in {time.perf_counter() - started:.0f} s\n")
    print(bench_kernels.summary_tables(records))
    print("\n" + variant_ratios(records), flush=True)


if __name__ == "__main__":
    sys.exit(main())
