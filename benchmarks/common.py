"""Helpers shared by the benchmark scripts: command line, environment record, lengths, timing, tables, JSON.

Everything here that does not touch the GPU is plain Python, so it can be checked on a machine without one.
"""
import argparse
import datetime
import gc
import json
import os
import platform
import random
import statistics
import time
from typing import Callable, Optional, Sequence

import torch


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for the results (JSON; a PNG plot too for the kernels); created if missing. "
                             "Default: print only.")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset for a smoke test (minutes less, numbers not comparable to the full run)")
    parser.add_argument("--cases", nargs="+", default=None, metavar="SUBSTRING",
                        help="run only cases whose name contains one of these substrings (case-insensitive)")
    parser.add_argument("--rounds", type=positive_int, default=1, metavar="N",
                        help="time every provider N times per case, in turn, and keep each one's best round "
                             "(the speed of a GPU or its host drifts within a run and between runs)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def selected(name: str, substrings: Optional[Sequence[str]]) -> bool:
    """True when no filter is given or the name contains one of the substrings (case-insensitive)."""
    if not substrings:
        return True
    lowered = name.lower()
    return any(s.lower() in lowered for s in substrings)


def environment_info() -> dict:
    """What the numbers depend on: GPU, library versions, date. Safe to call without a GPU."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "gpu": None,
    }
    for module_name in ("triton", "transformers"):
        try:
            info[module_name] = __import__(module_name).__version__
        except ImportError:
            info[module_name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_multiprocessors"] = props.multi_processor_count
        info["gpu_capability"] = f"{props.major}.{props.minor}"
    return info


def print_environment(info: dict) -> None:
    print(f"# {info['gpu']} | torch {info['torch']} (CUDA {info['cuda_runtime']}) | triton {info['triton']} | "
          f"transformers {info['transformers']} | {info['date_utc']}", flush=True)


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("These benchmarks need a CUDA GPU; torch.cuda.is_available() is False.")


def random_lengths(batch: int, max_len: int, seed: int, min_fraction: float = 0.125) -> list[int]:
    """Sequence lengths of a padded batch, reproducible from ``seed``.

    Uniform in [max_len * min_fraction, max_len], with one sequence at ``max_len``: a real batch is padded to
    its longest sequence, so the padded shape is always (batch, max_len).
    """
    rng = random.Random(seed)
    shortest = max(1, int(max_len * min_fraction))
    lengths = [rng.randint(shortest, max_len) for _ in range(batch)]
    lengths[rng.randrange(batch)] = max_len
    return lengths


def free_cuda_memory() -> None:
    """Return cached blocks after a provider finished or ran out of memory, so the next starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def short_error(exc: BaseException, limit: int = 160) -> str:
    """One line naming the exception, for tables and JSON (tracebacks of backend refusals are noise)."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def time_cuda_ms(fn: Callable[[], object], warmup: int, reps: int, max_seconds: float = float("inf")) -> list[float]:
    """Milliseconds of each of ``reps`` calls of ``fn``, timed with CUDA events after ``warmup`` calls.

    For end-to-end steps (tens of ms and more) where ``triton.testing.do_bench``'s fixed time budget would run
    too few or too many repetitions. Stops early, after at least one timed call, once ``max_seconds`` of wall
    time have gone into the timed calls, so one slow implementation cannot eat the whole run's budget.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    started = time.perf_counter()
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
        if time.perf_counter() - started > max_seconds:
            break
    return times


def best_of_alternating_rounds_us(runs: dict[str, Callable[[], object]], rounds: int = 2) -> dict[str, float]:
    """Each run's best ``triton.testing.do_bench`` median over ``rounds`` rounds, in µs, the runs taking turns in
    each round (so that none draws a slow stretch of the GPU or host alone)."""
    import triton

    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = min(best[name], triton.testing.do_bench(run, warmup=25, rep=150) * 1000)
    return best


def kernels_gpu_time_us(run: Callable[[], object], name_part: str, calls: int = 10) -> float:
    """GPU µs per call of ``run`` spent in the CUDA kernels whose name contains ``name_part`` (torch.profiler, after
    one call unprofiled): a kernel's own time, free of the host's."""
    from torch.autograd import DeviceType

    run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    return sum(event.time_range.elapsed_us() for event in prof.events()
               if event.device_type == DeviceType.CUDA and name_part in event.name) / calls


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown pipe table with padded columns: readable in a terminal, pasteable into RESULTS.md.

    The first column (the case name) is left-aligned, the others (numbers) right-aligned.
    """
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells):
        padded = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    separator = "|" + "|".join(("-" * (w + 1) + ("-" if i == 0 else ":")) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), separator] + [line(r) for r in rows])


def write_json(path: str, payload: dict) -> None:
    """Write atomically (temp file + rename): a run killed mid-write leaves the previous complete file."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(payload, f, indent=2, default=str)
        f.write("\n")
    os.replace(temporary, path)
