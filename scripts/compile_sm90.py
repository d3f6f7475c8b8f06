"""Compile one of our Triton kernels for Hopper (sm_90) on any machine, no GPU needed, as the JIT specialises it
at run time, and print what decides its speed: registers, spills, shared memory, programs per multiprocessor and
the operand kinds of its wgmma instructions. With --out DIR, also writes its TTGIR and PTX there.

    python scripts/compile_sm90.py dkdv --head-dim 64 --block-m 32 --block-n 128 --warps 4 --stages 3 --grouped
    python scripts/compile_sm90.py fwd --head-dim 192 --value-head-dim 128 --block-m 128 --block-n 64 --warps 8
    python scripts/compile_sm90.py gluon --head-dim 256 --seqlen 4096 [--block-n 32 --stages 3 --tma-store 1 --sinks]
    python scripts/compile_sm90.py gluon --head-dim 192 --value-head-dim 128 --seqlen 4096
    python scripts/compile_sm90.py gluon-dkdv --head-dim 64 --seqlen 4096 [--stages 3 --kv-slots 1 --grouped]
    python scripts/compile_sm90.py gluon-dq --head-dim 128 --seqlen 4096 [--block-n 128 --stages 2]
    python scripts/compile_sm90.py gluon-dq --head-dim 192 --value-head-dim 128 --seqlen 4096

``gluon`` is the warp-specialised Hopper forward (_kernels/fwd_gluon.py) in the configuration
``configs.hopper_forward_config`` gives for that head dim, query length and mask; --block-n, --stages, --q-slots,
--tma-store and --consumer-regs override its fields. Its ptxas report covers every partition (the loader warp and
both consumers); one program runs per multiprocessor. ``gluon-dkdv`` is the Hopper dK/dV kernel
(_kernels/bwd_dkdv_gluon.py) in the configuration ``configs.hopper_dkdv_config`` gives for that head dim, key
length, mask and GQA (--grouped: GROUPED_HEADS query heads per kv head, else one); --stages,
--kv-slots, --stats-in-score-layout and --consumer-regs override its fields. ``gluon-dq`` is the Hopper dQ kernel
(_kernels/bwd_dq_gluon.py) in the configuration ``configs.hopper_dq_config`` gives for that head dim (128, or 192
with --value-head-dim 128) at that query length (--head-dim 64 compiles it in head_dim 128's configuration, which the
op layer does not take); --block-n, --stages and --consumer-regs override its fields.

The JIT treats integer arguments equal to 1 as constants and marks pointers and multiples of 16 as 16-byte
divisible; a compile without those specialisations cannot prove the loads contiguous, does not pipeline them,
and reports other registers and shared memory (benchmarks/NOTES.md, session 24). Here every stride of the head
dimension is 1 and the other strides and lengths are multiples of 16, as for contiguous inputs or the (B, S, H, D)
views models pass; no mask, no dropout, no softcap, bf16.

--sass also disassembles the kernel and reports its asynchronous tensor-core product groups and the waits on them
(a full wait after every group means ptxas serialised the products), and, for each wait that leaves some in flight
(``WARPGROUP.DEPBAR.LE gsb0, N`` with N > 0), how many exponentials (``MUFU.EX2``) ptxas placed before the wait for
all of them that follows (``N = 0``) and how many after it: an exponential after that wait cannot overlap the
products still running, whatever order the source gives (benchmarks/NOTES.md, session 33).
"""
import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf_triton_attn import configs  # noqa: E402
from hf_triton_attn._kernels.bwd import _attn_bwd_dkdv, _attn_bwd_dq  # noqa: E402
from hf_triton_attn._kernels.fwd import _attn_fwd  # noqa: E402

KERNELS = {"fwd": _attn_fwd, "dq": _attn_bwd_dq, "dkdv": _attn_bwd_dkdv}
# Triton kernels' launch when not given: the dK/dV kernel's default at head_dim 64.
TRITON_DEFAULTS = dict(block_n=128, stages=3)
# Query heads per kv head of a --grouped Gluon dK/dV compile (Llama's 32/8), for its configuration.
GROUPED_HEADS = 4
# The most shared memory one program may have on Hopper (227 KiB).
SHARED_BYTES_PER_PROGRAM = 227 * 1024
BF16_POINTERS = {"Q", "K", "V", "Out", "DO", "DQ", "DK", "DV"}
FLOAT32_POINTERS = {"LSE", "Delta"}
FLOAT_SCALARS = {"sm_scale", "softcap", "dropout_p"}
OPTIONAL_TENSORS = {"DescQ", "DescK", "DescV", "KeyMask", "KeyRange", "SeqUsedK", "SeqUsedQ", "Mask", "MaskSpans",
                    "Seed", "Sinks"}
REGISTERS_PER_SM = 65536
SHARED_BYTES_PER_SM = 228 * 1024
THREADS_PER_SM = 2048


def constants(args) -> dict:
    """The constexpr flags of a plain bf16 call; any flag a kernel does not take is ignored."""
    value_dim = args.value_head_dim or args.head_dim
    block_d, block_d_tail = configs.head_dim_tiles(args.head_dim)
    block_dv, block_dv_tail = ((configs.padded_head_dim(value_dim), 0) if args.value_padded
                               else configs.value_dim_tiles(value_dim))
    return dict(HEAD_DIM=args.head_dim, VALUE_DIM=value_dim, BLOCK_D=block_d, BLOCK_D_TAIL=block_d_tail,
                BLOCK_DV=block_dv, BLOCK_DV_TAIL=block_dv_tail, BLOCK_M=args.block_m, BLOCK_N=args.block_n,
                IS_CAUSAL=not args.full, GROUPED=args.grouped, KEY_BLOCKS_OUTER=not args.full, HAS_KEY_MASK=False,
                HAS_SEQUSED=False, HAS_SEQUSED_Q=False, MASK_KIND=0, HAS_SOFTCAP=False, HAS_DROPOUT=False,
                DOT_PRECISION="tf32", USE_TMA=False, SCALE_IN_EXP=True, HAS_SINKS=False)


def signature(fn, flags: dict) -> tuple[dict, dict, dict]:
    """(signature, constexpr values, attributes) for ASTSource, with the JIT's specialisations."""
    names = [fn.arg_names[i] for i in fn.constexprs]
    missing = [name for name in names if name not in flags]
    if missing:
        raise SystemExit(f"no value for the constexpr argument(s) {missing} of {fn.__name__}: add them to constants()")
    consts = {name: flags[name] for name in names}
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in OPTIONAL_TENSORS:
            sig[name], consts[name] = "constexpr", None
        elif name.startswith("stride_") and name.endswith("d"):
            sig[name], consts[name] = "constexpr", 1
        elif name in FLOAT_SCALARS:
            sig[name] = "fp32"
        elif name in BF16_POINTERS or name in FLOAT32_POINTERS:
            sig[name] = "*fp32" if name in FLOAT32_POINTERS else "*bf16"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i32"
            if name.startswith("stride_") or name in ("Sq", "Skv"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def ptxas_report(ptx: str) -> tuple[int, int]:
    """(registers, spill-store bytes) from ptxas -v; prints its performance advisories (e.g. C7512: the wgmma
    products serialised, for want of registers), which a kernel's speed depends on as much as on its spills."""
    ptxas = get_ptxas(90).path  # the one Triton assembles sm_90 code with
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        report = subprocess.run([ptxas, "-arch=sm_90a", "-v", path, "-o", os.devnull], capture_output=True,
                                text=True, check=True).stderr
    for advisory in re.findall(r"Potential Performance Loss: .*", report):
        print(f"ptxas: {advisory}")
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", report).group(1))
    return registers, spills


def gluon_api():
    """(gl, GluonASTSource, a function giving a Gluon descriptor's mangled type over (1, 1, 1024, head_dim) bf16 with
    boxes of ``rows`` rows), or a SystemExit saying why this Triton cannot compile Gluon offline."""
    try:
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon._runtime import GluonASTSource
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    except ImportError as error:
        raise SystemExit(f"triton {triton.__version__} has no Gluon Hopper API: {error}")
    if not hasattr(TensorDescriptor, "__mangle__"):
        raise SystemExit(f"triton {triton.__version__}'s Gluon descriptors cannot name their type for an offline "
                         f"compile (no __mangle__, added after 3.6): use triton 3.7 or later")

    def descriptor(head_dim, rows):
        t = torch.empty(1, 1, 1024, head_dim, dtype=torch.bfloat16)
        layout = gl.NVMMASharedLayout.get_default_for([1, 1, rows, head_dim], gl.bfloat16)
        return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, head_dim], layout).__mangle__()
    return gl, GluonASTSource, descriptor


def compile_gluon_source(fn, sig: dict, consts: dict, max_registers: int):
    """Every argument not in ``sig`` or ``consts`` is an int32; constexprs by name."""
    _, source_type, _ = gluon_api()
    sig = {name: "constexpr" if name in consts else sig.get(name, "i32") for name in fn.arg_names}
    consts = {(fn.arg_names.index(name),): value for name, value in consts.items()}
    return triton.compile(source_type(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": 4, "maxnreg": max_registers})


def add_tail_descriptors(sig: dict, consts: dict, descriptor, tail_columns: int, **rows_per_name: int) -> None:
    """The second tile's descriptors (name -> rows of its block) in ``sig`` where ``tail_columns`` > 0, else None for
    each in ``consts``, as the op layer launches a head dim in one tile."""
    if tail_columns:
        sig.update({name: descriptor(tail_columns, rows) for name, rows in rows_per_name.items()})
    else:
        consts.update(dict.fromkeys(rows_per_name))


def compile_gluon(args):
    """(compiled kernel, its HopperForwardConfig) of the Gluon forward, bf16, no key mask, (B, H, S, D) inputs."""
    _, _, descriptor = gluon_api()
    from hf_triton_attn._kernels.fwd_gluon import _attn_fwd_ws
    value_dim = args.value_head_dim or args.head_dim
    cfg = configs.hopper_forward_config(args.head_dim, 2, (9, 0), args.seqlen, not args.full, value_dim)
    if cfg is None:
        raise SystemExit(f"the Gluon forward does not take head_dim {args.head_dim}/{value_dim} at {args.seqlen} "
                         f"queries")
    overrides = {"block_n": args.block_n, "stages": args.stages, "q_slots": args.q_slots,
                 "tma_store": None if args.tma_store is None else bool(args.tma_store),
                 "consumer_regs": args.consumer_regs}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    block_d, block_d_tail = configs.head_dim_tiles(args.head_dim)
    block_dv, block_dv_tail = configs.value_dim_tiles(value_dim)
    consts = dict(KeyMask=None, KeyRange=None, stride_kmb=0, GROUP=1, HEAD_DIM=block_d, HEAD_DIM_TAIL=block_d_tail,
                  VALUE_DIM=block_dv, VALUE_DIM_TAIL=block_dv_tail, BLOCK_MW=cfg.block_mw, BLOCK_N=cfg.block_n,
                  STAGES=cfg.stages, IS_CAUSAL=not args.full, HAS_KEY_MASK=False, TMA_STORE=cfg.tma_store,
                  Q_SLOTS=cfg.q_slots, HAS_SINKS=args.sinks, CONSUMER_REGS=cfg.consumer_regs, num_warps=4)
    sig = dict(desc_q=descriptor(block_d, cfg.block_mw), desc_k=descriptor(block_d, cfg.block_n),
               desc_v=descriptor(block_dv, cfg.block_n), desc_o=descriptor(block_dv, cfg.block_mw),
               Out="*bf16", LSE="*fp32", TileCounter="*i32", qk_scale="fp32")
    add_tail_descriptors(sig, consts, descriptor, block_d_tail, desc_q_tail=cfg.block_mw, desc_k_tail=cfg.block_n)
    add_tail_descriptors(sig, consts, descriptor, block_dv_tail, desc_v_tail=cfg.block_n, desc_o_tail=cfg.block_mw)
    if args.sinks:  # one sink per query head (GPT-OSS's): batch and row strides 0
        sig["Sinks"] = "*bf16"
        consts.update(stride_sb=0, stride_sm=0)
    else:
        consts.update(Sinks=None, stride_sb=0, stride_sh=0, stride_sm=0)
    if not cfg.tma_store:  # no output descriptors: the kernel stores by pointer
        consts["desc_o"] = None
        sig.pop("desc_o_tail", None)
        consts["desc_o_tail"] = None
    return compile_gluon_source(_attn_fwd_ws, sig, consts, cfg.max_registers), cfg


def compile_gluon_dkdv(args):
    """(compiled kernel, its HopperDKDVConfig) of the Gluon dK/dV kernel, bf16, no key mask, (B, H, S, D) inputs;
    --seqlen is the key length its configuration is for (--head-dim 192 --value-head-dim 128: multi-head latent
    attention's, q and k in tiles of 128 and 64 columns)."""
    _, _, descriptor = gluon_api()
    from hf_triton_attn._kernels.bwd_dkdv_gluon import _attn_bwd_dkdv_ws
    group = GROUPED_HEADS if args.grouped else 1
    value_dim = args.value_head_dim or args.head_dim
    cfg = configs.hopper_dkdv_config(args.head_dim, 2, (9, 0), args.seqlen, group, not args.full, value_dim)
    if cfg is None:
        raise SystemExit(f"the Gluon dK/dV kernel does not take head_dim {args.head_dim}/{value_dim} at "
                         f"{args.seqlen} keys, {group} query heads per kv head")
    stats_in_score_layout = None if args.stats_in_score_layout is None else bool(args.stats_in_score_layout)
    overrides = {"stages": args.stages, "kv_slots": args.kv_slots, "consumer_regs": args.consumer_regs,
                 "stats_in_score_layout": stats_in_score_layout}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    block_d, block_d_tail = configs.head_dim_tiles(args.head_dim)
    block_dv, block_dv_tail = configs.value_dim_tiles(value_dim)
    consts = dict(KeyMask=None, KeyRange=None, stride_kmb=0, HEAD_DIM=block_d, HEAD_DIM_TAIL=block_d_tail,
                  VALUE_DIM=block_dv, VALUE_DIM_TAIL=block_dv_tail, BLOCK_M=cfg.block_m, BLOCK_NW=cfg.block_nw, STAGES=cfg.stages,
                  KV_SLOTS=cfg.kv_slots, IS_CAUSAL=not args.full, HAS_KEY_MASK=False,
                  STATS_IN_SCORE_LAYOUT=cfg.stats_in_score_layout, CONSUMER_REGS=cfg.consumer_regs, num_warps=4)
    if not args.grouped:
        consts["GROUP"] = 1
    sig = dict(desc_q=descriptor(block_d, cfg.block_m), desc_k=descriptor(block_d, cfg.block_nw),
               desc_v=descriptor(block_dv, cfg.block_nw), desc_do=descriptor(block_dv, cfg.block_m), DK="*bf16",
               DV="*bf16", LSE="*fp32", Delta="*fp32", TileCounter="*i32", qk_scale="fp32", sm_scale="fp32")
    add_tail_descriptors(sig, consts, descriptor, block_d_tail, desc_q_tail=cfg.block_m, desc_k_tail=cfg.block_nw)
    add_tail_descriptors(sig, consts, descriptor, block_dv_tail, desc_v_tail=cfg.block_nw, desc_do_tail=cfg.block_m)
    return compile_gluon_source(_attn_bwd_dkdv_ws, sig, consts, cfg.max_registers), cfg


def compile_gluon_dq(args):
    """(compiled kernel, its HopperDQConfig) of the Gluon dQ kernel, bf16, no key mask, (B, H, S, D) inputs;
    --seqlen is the query length its configuration is for (--head-dim 64 compiles it in head_dim 128's
    configuration, which the op layer does not take; --head-dim 192 --value-head-dim 128 in multi-head latent
    attention's, q and k in tiles of 128 and 64 columns)."""
    _, _, descriptor = gluon_api()
    from hf_triton_attn._kernels.bwd_dq_gluon import _attn_bwd_dq_ws
    value_dim = args.value_head_dim or args.head_dim
    cfg = (configs.hopper_dq_config(128, 2, (9, 0), args.seqlen) if args.head_dim == 64
           else configs.hopper_dq_config(args.head_dim, 2, (9, 0), args.seqlen, value_dim))
    if cfg is None:
        raise SystemExit(f"the Gluon dQ kernel is not taken at head_dim {args.head_dim}/{value_dim}, {args.seqlen} "
                         f"queries")
    overrides = {"block_n": args.block_n, "stages": args.stages, "consumer_regs": args.consumer_regs}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    block_d, block_d_tail = configs.head_dim_tiles(args.head_dim)
    block_dv, block_dv_tail = configs.value_dim_tiles(value_dim)
    consts = dict(KeyMask=None, KeyRange=None, stride_kmb=0, GROUP=1, HEAD_DIM=block_d, HEAD_DIM_TAIL=block_d_tail,
                  VALUE_DIM=block_dv, VALUE_DIM_TAIL=block_dv_tail, BLOCK_MW=cfg.block_mw, BLOCK_N=cfg.block_n, STAGES=cfg.stages,
                  IS_CAUSAL=not args.full, HAS_KEY_MASK=False, CONSUMER_REGS=cfg.consumer_regs, num_warps=4)
    value_rows = descriptor(block_dv, cfg.block_mw)
    sig = dict(desc_q=descriptor(block_d, cfg.block_mw), desc_k=descriptor(block_d, cfg.block_n),
               desc_v=descriptor(block_dv, cfg.block_n), desc_o=value_rows, desc_do=value_rows,
               DQ="*bf16", LSE="*fp32", Delta="*fp32", TileCounter="*i32", qk_scale="fp32", sm_scale="fp32")
    add_tail_descriptors(sig, consts, descriptor, block_d_tail, desc_q_tail=cfg.block_mw, desc_k_tail=cfg.block_n)
    add_tail_descriptors(sig, consts, descriptor, block_dv_tail, desc_v_tail=cfg.block_n, desc_o_tail=cfg.block_mw,
                         desc_do_tail=cfg.block_mw)
    return compile_gluon_source(_attn_bwd_dq_ws, sig, consts, cfg.max_registers), cfg


GLUON_KERNELS = {"gluon": compile_gluon, "gluon-dkdv": compile_gluon_dkdv, "gluon-dq": compile_gluon_dq}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kernel", choices=sorted(KERNELS) + sorted(GLUON_KERNELS))
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--value-padded", action="store_true",
                        help="fwd, dq, dkdv: v in one tile padded to a power of two where configs.value_dim_tiles "
                             "takes two (as before session 39)")
    parser.add_argument("--value-head-dim", type=int, default=None,
                        help="fwd, dq, dkdv: v's head dim where it differs from q's and k's (multi-head latent "
                             "attention)")
    parser.add_argument("--block-m", type=int, default=32)
    parser.add_argument("--block-n", type=int, default=None, help=f"default {TRITON_DEFAULTS['block_n']}, or the "
                                                                  "Gluon configuration's")
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--stages", type=int, default=None, help=f"default {TRITON_DEFAULTS['stages']}, or the "
                                                                 "Gluon configuration's")
    parser.add_argument("--max-registers", type=int, default=None, help="as LaunchConfig.max_registers (maxnreg)")
    parser.add_argument("--grouped", action="store_true", help="dK/dV: several query heads per kv head")
    parser.add_argument("--full", action="store_true", help="no causal mask")
    parser.add_argument("--seqlen", type=int, default=16384,
                        help="gluon, gluon-dq: the query length its configuration is for; gluon-dkdv: the key "
                             "length")
    parser.add_argument("--q-slots", type=int, default=None, help="gluon: query slots per consumer")
    parser.add_argument("--kv-slots", type=int, default=None, help="gluon-dkdv: K/V slots per consumer")
    parser.add_argument("--stats-in-score-layout", type=int, choices=(0, 1), default=None,
                        help="gluon-dkdv: LSE and Delta loaded in the scores' layout")
    parser.add_argument("--tma-store", type=int, choices=(0, 1), default=None, help="gluon: output through TMA")
    parser.add_argument("--sinks", action="store_true", help="gluon: one attention sink per query head")
    parser.add_argument("--consumer-regs", type=int, default=None,
                        help="gluon, gluon-dkdv, gluon-dq: registers per consumer thread")
    parser.add_argument("--sass", action="store_true",
                        help="disassemble, and report where ptxas put the exponentials around the product waits")
    parser.add_argument("--out", metavar="DIR", help="write the TTGIR and PTX (with --sass, the SASS) here")
    args = parser.parse_args()
    if args.kernel in GLUON_KERNELS:
        compiled, cfg = GLUON_KERNELS[args.kernel](args)
        registers, spills = ptxas_report(compiled.asm["ptx"])
        shared = compiled.metadata.shared
        mask = "full" if args.full else "causal"
        print(f"{args.kernel} head_dim {args.head_dim} {mask} {cfg} (triton {triton.__version__}): {registers} "
              f"registers, {spills} bytes of spill stores, {shared} bytes of shared memory (a program may have "
              f"{SHARED_BYTES_PER_PROGRAM})")
        write_out(args, compiled, f"{args.kernel}_{args.head_dim}_s{cfg.stages}")
        return
    for name, value in TRITON_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    fn = KERNELS[args.kernel]
    sig, consts, attrs = signature(fn, constants(args))
    compiled = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": args.warps, "num_stages": args.stages,
                                       "maxnreg": args.max_registers})
    ptx = compiled.asm["ptx"]
    registers, spills = ptxas_report(ptx)
    shared = compiled.metadata.shared
    threads = 32 * args.warps
    # Registers are allocated in steps of 8 per thread; each program reserves 1 KB of shared memory beyond its own.
    per_sm = min(REGISTERS_PER_SM // (-(-registers // 8) * 8 * threads), SHARED_BYTES_PER_SM // (shared + 1024),
                 THREADS_PER_SM // threads)
    wgmma = re.findall(r"wgmma\.mma_async\.\S+\s+\{[^}]*\},\s*(\{|%rd)", ptx)
    value = f"/{args.value_head_dim}" if args.value_head_dim else ""
    print(f"{args.kernel} head_dim {args.head_dim}{value} {args.block_m}x{args.block_n} warps {args.warps} stages "
          f"{args.stages} (triton {triton.__version__}): {registers} registers, {spills} bytes of spill stores, "
          f"{shared} bytes of shared memory, {per_sm} programs per multiprocessor; wgmma A operands: "
          f"{wgmma.count('{')} in registers, {wgmma.count('%rd')} in shared memory")
    write_out(args, compiled, f"{args.kernel}_{args.head_dim}_{args.block_m}x{args.block_n}_w{args.warps}"
                              f"_s{args.stages}")


def sass_of(compiled) -> str:
    """The kernel's SASS, disassembled by the nvdisasm that ships with Triton's ptxas."""
    nvdisasm = os.path.join(os.path.dirname(get_ptxas(90).path), "nvdisasm")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        return subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True, check=True).stdout


def exponentials_around_waits(sass: str) -> list[tuple[int, int, int]]:
    """Per partial wait (``WARPGROUP.DEPBAR.LE gsb0, N``, N > 0) followed by a full one before the next product is
    issued: (N, exponentials between the two waits, exponentials after the full wait up to the next product or
    wait)."""
    lines = sass.splitlines()
    found = []
    i = 0
    while i < len(lines):
        partial = re.search(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x([1-9])", lines[i])
        i += 1
        if not partial:
            continue
        before = after = 0
        while i < len(lines) and "HGMMA" not in lines[i] and "DEPBAR.LE gsb0, 0x0" not in lines[i]:
            before += "MUFU.EX2" in lines[i]
            i += 1
        if i == len(lines) or "HGMMA" in lines[i]:
            continue
        i += 1
        while i < len(lines) and "HGMMA" not in lines[i] and "DEPBAR" not in lines[i]:
            after += "MUFU.EX2" in lines[i]
            i += 1
        found.append((int(partial.group(1)), before, after))
    return found


def write_out(args, compiled, stem: str) -> None:
    """With --sass, the exponentials' report; with --out, the TTGIR and PTX (and with --sass the SASS) there."""
    outputs = {ext: compiled.asm[ext] for ext in ("ttgir", "ptx")}
    if args.sass:
        sass = outputs["sass"] = sass_of(compiled)
        waits = exponentials_around_waits(sass)
        print(f"{len(re.findall(r'HGMMA.*gsb0', sass))} product groups, "
              f"{len(re.findall(r'WARPGROUP.DEPBAR.LE gsb0, 0x0', sass))} full and "
              f"{len(re.findall(r'WARPGROUP.DEPBAR.LE gsb0, 0x[1-9]', sass))} partial waits in the code; "
              "exponentials before / after the full wait that follows a partial one: "
              + (", ".join(f"{before}/{after} (after 'LE {n}')" for n, before, after in waits) or "no such waits"))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        for ext, text in outputs.items():
            with open(os.path.join(args.out, f"{stem}.{ext}"), "w") as f:
                f.write(text)


if __name__ == "__main__":
    main()
