"""The developer scripts that run without a GPU keep working as the kernels change."""
import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import DEVICE

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize("args", [["dkdv", "--grouped"],
                                  ["fwd", "--block-m", "128", "--block-n", "64", "--warps", "8"]])
def test_compile_sm90_reports_the_compiled_kernel(args):
    """An offline sm_90 compile (the JIT's specialisations, no GPU) reports registers, shared memory, programs per
    multiprocessor and wgmma operands; a kernel argument the script has no value for would stop it with a message."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(SCRIPTS / "compile_sm90.py"), *args], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = re.search(r"(\d+) registers, (\d+) bytes of spill stores, (\d+) bytes of shared memory, (\d+) programs "
                       r"per multiprocessor; wgmma A operands: (\d+) in registers, (\d+) in shared memory",
                       result.stdout)
    assert report, result.stdout
    registers, _, shared, programs, in_registers, in_shared = map(int, report.groups())
    assert 0 < registers <= 255 and shared > 0 and programs >= 1
    # P (forward) and P^T, dS^T (dK/dV) feed their products from registers; the other operands from shared memory.
    assert in_registers > 0 and in_shared > 0


def test_bench_models_keeps_each_implementations_best_round(monkeypatch):
    """`bench_models.py --rounds N` runs every implementation N times in turn and keeps its best round: the lowest
    time, or the highest tok/s, a failed round never beating one that ran; every round's value is kept."""
    monkeypatch.syspath_prepend(str(SCRIPTS.parent / "benchmarks"))
    import bench_models

    def ok(value):
        return {"status": "ok", "value": value}

    best = None
    for result in (ok(5.0), ok(4.0), {"status": "failed", "reason": "a bug"}, ok(4.5)):
        best = bench_models.best_of_rounds(best, result, "ms")
    assert best == dict(ok(4.0), rounds=[5.0, 4.0, None, 4.5])
    best = None
    for result in ({"status": "oom", "reason": "CUDA out of memory"}, ok(400.0), ok(300.0)):
        best = bench_models.best_of_rounds(best, result, "tok/s")
    assert best == dict(ok(400.0), rounds=[None, 400.0, 300.0])
    assert bench_models.parse_args(["--rounds", "3"]).rounds == 3


def test_bench_kernels_keeps_each_providers_best_round(monkeypatch):
    """`bench_kernels.py --rounds N` verifies every provider once, times them in turn N times and keeps each one's
    best (lowest) median time, from which the throughput and our ratio to the best peer come; every round's time is
    kept. Run on the CPU with the GPU timer replaced by a fixed sequence of times."""
    monkeypatch.syspath_prepend(str(SCRIPTS.parent / "benchmarks"))
    import bench_kernels

    monkeypatch.setattr(bench_kernels, "DEVICE", "cpu")
    times = iter([2.0, 4.0, 1.5, 5.0, 3.0, 3.5])  # ours, flex; ours, flex; ...
    monkeypatch.setattr(bench_kernels.triton.testing, "do_bench", lambda *args, **kwargs: next(times))

    def make(case, inputs):
        return contextlib.nullcontext, lambda: torch.nn.functional.scaled_dot_product_attention(
            inputs.q, inputs.k, inputs.v)
    monkeypatch.setattr(bench_kernels, "PROVIDERS", {"ours": make, "flex": make})
    case = bench_kernels.KernelCase("dense fwd", 1, 2, 2, 32, 16, False, dtype=torch.float32)
    record = bench_kernels.run_case(case, rounds=3)
    ours, flex = record["results"]["ours"], record["results"]["flex"]
    assert (ours["rounds"], ours["ms"], flex["rounds"], flex["ms"]) == ([2.0, 1.5, 3.0], 1.5, [4.0, 5.0, 3.5], 3.5)
    assert ours["value"] == pytest.approx(bench_kernels.throughput(case, record["work"], 1.5))
    assert record["ours_over_best_peer"] == pytest.approx(3.5 / 1.5)
    assert flex["max_abs_diff"] == 0 and not flex["mismatch"]
    assert bench_kernels.parse_args(["--rounds", "3"]).rounds == 3
    with pytest.raises(SystemExit):
        bench_kernels.parse_args(["--rounds", "0"])


def test_bench_head_dims_variants_run_what_they_name(monkeypatch):
    """`bench_head_dims.py`'s variants of our call: "triton fwd" launches the Triton kernels as ours does here (the
    Gluon forward never runs in the interpreter), "one tile" with q and k in one padded tile (no tail), "v one tile"
    with v in one padded tile and "v padded" with v at q's head dim, all matching ours (gradients included) on a
    multi-head latent attention case (q/k 96 = 64 + 32, v 80 = 64 + 16); the summary divides each variant's time by
    ours. Run with the GPU timer replaced by a fixed sequence of times."""
    monkeypatch.syspath_prepend(str(SCRIPTS.parent / "benchmarks"))
    import bench_head_dims
    import bench_kernels

    from hf_triton_attn import configs, ops

    launches = []
    for name in ("_launch_fwd", "_launch_bwd_dq", "_launch_bwd_dkdv"):
        def recording(grid, *args, _launch=getattr(ops, name), _name=name, **kwargs):
            launches.append((_name, kwargs["BLOCK_D"], kwargs["BLOCK_D_TAIL"], args[2].shape[3],
                             kwargs.get("BLOCK_DV_TAIL", 0)))
            return _launch(grid, *args, **kwargs)
        monkeypatch.setattr(ops, name, recording)
    monkeypatch.setattr(bench_kernels, "DEVICE", DEVICE.type)
    times = iter([2.0, 3.0, 4.0, 5.0, 6.0])  # ours, triton, one tile, v one tile, v padded
    monkeypatch.setattr(bench_kernels.triton.testing, "do_bench", lambda *args, **kwargs: next(times))
    monkeypatch.setattr(bench_kernels, "PROVIDERS", {"ours": bench_kernels.make_ours, **bench_head_dims.VARIANTS})
    case = bench_kernels.KernelCase("dense fwdbwd", 1, 2, 2, 32, 96, True, torch.float32, value_head_dim=80)
    record = bench_kernels.run_case(case)
    # One call per provider (the timer is replaced): a forward, a dQ and a dK/dV launch each.
    assert [name for name, *_ in launches] == ["_launch_fwd", "_launch_bwd_dq", "_launch_bwd_dkdv"] * 5
    tiles = {name: {launch[1:] for launch in launches[3 * index:3 * index + 3]}
             for index, name in enumerate(("ours", "ours triton", "ours one tile", "ours v one tile",
                                           "ours v padded"))}
    assert tiles == {"ours": {(64, 32, 80, 16)}, "ours triton": {(64, 32, 80, 16)},
                     "ours one tile": {(128, 0, 80, 16)}, "ours v one tile": {(64, 32, 80, 0)},
                     "ours v padded": {(64, 32, 96, 32)}}
    switches = ("GLUON_FORWARD", "GLUON_DQ", "GLUON_DKDV")
    kept = [getattr(configs, name) for name in switches]
    for variant in (bench_head_dims.value_in_one_tile, bench_head_dims.one_head_dim_tile):
        with variant():
            assert configs.value_dim_tiles(80) == ((128, 0) if variant is bench_head_dims.value_in_one_tile
                                                   else (64, 16))
            assert not any(getattr(configs, name) for name in switches)
    assert configs.value_dim_tiles(80) == (64, 16)
    assert [getattr(configs, name) for name in switches] == kept
    for name in bench_head_dims.VARIANTS:
        assert not record["results"][name]["mismatch"], record["results"][name]
    last_row = bench_head_dims.variant_ratios([record]).splitlines()[-1]
    assert [cell.strip() for cell in last_row.split("|")[2:6]] == ["1.500", "2.000", "2.500", "3.000"]


def test_fuzz_attention_calls_match_the_oracle_and_a_wrong_result_is_reported(monkeypatch):
    """`fuzz_attention.py`'s random calls match the float64 oracle (seed 1197 among them: int64 seqused_k with a key
    mask through tensor descriptors, which failed to compile before session 37's fix), and an output off by 1% is
    reported."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import fuzz_attention

    for seed in [*range(8), 1197]:
        assert fuzz_attention.problems(seed) == [], seed
    attention = fuzz_attention.hf_triton_attn.attention

    def one_percent_off(*args, **kwargs):
        return 1.01 * attention(*args, **kwargs)
    monkeypatch.setattr(fuzz_attention.hf_triton_attn, "attention", one_percent_off)
    assert any(problem.startswith("out: error") for problem in fuzz_attention.problems(0))


@pytest.mark.parametrize("kernel, args, fields", [
    ("gluon", ["--head-dim", "256", "--seqlen", "4096", "--sass"], "block_n=64, stages=2"),
    ("gluon", ["--head-dim", "128", "--full", "--block-n", "64", "--stages", "3", "--tma-store", "0"],
     "block_n=64, stages=3, consumer_regs=240, max_registers=168, tma_store=False, q_slots=2"),
    ("gluon", ["--head-dim", "96", "--seqlen", "4096", "--sinks"], "block_n=128, stages=2"),
    ("gluon-dkdv", ["--head-dim", "64", "--seqlen", "4096", "--grouped"], "stages=4, kv_slots=2"),
    ("gluon-dkdv", ["--head-dim", "128", "--seqlen", "2048", "--kv-slots", "2", "--stages", "2"],
     "block_m=64, block_nw=64, stages=2, kv_slots=2"),
    ("gluon-dkdv", ["--head-dim", "192", "--value-head-dim", "128", "--seqlen", "4096"], "block_m=32, block_nw=64"),
    ("gluon-dq", ["--head-dim", "128", "--seqlen", "4096", "--stages", "2"], "block_mw=64, block_n=64, stages=2"),
    ("gluon-dkdv", ["--head-dim", "96", "--seqlen", "4096", "--full"], "block_m=64, block_nw=64, stages=3"),
    ("gluon-dq", ["--head-dim", "192", "--value-head-dim", "128", "--seqlen", "4096"], "block_n=64, stages=2"),
    ("gluon-dq", ["--head-dim", "80", "--seqlen", "4096"], "block_mw=64, block_n=64, stages=3")])
def test_compile_sm90_reports_the_gluon_kernels(kernel, args, fields):
    """The Gluon forward (q/k, v and the output in two tiles each at head dim 96), dQ and dK/dV (at 192/128 too, and
    with v in two tiles at 80 and 96) kernels compile offline in the configuration the package takes for a head dim and length, with the given fields
    overridden, and fit in a program's shared memory; with --sass, the report finds the forward's four key loops'
    waits."""
    hopper = pytest.importorskip("triton.experimental.gluon.nvidia.hopper")
    if not hasattr(hopper.TensorDescriptor, "__mangle__"):
        pytest.skip("this Triton (3.6) cannot name a Gluon descriptor's type for an offline compile")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(SCRIPTS / "compile_sm90.py"), kernel, *args], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = re.search(rf"^{kernel} .*Hopper\w+Config\((.*)\) .*: (\d+) registers, (\d+) bytes of spill stores, "
                       r"(\d+) bytes of shared memory \(a program may have (\d+)\)", result.stdout, re.MULTILINE)
    assert report, result.stdout
    config, registers, _, shared, limit = report.group(1), *map(int, report.groups()[1:])
    assert fields in config
    assert 0 < registers <= 255 and 0 < shared <= limit
    if "--sass" in args:  # two consumers, each with a clean and a masked key loop
        waits = re.search(r"^(\d+) product groups, (\d+) full and (\d+) partial waits in the code; exponentials before "
                          r"/ after the full wait that follows a partial one: (.*)$", result.stdout, re.MULTILINE)
        assert waits and len(re.findall(r"\d+/\d+ \(after 'LE 1'\)", waits.group(4))) == 4, result.stdout
        assert int(waits.group(3)) == 4 and int(waits.group(2)) < int(waits.group(1)), result.stdout


def test_compile_sm90_reads_ptxas_and_the_sass(monkeypatch, capsys):
    """The report's parts that read tool output, on fixed text: ptxas's registers and spills, and its performance
    advisories passed on (a C7512 advisory means the kernel's products were serialised); in the SASS, the
    exponentials counted before and after the full wait that follows a partial one, per loop."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import compile_sm90

    advisory = ("ptxas info    : (C7512) Potential Performance Loss: wgmma.mma_async instructions are serialized due "
                "to insufficient register resources for the function 'k'")
    report = f"ptxas info    : Used 168 registers\n  8 bytes stack frame, 24 bytes spill stores\n{advisory}\n"
    monkeypatch.setattr(compile_sm90, "get_ptxas", lambda arch: SimpleNamespace(path="ptxas"))
    monkeypatch.setattr(compile_sm90.subprocess, "run",
                        lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, "", report))
    assert compile_sm90.ptxas_report("// ptx") == (168, 24)
    assert "ptxas: Potential Performance Loss: wgmma.mma_async instructions are serialized" in capsys.readouterr().out
    sass = "\n".join(["HGMMA gsb0", "WARPGROUP.DEPBAR.LE gsb0, 0x1", "MUFU.EX2", "WARPGROUP.DEPBAR.LE gsb0, 0x0",
                      "MUFU.EX2", "MUFU.EX2", "HGMMA gsb0", "WARPGROUP.DEPBAR.LE gsb0, 0x2", "MUFU.EX2", "MUFU.EX2",
                      "BRA", "WARPGROUP.DEPBAR.LE gsb0, 0x0", "HGMMA gsb0", "WARPGROUP.DEPBAR.LE gsb0, 0x1", "HGMMA"])
    assert compile_sm90.exponentials_around_waits(sass) == [(1, 1, 2), (2, 2, 0)]


def test_model_sweep_reports_each_model_and_catches_a_dropped_mask(monkeypatch):
    """`model_sweep.py` checks a tiny model of each architecture against eager: Llama matches (at head dim 40, which the
    kernels take in two tiles), BLOOM never calls the attention function and is reported as such; with the padding
    mask dropped, Llama's left-padded logits must differ (right padding follows the valid tokens of a causal model:
    those are unchanged), and the sweep must say so. The check leaves "triton" registered as it found it."""
    env = dict(os.environ, PYTHONPATH=str(SCRIPTS.parent))
    result = subprocess.run([sys.executable, str(SCRIPTS / "model_sweep.py"), "--types", "llama", "bloom",
                             "--jobs", "1", "--head-dim", "40"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"llama +ok +left=\S+ right=\S+ generate=same", result.stdout), result.stdout
    assert re.search(r"bloom +skip +never calls the attention function", result.stdout), result.stdout
    assert "summary: 1 ok, 0 DIFF, 0 ERROR, 1 skip" in result.stdout

    monkeypatch.syspath_prepend(str(SCRIPTS))
    import model_sweep
    import transformers

    import hf_triton_attn
    forward = hf_triton_attn.triton_attention_forward
    monkeypatch.setattr(hf_triton_attn, "triton_attention_forward",
                        lambda module, q, k, v, attention_mask, **kwargs: forward(module, q, k, v, None, **kwargs))
    broken = model_sweep.check_one("llama", "causal", 1e-4)
    assert broken["status"] == "DIFF" and broken["left"] > 1e-3, broken
    monkeypatch.undo()
    assert transformers.AttentionInterface._global_mapping["triton"] is hf_triton_attn.triton_attention_forward


@pytest.mark.parametrize("patch", sorted((SCRIPTS.parent / "benchmarks" / "pending").glob("*.patch")),
                         ids=lambda path: path.name)
def test_pending_patches_still_apply(patch):
    """Work written but not yet run on a GPU waits in benchmarks/pending as patches against main (benchmarks/NOTES.md
    says how to run each): they must keep applying as main changes."""
    root = SCRIPTS.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "apply", "--check", str(patch)], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
