"""Which calls go wrong on a GPU when v, the output and their gradients are taken in two tiles wherever
`configs.head_dim_tiles` splits q and k (`configs.value_dim_tiles` takes fewer: benchmarks/NOTES.md, session 39): each
case in its own process, since an illegal memory access poisons the CUDA context of the process that made it.

    PYTHONPATH=. python benchmarks/pending/diag_value_split.py
"""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

CASES = ["plain", "backward", "softcap", "negscale", "leftpad", "dense", "big", "nocausal", "gqa"]
VALUE_DIMS = [40, 48, 144, 160, 320, 80, 96, 192]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL_GQA = (2, 4, 2, 33, 45)  # batch, heads, kv heads, queries, keys


def run_case(case: str, dim: int, dtype_name: str) -> None:
    sys.path.insert(0, "tests")
    from hf_triton_attn import configs, ops
    configs.value_dim_tiles = configs.head_dim_tiles
    from helpers import random_qkv
    from test_autograd import check_backward
    from test_kernel import check_forward, padding_mask

    launches = []
    launch = ops._launch_fwd

    def recording(grid, *args, **kwargs):
        launches.append({name: kwargs.get(name) for name in
                         ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "BLOCK_DV", "BLOCK_DV_TAIL", "USE_TMA")})
        return launch(grid, *args, **kwargs)
    ops._launch_fwd = recording
    small = (1, 2, 1, 33, 47)
    shape = {"big": (1, 2, 2, 512, 512), "plain": small, "backward": small, "nocausal": small}.get(case, SMALL_GQA)
    q, k, v = random_qkv(*shape, dim, getattr(torch, dtype_name), DEVICE, requires_grad=case == "backward")
    kwargs = {"causal": case != "nocausal"}
    if case == "softcap":
        kwargs.update(softcap=2.5, scale=0.3)
    if case == "negscale":
        kwargs.update(scale=-0.2)
    if case == "leftpad":
        kwargs.update(attention_mask=padding_mask("left", 2, 45).to(DEVICE))
    if case == "dense":
        kwargs = {"attention_mask": torch.rand(2, 1, 33, 45, device=DEVICE) > 0.3}
    try:
        (check_backward if case == "backward" else check_forward)(q, k, v, **kwargs)
        torch.cuda.is_available() and torch.cuda.synchronize()
        print(f"PASS {case} {dim} {dtype_name} {launches}")
    except Exception as error:  # reported, not raised: the driver collects every case
        print(f"FAIL {case} {dim} {dtype_name} {launches} {str(error).splitlines()[0][:150]}")


def run_in_own_process(job) -> str:
    case, dim, dtype_name = job
    result = subprocess.run([sys.executable, __file__, case, str(dim), dtype_name], capture_output=True, text=True,
                            timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    if lines:
        return lines[0]
    last = result.stderr.strip().splitlines()[-1][:150] if result.stderr.strip() else ""
    return f"CRASH {case} {dim} {dtype_name} rc={result.returncode} {last}"


if __name__ == "__main__":
    if len(sys.argv) > 1:
        run_case(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    else:
        jobs = [(case, dim, dtype) for dim in VALUE_DIMS for case in CASES for dtype in ("float16", "bfloat16")]
        with ThreadPoolExecutor(14) as pool:
            for line in pool.map(run_in_own_process, jobs):
                print(line, flush=True)
