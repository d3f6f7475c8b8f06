"""The padded cases of bench_kernels.py timed two ways: eager calls (``do_bench``, host time included, which
dominates calls of tens of microseconds) and CUDA-graph replays (``do_bench_cudagraph``, GPU time only); ours
under its default dispatch (the Gluon forward where it applies), the Triton forward alone (Gluon switched off) under
its default configuration and two others, and FlexAttention.

    PYTHONPATH=. python benchmarks/padded_graph.py
"""
import os
import sys

import torch
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_kernels as bench  # noqa: E402

from hf_triton_attn import configs  # noqa: E402
from hf_triton_attn.configs import LaunchConfig  # noqa: E402

# (name, provider, Triton forward configuration or None for the default, Gluon forward allowed)
VARIANTS = [("ours", bench.make_ours, None, True), ("ours triton", bench.make_ours, None, False),
            ("ours fwd w4", bench.make_ours, LaunchConfig(128, 64, 4, 3), False),
            ("ours 64x64 w4 s3", bench.make_ours, LaunchConfig(64, 64, 4, 3), False),
            ("flex", bench.make_flex, None, True)]


def main() -> None:
    default, gluon = configs.forward_config, configs.GLUON_FORWARD
    for case in [c for c in bench.all_cases() if c.group == "padded fwd"]:
        lengths = bench.case_lengths(case)
        work = bench.case_work(case, lengths)
        inputs = bench.make_inputs(case, lengths)
        for name, make, cfg, allow_gluon in VARIANTS:
            configs.forward_config = (lambda *args, cfg=cfg: cfg) if cfg else default
            configs.GLUON_FORWARD = gluon and allow_gluon
            context, forward = make(case, inputs)
            with context:
                forward()
                torch.cuda.synchronize()
                plain = do_bench(forward, return_mode="median")
                graph = do_bench_cudagraph(forward, return_mode="median")
            print(f"{case.name} {name:<18} plain {plain * 1e3:7.1f} us ({bench.throughput(case, work, plain):6.1f})  "
                  f"graph {graph * 1e3:7.1f} us ({bench.throughput(case, work, graph):6.1f} useful TFLOP/s)",
                  flush=True)
        configs.forward_config, configs.GLUON_FORWARD = default, gluon


if __name__ == "__main__":
    main()
