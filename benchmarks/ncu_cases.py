"""Runs one attention case a few times, for a profiler (Nsight Compute) to capture our kernels' launches.

    PYTHONPATH=. ncu --clock-control none -k regex:_attn_ --launch-skip 2 --launch-count 1 --set full \
        -o $OUT/fwd_d64 python benchmarks/ncu_cases.py fwd_d64_full

The first calls compile the kernels; skip their launches (``--launch-skip``) so that the profiled one is warm.
Each case is a forward (``fwd_*``) or a forward+backward (``bwd_*``) on random bf16 inputs.
"""
import argparse

import torch

from hf_triton_attn import attention

# name: (batch, heads, kv_heads, seqlen, head_dim, causal)
CASES = {
    "fwd_d64_full": (4, 32, 32, 4096, 64, False),
    "fwd_d64_causal": (4, 32, 32, 4096, 64, True),
    "fwd_d128_full": (4, 16, 16, 4096, 128, False),
    "fwd_d128_causal": (4, 16, 16, 4096, 128, True),
    "bwd_d64_gqa_causal": (4, 32, 8, 4096, 64, True),
    "bwd_d128_causal": (4, 16, 16, 4096, 128, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--calls", type=int, default=4)
    args = parser.parse_args()
    batch, heads, kv_heads, seqlen, head_dim, causal = CASES[args.case]
    backward = args.case.startswith("bwd")
    q = torch.randn(batch, heads, seqlen, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    k = torch.randn(batch, kv_heads, seqlen, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=backward)
    v = torch.randn_like(k, requires_grad=backward)
    for _ in range(args.calls):
        out = attention(q, k, v, causal=causal)
        if backward:
            out.backward(torch.randn_like(out))
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
