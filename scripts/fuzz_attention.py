"""Random calls of ``hf_triton_attn.attention`` against the float64 oracle: outputs and gradients.

Each call draws its dtype (float16 or float32), shapes (GQA, one query or more, more queries than keys, head dims that
are not powers of two, a v head dim of its own), memory layouts (contiguous, (B, S, H, D) views, slices of wider
rows, every other head), causality, scale, softcap, mask (key padding of every kind, boolean or additive 4D masks
that broadcast, hide whole rows or are strided), seqused_k/seqused_q (int32 or int64), kept_key_ranges and attention
sinks, then checks the output, and half the time the gradients, as the tests do: the error against the float64
oracle within 2x (gradients 3x) the error of the same math in the call's dtype, plus a floor. A failing call prints
its seed; ``--seed N --cases 1`` replays it. Without a GPU the kernels run in the Triton interpreter (which computes
bfloat16 products wrongly, so bfloat16 is not drawn).

    PYTHONPATH=. python scripts/fuzz_attention.py [--cases 200] [--seed 0]

Calls like these found in session 37 (fixed since): int64 seqused_k with a key mask failing to compile, no keys in
16-bit failing at a tensor descriptor, head_dim 0 and a NaN scale not refused.
"""
import argparse
import os
import random
import sys
import time

if not __import__("torch").cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hf_triton_attn  # noqa: E402
from hf_triton_attn.reference import attention_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HEAD_DIMS = [8, 16, 24, 32, 40, 64, 80, 96, 128]
MLA_HEAD_DIMS = [(40, 24), (24, 40), (64, 32), (16, 8), (96, 80)]
FLOORS = {torch.float16: 1e-3, torch.float32: 1e-5}


def strided(shape, dtype, layout, gen):
    """A random (B, H, S, D) tensor in one of the layouts models and callers pass."""
    batch, heads, seq, dim = shape
    if layout == "bshd":
        return torch.randn(batch, seq, heads, dim, generator=gen).to(dtype).transpose(1, 2)
    if layout == "wider rows":
        return torch.randn(batch, seq, heads, dim + 8, generator=gen).to(dtype)[..., 3:dim + 3].transpose(1, 2)
    if layout == "every other head":
        return torch.randn(batch, 2 * heads, seq, dim, generator=gen).to(dtype)[:, ::2]
    return torch.randn(*shape, generator=gen).to(dtype)


def key_padding(rng, gen, batch, seqlen_k):
    kind = rng.choice(["left", "right", "holes", "a row of none", "all", "strided"])
    if kind == "strided":
        return torch.rand(batch, seqlen_k + 5, generator=gen)[:, 2:seqlen_k + 2] < 0.6
    mask = torch.ones(batch, seqlen_k, dtype=torch.bool)
    for row in range(batch):
        kept = rng.randint(0, seqlen_k)
        if kind == "left":
            mask[row, :seqlen_k - kept] = False
        elif kind in ("right", "a row of none"):
            mask[row, 0 if kind == "a row of none" and row == 0 else kept:] = False
        elif kind == "holes":
            mask[row] = torch.rand(seqlen_k, generator=gen) < 0.7
    return mask


def dense_mask(rng, gen, batch, heads, seqlen_q, seqlen_k, dtype):
    shape = [rng.choice([1, batch]), rng.choice([1, heads]), rng.choice([1, seqlen_q]), seqlen_k]
    visible = torch.rand(*shape, generator=gen) < rng.choice([0.5, 0.9, 1.0])
    if rng.random() < 0.3:
        visible[..., rng.randrange(shape[2]), :] = False  # a row that sees nothing
    if rng.random() < 0.5:
        mask = visible
    else:
        bias = torch.randn(*shape, generator=gen) if rng.random() < 0.5 else torch.zeros(*shape)
        mask = bias.masked_fill(~visible, float("-inf")).to(rng.choice([dtype, torch.float32, torch.float16]))
    if rng.random() < 0.3:
        mask = mask.transpose(-1, -2).contiguous().transpose(-1, -2)
    return mask.expand(batch, heads, seqlen_q, seqlen_k) if rng.random() < 0.2 else mask


def draw_call(seed: int) -> tuple[dict, dict, bool]:
    """(tensors q, k, v and grad_out, attention()'s keyword arguments, whether to check gradients)."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    dtype = rng.choice([torch.float16, torch.float32])
    batch, kv_heads, group = rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 3)
    heads = kv_heads * group
    seqlen_q, seqlen_k = rng.choice([1, 2, 3, 7, 16, 17, 33]), rng.choice([1, 2, 5, 16, 31, 64, 70])
    head_dim, value_dim = rng.choice(MLA_HEAD_DIMS) if rng.random() < 0.25 else (rng.choice(HEAD_DIMS),) * 2
    layouts = ["contiguous", "contiguous", "bshd", "bshd", "wider rows", "every other head"]
    tensors = dict(q=strided((batch, heads, seqlen_q, head_dim), dtype, rng.choice(layouts), gen),
                   k=strided((batch, kv_heads, seqlen_k, head_dim), dtype, rng.choice(layouts), gen),
                   v=strided((batch, kv_heads, seqlen_k, value_dim), dtype, rng.choice(layouts), gen),
                   grad_out=torch.randn(batch, heads, seqlen_q, value_dim, generator=gen).to(dtype))
    kwargs = dict(causal=rng.random() < 0.5, scale=rng.choice([None, None, 0.3, -0.5]),
                  softcap=rng.choice([None, None, None, 5.0]))
    mask_kind = rng.choice([None, "key", "key", "dense"])
    if mask_kind == "key":
        kwargs["attention_mask"] = key_padding(rng, gen, batch, seqlen_k)
    elif mask_kind == "dense":
        kwargs["attention_mask"] = dense_mask(rng, gen, batch, heads, seqlen_q, seqlen_k, dtype)
    for name, length in (("seqused_k", seqlen_k), ("seqused_q", seqlen_q)):
        if rng.random() < 0.4:
            kwargs[name] = torch.tensor([rng.randint(0, length) for _ in range(batch)],
                                        dtype=rng.choice([torch.int32, torch.int64]))
    with_kept_key_ranges = mask_kind == "key" and rng.random() < 0.4
    if rng.random() < 0.4:
        sinks = 2 * torch.randn(*rng.choice([(heads,), (1, heads, 1), (batch, 1, seqlen_q)]), generator=gen)
        if rng.random() < 0.3:
            sinks = sinks.masked_fill(torch.rand(sinks.shape, generator=gen) < 0.4, float("-inf"))
        kwargs["sinks"] = sinks.to(rng.choice([torch.float32, dtype]))
    sinks_need_grad = rng.random() < 0.5
    on_device = {name: t.to(DEVICE) for name, t in tensors.items()}
    kwargs = {name: value.to(DEVICE) if isinstance(value, torch.Tensor) else value for name, value in kwargs.items()}
    if with_kept_key_ranges:  # from the tensors on DEVICE: it refuses CPU tensors outside the interpreter
        kwargs["kept_key_ranges"] = hf_triton_attn.kept_key_ranges(kwargs["attention_mask"], kwargs.get("seqused_k"))
    if "sinks" in kwargs:
        kwargs["sinks"].requires_grad_(sinks_need_grad)
    return on_device, kwargs, rng.random() < 0.5


def problems(seed: int) -> list[str]:
    """What is wrong with the call drawn from ``seed``: an exception, a non-finite value, or an error beyond the
    tests' criterion; empty when it matches the oracle."""
    tensors, kwargs, with_grad = draw_call(seed)
    dtype = tensors["q"].dtype
    differentiable = ["q", "k", "v"] + (["sinks"] if kwargs.get("sinks") is not None
                                        and kwargs["sinks"].requires_grad else [])

    def run(fn, cast):
        inputs = {name: tensors[name].detach().to(cast).requires_grad_(with_grad) for name in ("q", "k", "v")}
        call = dict(kwargs)
        mask = call.get("attention_mask")
        if fn is attention_reference:
            call.pop("kept_key_ranges", None)
            if mask is not None and mask.is_floating_point():
                call["attention_mask"] = mask.to(cast)
        if "sinks" in call:
            sinks = call["sinks"]
            call["sinks"] = sinks.detach().to(torch.float64 if cast == torch.float64 else sinks.dtype)
            inputs["sinks"] = call["sinks"].requires_grad_(with_grad and sinks.requires_grad)
        out = fn(inputs["q"], inputs["k"], inputs["v"], **call)
        grads = ()
        if with_grad:
            grads = torch.autograd.grad((out * tensors["grad_out"].to(cast)).sum(),
                                        [inputs[name] for name in differentiable])
        return (out, *grads)

    try:
        ours = run(hf_triton_attn.attention, dtype)
    except Exception as error:  # noqa: BLE001  (any exception is a finding)
        return [f"{type(error).__name__}: {str(error)[:300]}"]
    exact, same_dtype = run(attention_reference, torch.float64), run(attention_reference, dtype)
    found = []
    for name, got, want, plain in zip(["out", *(f"d{n}" for n in differentiable)], ours, exact, same_dtype):
        if not torch.isfinite(got).all():
            found.append(f"{name}: non-finite values")
            continue
        err = (got.double() - want).abs().max().item() if got.numel() else 0.0
        base = (plain.double() - want).abs().max().item() if got.numel() else 0.0
        factor = 2.0 if name == "out" else 3.0
        if not err <= factor * base + FLOORS[dtype]:
            found.append(f"{name}: error {err:.2e} > {factor} x torch's {base:.2e} + {FLOORS[dtype]:.0e}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="the first case's seed; case i has seed + i")
    args = parser.parse_args()
    failed, start = [], time.time()
    for seed in range(args.seed, args.seed + args.cases):
        found = problems(seed)
        if found:
            failed.append(seed)
            print(f"seed {seed}: " + "; ".join(found), flush=True)
    print(f"{args.cases - len(failed)} of {args.cases} calls match the oracle ({time.time() - start:.0f} s)"
          + (f"; failing seeds: {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
