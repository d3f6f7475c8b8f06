"""Shared by the example scripts: the --device/--dtype flags, importing hf_triton_attn (through the Triton
interpreter on CPU), the pass/fail tolerance, table printing and the verdict."""
import argparse
import os
import sys

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FP32_MAX_ABS_DIFF = 1e-4
HALF_FLOOR_RELATIVE = 1e-3


def add_device_arguments(parser: argparse.ArgumentParser, dtypes=tuple(DTYPES)) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=dtypes, help="default: float32 on CPU, a half type on CUDA")


def setup(parser: argparse.ArgumentParser, args: argparse.Namespace, cuda_dtype: str) -> torch.dtype:
    """Resolve --dtype and import hf_triton_attn, which registers attn_implementation="triton"."""
    on_cpu = torch.device(args.device).type == "cpu"
    args.dtype = args.dtype or ("float32" if on_cpu else cuda_dtype)
    if on_cpu:
        if args.dtype == "bfloat16":
            parser.error("bfloat16 does not work in the Triton interpreter; use float32 on CPU")
        # Must be set before the kernels are defined, i.e. before the import below.
        os.environ.setdefault("TRITON_INTERPRET", "1")
        print(f"device cpu: TRITON_INTERPRET={os.environ['TRITON_INTERPRET']}, Triton kernels run in the "
              "(slow) Triton interpreter")
    import hf_triton_attn  # noqa: F401
    import transformers

    transformers.utils.logging.disable_progress_bar()
    print(f"device {args.device}, dtype {args.dtype}")
    return DTYPES[args.dtype]


def diff_limit(dtype: torch.dtype, sdpa_diff: float, scale: float) -> float:
    """Largest acceptable max abs diff against eager: fixed in float32; in float16/bfloat16 twice what sdpa
    shows against eager on the same inputs, plus a floor of 1e-3 of the output scale."""
    if dtype == torch.float32:
        return FP32_MAX_ABS_DIFF
    return 2 * sdpa_diff + HALF_FLOOR_RELATIVE * scale


def tolerance_text(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return f"tolerance (float32): max abs diff vs eager <= {FP32_MAX_ABS_DIFF:g}"
    return (f"tolerance ({str(dtype).removeprefix('torch.')}): max abs diff vs eager <= 2 x sdpa's diff vs eager + "
            f"{HALF_FLOOR_RELATIVE:g} x max |eager output|")


def print_table(header: list, rows: list) -> None:
    cells = [[str(cell) for cell in row] for row in (header, *rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def finish(failures: list[str]) -> None:
    """Print the verdict; exit non-zero when anything failed."""
    for failure in failures:
        print("FAIL:", failure)
    if failures:
        sys.exit(1)
    print("PASS")
