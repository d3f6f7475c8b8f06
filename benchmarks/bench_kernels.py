"""Attention kernels head to head: ours against SDPA's flash, cuDNN and memory-efficient backends and compiled
FlexAttention, all in one process on the same inputs, for the cases of /work/shared/PEERS.md.

    PYTHONPATH=. python benchmarks/bench_kernels.py --out results/

Every provider's output (and, for forward+backward, its gradients) is checked against ours once per case
before timing, except with dropout, where each provider draws its own mask. Times are the median of
``triton.testing.do_bench`` (which clears the L2 cache before each call). Throughput counts:

- dense: 4*B*H*Sq*Skv*D FLOP (2*B*H*Sq*Skv*(D+Dv) in the rows of multi-head latent attention, whose v head dim
  Dv differs), halved when causal, times 3.5 for forward+backward;
- padded: useful FLOP only, the sum over sequences of 4*H*len^2*D, halved when causal. Right padding, as a
  training batch has: every provider computes the padding query rows as eager attention does, except in the
  "padding rows skipped" cases, where ours takes ``seqused_q`` and FlexAttention a block mask that hides the
  padding rows too (SDPA has no way to skip them and keeps Transformers' mask); only the valid rows are
  compared there;
- decode (Sq=1): bytes of K and V read once, B*Hkv*L*(D+Dv)*itemsize (v's head dim Dv is D except in the rows
  of multi-head latent attention, "D192/128"). "decode" times each eager call, host (Python, dispatch, kernel
  launches) included; "decode graph" replays the call from a CUDA graph
  (``triton.testing.do_bench_cudagraph``), as generation with a static cache under torch.compile does, so
  only the GPU's time counts. "decode window" is a sliding-window layer's decoding step, replayed the same way:
  a dense (B, 1, 1, L) mask that shows the last ``window`` keys, and bytes of the K and V rows inside the window.

Masks are built outside the timed region for every provider, as a model would build them once per forward
and share them between layers.
"""
import argparse
import contextlib
import dataclasses
import os
import sys
import time
import warnings
import zlib
from typing import Callable, ContextManager, Optional

import torch
import torch.nn.functional as F
import triton
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

from common import (add_common_arguments, environment_info, format_table, free_cuda_memory, print_environment,
                    random_lengths, require_cuda, selected, short_error, write_json)

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # old torch: the flex provider reports n/a
    create_block_mask = flex_attention = None

WARMUP_MS = 25
REP_MS = 100
OUTPUT_TOLERANCE = 2e-2    # max |difference| of bf16/fp16 outputs (randn inputs, outputs of order 1)
GRADIENT_TOLERANCE = 2e-2  # relative norm error ||a - b|| / ||b|| of each gradient
LENGTHS_SEED = 0
DEVICE = "cuda"  # one constant, so that the logic can be exercised on a CPU by patching it

GROUP_UNITS = {"dense fwd": "TFLOP/s", "dense fwdbwd": "TFLOP/s", "padded fwd": "useful TFLOP/s",
               "window fwd": "useful TFLOP/s", "window fwdbwd": "useful TFLOP/s", "decode": "GB/s",
               "decode graph": "GB/s", "decode window": "GB/s"}


@dataclasses.dataclass(frozen=True)
class KernelCase:
    group: str  # a key of GROUP_UNITS
    batch: int
    heads: int
    kv_heads: int
    seqlen: int  # keys; queries too, except for decode (one query)
    head_dim: int
    causal: bool
    dtype: torch.dtype = torch.bfloat16
    dropout_p: float = 0.0  # forward+backward only; outputs then differ by provider and are not compared
    window: int = 0  # window groups: causal sliding window, as a dense mask (what Transformers builds)
    skip_padding_rows: bool = False  # padded group: providers that can leave out the padding query rows do
    value_head_dim: int = 0  # v's head dim where it differs from q's and k's (multi-head latent attention)

    @property
    def v_head_dim(self) -> int:
        return self.value_head_dim or self.head_dim

    @property
    def graph(self) -> bool:
        """Timed by CUDA-graph replay (GPU time only)."""
        return self.group in ("decode graph", "decode window")

    @property
    def seqlen_q(self) -> int:
        return 1 if self.decode else self.seqlen

    @property
    def decode(self) -> bool:
        return self.group.startswith("decode")

    @property
    def backward(self) -> bool:
        return self.group.endswith("fwdbwd")

    @property
    def padded(self) -> bool:
        return self.group == "padded fwd"

    @property
    def gqa(self) -> bool:
        return self.heads != self.kv_heads

    @property
    def name(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        if self.decode:
            window = f" window {self.window}" if self.window else ""
            value = f"/{self.value_head_dim}" if self.value_head_dim else ""
            return (f"{self.group} B{self.batch} H{self.heads}/{self.kv_heads} L{self.seqlen} D{self.head_dim}"
                    f"{value}{window} {dtype}")
        heads = f"H{self.heads}" if self.padded else f"H{self.heads}/{self.kv_heads}"
        mask = "causal" if self.causal else "full"
        if self.window:
            mask = f"window {self.window}"
        dropout = f" dropout {self.dropout_p}" if self.dropout_p else ""
        skipped = ", padding rows skipped" if self.skip_padding_rows else ""
        value = f"/{self.value_head_dim}" if self.value_head_dim else ""
        return (f"{self.group} B{self.batch} {heads} S{self.seqlen} D{self.head_dim}{value} {mask}{dropout} {dtype}"
                f"{skipped}")

    @property
    def seed(self) -> int:
        # From the name, so a case draws the same inputs whichever other cases --cases/--quick select.
        return zlib.crc32(self.name.encode())


def all_cases() -> list[KernelCase]:
    """The rows of PEERS.md, in its order."""
    cases = []
    for batch, seqlen in ((16, 1024), (4, 4096), (1, 16384)):
        for heads, head_dim in ((32, 64), (16, 128)):
            for causal in (False, True):
                cases.append(KernelCase("dense fwd", batch, heads, heads, seqlen, head_dim, causal))
    cases += [
        KernelCase("dense fwd", 4, 32, 8, 4096, 128, True),
        KernelCase("dense fwd", 4, 32, 8, 4096, 64, True),  # the Llama-0.7B train step's attention
        KernelCase("dense fwd", 4, 32, 32, 4096, 128, True, torch.float16),
        KernelCase("dense fwd", 2, 8, 8, 4096, 256, True),
        KernelCase("dense fwdbwd", 16, 16, 16, 1024, 128, True),
        KernelCase("dense fwdbwd", 4, 16, 16, 4096, 128, True),
        KernelCase("dense fwdbwd", 1, 16, 16, 16384, 128, True),
        KernelCase("dense fwdbwd", 4, 32, 8, 4096, 128, True),
        KernelCase("dense fwdbwd", 2, 8, 8, 4096, 256, True),
        KernelCase("dense fwdbwd", 4, 32, 8, 4096, 64, True),  # the Llama-0.7B train step's attention
        # BERT-base training, without and with its attention dropout (FlexAttention has no dropout: n/a).
        KernelCase("dense fwdbwd", 32, 12, 12, 512, 64, False),
        KernelCase("dense fwdbwd", 32, 12, 12, 512, 64, False, dropout_p=0.1),
        # Multi-head latent attention's prefill and training as Transformers' DeepSeek-V3 layers hand them over.
        KernelCase("dense fwd", 4, 16, 16, 4096, 192, True, value_head_dim=128),
        KernelCase("dense fwdbwd", 4, 16, 16, 4096, 192, True, value_head_dim=128),
        KernelCase("padded fwd", 16, 16, 16, 2048, 128, True),
        KernelCase("padded fwd", 16, 12, 12, 512, 64, False),
        KernelCase("padded fwd", 16, 16, 16, 2048, 128, True, skip_padding_rows=True),
        KernelCase("padded fwd", 16, 12, 12, 512, 64, False, skip_padding_rows=True),
        # A Mistral-style sliding-window layer: Transformers hands every backend a dense (B, 1, S, S) mask.
        KernelCase("window fwd", 1, 32, 8, 8192, 128, True, window=4096),
        KernelCase("window fwdbwd", 1, 32, 8, 8192, 128, True, window=4096),
    ]
    for batch, cache_len in ((8, 1024), (8, 8192), (8, 32768), (1, 131072)):
        cases.append(KernelCase("decode", batch, 32, 8, cache_len, 128, False))
    for cache_len in (1024, 4096, 32768):
        cases.append(KernelCase("decode graph", 8, 32, 8, cache_len, 128, False))
    # Multi-head latent attention as Transformers' DeepSeek-V2/V3 layers hand it over (keys and values per head,
    # q/k head dim 192, v 128), DeepSeek-V2-Lite's 16 heads.
    for group in ("decode", "decode graph"):
        cases.append(KernelCase(group, 8, 16, 16, 4096, 192, False, value_head_dim=128))
    for cache_len in (4096, 32768):
        cases.append(KernelCase("decode window", 8, 32, 8, cache_len, 128, True, window=4096))
    return cases


QUICK_CASE_NAMES = (
    "dense fwd B4 H32/8 S4096 D128 causal bfloat16",
    "dense fwdbwd B4 H16/16 S4096 D128 causal bfloat16",
    "padded fwd B16 H12 S512 D64 full bfloat16",
    "decode B8 H32/8 L8192 D128 bfloat16",
)


def case_lengths(case: KernelCase) -> Optional[list[int]]:
    return random_lengths(case.batch, case.seqlen, LENGTHS_SEED) if case.padded else None


def case_work(case: KernelCase, lengths: Optional[list[int]]) -> float:
    """FLOP (dense, padded, window: useful pairs only) or bytes (decode: inside the window) that the throughput
    figure counts."""
    if case.decode:
        keys = min(case.seqlen, case.window) if case.window else case.seqlen
        return case.batch * case.kv_heads * keys * (case.head_dim + case.v_head_dim) * case.dtype.itemsize
    causal_factor = 0.5 if case.causal else 1.0
    if case.padded:
        return causal_factor * sum(4.0 * case.heads * length * length * case.head_dim for length in lengths)
    backward_factor = 3.5 if case.backward else 1.0
    # Per (query, key) pair: 2*D FLOP for the score, 2*Dv for the value product (4*D where they are equal).
    pair_flop = 2.0 * (case.head_dim + case.v_head_dim)
    if case.window:
        pairs = sum(min(query + 1, case.window) for query in range(case.seqlen))
        return pair_flop * case.batch * case.heads * pairs * backward_factor
    return pair_flop * case.batch * case.heads * case.seqlen_q * case.seqlen * causal_factor * backward_factor


def throughput(case: KernelCase, work: float, ms: float) -> float:
    """TFLOP/s, or GB/s for decode."""
    per_second = work / (ms * 1e-3)
    return per_second / (1e9 if case.decode else 1e12)


@dataclasses.dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    grad_out: Optional[torch.Tensor]        # forward+backward only
    lengths: Optional[list[int]]            # padded only
    key_padding_mask: Optional[torch.Tensor]  # (B, S) bool, True = attend: what ours takes
    seqused_q: Optional[torch.Tensor]       # (B,) int32, the lengths, where the case skips padding query rows
    sdpa_mask: Optional[torch.Tensor]       # (B, 1, Sq, S) bool: what Transformers builds for SDPA (and for ours
                                            # in window cases)


def make_inputs(case: KernelCase, lengths: Optional[list[int]]) -> Inputs:
    generator = torch.Generator(device=DEVICE).manual_seed(case.seed)

    def randn(*shape):
        return torch.randn(*shape, device=DEVICE, dtype=case.dtype, generator=generator)

    q = randn(case.batch, case.heads, case.seqlen_q, case.head_dim)
    k = randn(case.batch, case.kv_heads, case.seqlen, case.head_dim)
    v = randn(case.batch, case.kv_heads, case.seqlen, case.v_head_dim)
    grad_out = None
    if case.backward:
        for t in (q, k, v):
            t.requires_grad_(True)
        grad_out = randn(case.batch, case.heads, case.seqlen_q, case.v_head_dim)
    key_padding_mask = sdpa_mask = seqused_q = None
    if case.skip_padding_rows:
        seqused_q = torch.tensor(lengths, device=DEVICE, dtype=torch.int32)
    if lengths is not None:
        positions = torch.arange(case.seqlen, device=DEVICE)
        key_padding_mask = positions[None, :] < torch.tensor(lengths, device=DEVICE)[:, None]
        sdpa_mask = key_padding_mask[:, None, None, :].expand(case.batch, 1, case.seqlen, case.seqlen)
        if case.causal:
            sdpa_mask = sdpa_mask & (positions[None, :] <= positions[:, None])
        sdpa_mask = sdpa_mask.contiguous()
    if case.window:
        # The last query sits at the last key (a decoding step's one query too).
        query_positions = torch.arange(case.seqlen_q, device=DEVICE) + (case.seqlen - case.seqlen_q)
        offset = query_positions[:, None] - torch.arange(case.seqlen, device=DEVICE)[None, :]
        sdpa_mask = ((offset >= 0) & (offset < case.window)).expand(case.batch, 1, case.seqlen_q, case.seqlen)
    return Inputs(q, k, v, grad_out, lengths, key_padding_mask, seqused_q, sdpa_mask)


# A provider maker returns (a function making the context to enter around the calls, forward function returning
# (B, H, Sq, D)).
ProviderMaker = Callable[[KernelCase, Inputs], tuple[Callable[[], ContextManager], Callable[[], torch.Tensor]]]


def make_ours(case: KernelCase, inputs: Inputs):
    # Imported here, not at the top, so that --help works and a broken package fails as a provider (n/a).
    import hf_triton_attn

    ranges = None
    if case.window:
        # As the integration layer passes a dense mask: causality is in the mask.
        causal, mask = False, inputs.sdpa_mask
    else:
        causal, mask = case.causal, inputs.key_padding_mask
        if mask is not None:
            # Summarised once, outside the timed calls, as the integration layer does once per model forward for
            # all its layers (and as FlexAttention's block mask is built).
            ranges = hf_triton_attn.kept_key_ranges(mask)

    def forward():
        return hf_triton_attn.attention(inputs.q, inputs.k, inputs.v, causal=causal, attention_mask=mask,
                                        seqused_q=inputs.seqused_q, dropout_p=case.dropout_p,
                                        kept_key_ranges=ranges)
    return contextlib.nullcontext, forward


def sdpa_maker(backend: SDPBackend) -> ProviderMaker:
    def make(case: KernelCase, inputs: Inputs):
        kwargs = {"attn_mask": inputs.sdpa_mask, "is_causal": case.causal and inputs.sdpa_mask is None,
                  "dropout_p": case.dropout_p}
        if case.gqa:
            kwargs["enable_gqa"] = True  # backends that cannot share kv heads refuse: reported n/a

        def forward():
            return F.scaled_dot_product_attention(inputs.q, inputs.k, inputs.v, **kwargs)
        # Entered around verification and each round's timing, not per call: decode calls last microseconds.
        return lambda: sdpa_kernel([backend]), forward
    return make


def flex_block_mask(case: KernelCase, inputs: Inputs):
    """The block mask a model would build: from the lengths when padded, the window, causal, or none (full)."""
    if case.window:
        query_offset = case.seqlen - case.seqlen_q

        def window_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx + query_offset) & (q_idx + query_offset - kv_idx < case.window)
        return create_block_mask(window_mod, B=None, H=None, Q_LEN=case.seqlen_q, KV_LEN=case.seqlen,
                                 device=DEVICE)
    if inputs.lengths is not None:
        lengths = torch.tensor(inputs.lengths, device=DEVICE)
        if case.causal:
            def key_mod(b, h, q_idx, kv_idx):
                return (kv_idx < lengths[b]) & (kv_idx <= q_idx)
        else:
            def key_mod(b, h, q_idx, kv_idx):
                return kv_idx < lengths[b]
        if case.skip_padding_rows:
            def mask_mod(b, h, q_idx, kv_idx):
                return key_mod(b, h, q_idx, kv_idx) & (q_idx < lengths[b])
        else:
            mask_mod = key_mod
        return create_block_mask(mask_mod, B=case.batch, H=None, Q_LEN=case.seqlen_q, KV_LEN=case.seqlen,
                                 device=DEVICE)
    if case.causal:
        # Sq == Skv for every causal case here, so top-left and bottom-right alignment agree.
        def causal_mod(b, h, q_idx, kv_idx):
            return kv_idx <= q_idx
        return create_block_mask(causal_mod, B=None, H=None, Q_LEN=case.seqlen_q, KV_LEN=case.seqlen,
                                 device=DEVICE)
    return None


def make_flex(case: KernelCase, inputs: Inputs):
    if flex_attention is None:
        raise NotImplementedError("torch.nn.attention.flex_attention is not available in this torch")
    if case.dropout_p:
        raise NotImplementedError("flex_attention has no attention dropout")
    # Each case compiles for its own static shapes; clearing Dynamo's cache first keeps the ~25 cases from
    # hitting the recompile limit (8 per function), past which Dynamo would silently run flex uncompiled.
    torch._dynamo.reset()
    compiled_flex = torch.compile(flex_attention, dynamic=False)
    block_mask = flex_block_mask(case, inputs)

    def forward():
        return compiled_flex(inputs.q, inputs.k, inputs.v, block_mask=block_mask, enable_gqa=case.gqa)
    return contextlib.nullcontext, forward


PROVIDERS: dict[str, ProviderMaker] = {
    "ours": make_ours,
    "sdpa flash": sdpa_maker(SDPBackend.FLASH_ATTENTION),
    "sdpa cudnn": sdpa_maker(SDPBackend.CUDNN_ATTENTION),
    "sdpa efficient": sdpa_maker(SDPBackend.EFFICIENT_ATTENTION),
    "flex": make_flex,
}
PEER_NAMES = [name for name in PROVIDERS if name != "ours"]


@dataclasses.dataclass
class ProviderResult:
    status: str  # "ok", "n/a" (refused or failed: see reason), "oom"
    ms: Optional[float] = None
    value: Optional[float] = None  # in the case group's unit
    max_abs_diff: Optional[float] = None  # output against ours
    grad_rel_err: Optional[float] = None  # worst of dq, dk, dv against ours (forward+backward)
    mismatch: bool = False
    reason: str = ""
    rounds: list[float] = dataclasses.field(default_factory=list)  # ms of every round; ms is the best

    def add_round(self, ms: float, work: float, case: KernelCase) -> None:
        self.rounds.append(ms)
        if self.ms is None or ms < self.ms:
            self.ms, self.value = ms, throughput(case, work, ms)


@dataclasses.dataclass
class Reference:
    """Our output (and gradients), which every peer is compared against."""
    out: torch.Tensor
    grads: Optional[tuple[torch.Tensor, ...]]


def run_once(case: KernelCase, inputs: Inputs, forward) -> Reference:
    """One call, outside timing: compiles/JITs the provider and gives the values to verify (the valid rows only,
    where the case skips padding rows)."""
    if not case.backward:
        out = forward().detach()
        if inputs.seqused_q is not None:
            valid_rows = torch.arange(case.seqlen_q, device=DEVICE)[None, :] < inputs.seqused_q[:, None]
            out = torch.where(valid_rows[:, None, :, None], out, 0.0)
        return Reference(out, None)
    for t in (inputs.q, inputs.k, inputs.v):
        t.grad = None
    out = forward()
    out.backward(inputs.grad_out)
    grads = (inputs.q.grad, inputs.k.grad, inputs.v.grad)
    for t in (inputs.q, inputs.k, inputs.v):
        t.grad = None
    return Reference(out.detach(), grads)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def verify(result: ProviderResult, got: Reference, reference: Reference) -> None:
    result.max_abs_diff = max_abs_diff(got.out, reference.out)
    # "not <=" so that NaN counts as a mismatch.
    result.mismatch = not result.max_abs_diff <= OUTPUT_TOLERANCE
    if reference.grads is not None:
        result.grad_rel_err = max(relative_error(g, r) for g, r in zip(got.grads, reference.grads))
        result.mismatch |= not result.grad_rel_err <= GRADIENT_TOLERANCE


def refusal_reason(exc: Exception, caught: list[warnings.WarningMessage]) -> str:
    """The exception, plus SDPA's explanation: it warns why each backend refused, then raises only
    "No available kernel", and the warnings' headers ("... kernel not used because:") say nothing alone."""
    explanations = []
    for w in caught:
        text = (str(w.message).strip().splitlines() or [""])[0]
        if text and not text.endswith("because:") and text not in explanations:
            explanations.append(text)
    reason = short_error(exc)
    return reason + (" -- " + "; ".join(explanations[:2]) if explanations else "")


Timer = Callable[[], float]


def bench_provider(case: KernelCase, inputs: Inputs, make: ProviderMaker, work: float,
                   reference: Optional[Reference]) -> tuple[ProviderResult, Optional[Reference], Optional[Timer]]:
    """Verify then time one provider. Returns its result, its output (ours becomes the reference) and a function
    that times it again (None where it failed), for further rounds."""
    # Backends explain a refusal in warnings before raising "No available kernel": keep them as the reason.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            context, forward = make(case, inputs)
            with context():
                got = run_once(case, inputs, forward)
            timer = provider_timer(case, inputs, context, forward)
            result = ProviderResult("ok")
            result.add_round(timer(), work, case)
            if reference is not None and not case.dropout_p:
                verify(result, got, reference)
        except torch.cuda.OutOfMemoryError:
            result, got, timer = ProviderResult("oom", reason="CUDA out of memory"), None, None
        except Exception as exc:  # a backend refusing the case, or failing to compile
            result, got, timer = ProviderResult("n/a", reason=refusal_reason(exc, caught)), None, None
    free_cuda_memory()
    return result, got, timer


def provider_timer(case: KernelCase, inputs: Inputs, context: Callable[[], ContextManager], forward) -> Timer:
    """The median ms of one provider's calls (forward, or forward and backward), in its context."""
    if case.backward:
        def step():
            forward().backward(inputs.grad_out)
        grad_to_none = [inputs.q, inputs.k, inputs.v]
    else:
        step, grad_to_none = forward, None

    def timer() -> float:
        with context():
            if case.graph:
                return triton.testing.do_bench_cudagraph(step, rep=REP_MS, return_mode="median")
            return triton.testing.do_bench(step, warmup=WARMUP_MS, rep=REP_MS, grad_to_none=grad_to_none,
                                           return_mode="median")
    return timer


def describe(result: ProviderResult, unit: str) -> str:
    if result.status != "ok":
        return f"{result.status:>8}  {result.reason}"
    text = f"{result.ms:9.4f} ms {result.value:8.1f} {unit}"
    if result.max_abs_diff is not None:
        text += f"  max|dout| {result.max_abs_diff:.2e}"
    if result.grad_rel_err is not None:
        text += f"  grad rel err {result.grad_rel_err:.2e}"
    if result.mismatch:
        text += "  MISMATCH vs ours"
    return text


def ratio_to_best_peer(results: dict[str, ProviderResult]) -> tuple[Optional[float], Optional[str]]:
    """Our throughput over the best peer's that ran (None when either side has no number)."""
    peers = [(results[name].value, name) for name in PEER_NAMES if name in results and results[name].value]
    ours = results.get("ours")
    if not peers or ours is None or not ours.value:
        return None, None
    best_value, best_name = max(peers)
    return ours.value / best_value, best_name


def run_case(case: KernelCase, rounds: int = 1) -> dict:
    """Every provider verified and timed once, then timed again in turn for each further round, each keeping its
    best (the lowest median time)."""
    lengths = case_lengths(case)
    work = case_work(case, lengths)
    unit = GROUP_UNITS[case.group]
    inputs = make_inputs(case, lengths)
    results: dict[str, ProviderResult] = {}
    timers: dict[str, Timer] = {}
    reference = None
    for name, make in PROVIDERS.items():
        result, got, timer = bench_provider(case, inputs, make, work, reference)
        if name == "ours":
            reference = got
        elif reference is None:
            result.reason = (result.reason + " (not verified: ours failed)").strip()
        results[name] = result
        if timer is not None:
            timers[name] = timer
        print(f"  {name:<15} {describe(result, unit)}", flush=True)
        del got
    for round_ in range(2, rounds + 1):
        for name, timer in timers.items():
            results[name].add_round(timer(), work, case)
        print(f"  round {round_}: " + ", ".join(f"{name} {results[name].rounds[-1]:.4f}" for name in timers)
              + " ms", flush=True)
    if rounds > 1:
        for name in timers:
            print(f"  {name:<15} best of {rounds}: {describe(results[name], unit)}", flush=True)
    del timers
    ratio, best_peer = ratio_to_best_peer(results)
    print(f"  ours/best_peer  {'n/a' if ratio is None else f'{ratio:.2f} (vs {best_peer})'}", flush=True)
    del inputs, reference
    free_cuda_memory()
    return {
        "name": case.name,
        "group": case.group,
        "unit": unit,
        "shape": dataclasses.asdict(case) | {"dtype": str(case.dtype), "seqlen_q": case.seqlen_q},
        "work": work,
        "lengths": lengths,
        "results": {name: dataclasses.asdict(r) for name, r in results.items()},
        "ours_over_best_peer": ratio,
        "best_peer": best_peer,
    }


def matmul_tflops(size: int = 8192) -> float:
    a = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=WARMUP_MS, rep=REP_MS, return_mode="median")
    return 2 * size**3 / (ms * 1e-3) / 1e12


def copy_gbps(gib: int = 1) -> float:
    """Device-to-device copy, counting bytes read plus bytes written."""
    source = torch.randn(gib * 2**28, device=DEVICE)  # float32
    target = torch.empty_like(source)
    ms = triton.testing.do_bench(lambda: target.copy_(source), warmup=WARMUP_MS, rep=REP_MS, return_mode="median")
    return 2 * source.numel() * source.element_size() / (ms * 1e-3) / 1e9


def measure_ceilings() -> dict:
    """The two roofs of PEERS.md, measured in this run: a bf16 8192^3 matmul and a 1 GiB device copy."""
    ceilings = {}
    try:
        ceilings["matmul_bf16_tflops"] = matmul_tflops()
        ceilings["copy_gbps_read_plus_write"] = copy_gbps()
    except Exception as exc:  # ceilings are context, never a reason to stop
        ceilings["error"] = short_error(exc)
    free_cuda_memory()
    return ceilings


def format_cell(result: dict) -> str:
    if result["status"] != "ok":
        return result["status"]
    return f"{result['value']:.1f}" + ("!" if result["mismatch"] else "")


def summary_tables(records: list[dict]) -> str:
    blocks = []
    for group, unit in GROUP_UNITS.items():
        rows = []
        for record in (r for r in records if r["group"] == group):
            ratio = record["ours_over_best_peer"]
            rows.append([record["name"].removeprefix(group + " ")]
                        + [format_cell(record["results"][name]) for name in PROVIDERS]
                        + ["n/a" if ratio is None else f"{ratio:.2f}"])
        if rows:
            blocks.append(f"{group} ({unit}; '!' = output differs from ours)\n"
                          + format_table(["case", *PROVIDERS, "ours/best_peer"], rows))
    return "\n\n".join(blocks)


def save_plot(records: list[dict], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", flush=True)
        return
    plotted = [r for r in records if r["ours_over_best_peer"] is not None]
    if not plotted:
        return
    palette = plt.get_cmap("tab10")
    colors = {group: palette(i % palette.N) for i, group in enumerate(GROUP_UNITS)}
    figure, axes = plt.subplots(figsize=(10, 0.32 * len(plotted) + 1.5))
    positions = range(len(plotted))
    bars = axes.barh(positions, [r["ours_over_best_peer"] for r in plotted],
                     color=[colors[r["group"]] for r in plotted])
    axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    axes.set_yticks(list(positions), [r["name"] for r in plotted], fontsize=7)
    axes.invert_yaxis()
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("our throughput / best peer's (>1: ours faster)")
    axes.set_title("hf_triton_attn vs best of SDPA flash/cuDNN/efficient and FlexAttention")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"plot: {path}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cases = all_cases()
    if args.quick:
        cases = [c for c in cases if c.name in QUICK_CASE_NAMES]
    cases = [c for c in cases if selected(c.name, args.cases)]
    if not cases:
        raise SystemExit("no case matches --cases")
    require_cuda()
    env = environment_info()
    print_environment(env)
    json_path = os.path.join(args.out, "bench_kernels.json") if args.out else None
    payload = {"environment": env, "settings": {"warmup_ms": WARMUP_MS, "rep_ms": REP_MS,
                                                "output_tolerance": OUTPUT_TOLERANCE,
                                                "gradient_tolerance": GRADIENT_TOLERANCE, "quick": args.quick,
                                                "rounds": args.rounds},
               "ceilings": measure_ceilings(), "cases": []}
    print("ceilings: " + ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in payload["ceilings"].items()), flush=True)
    started = time.perf_counter()
    for index, case in enumerate(cases, 1):
        print(f"[{index}/{len(cases)}] {case.name} ({time.perf_counter() - started:.0f} s)", flush=True)
        payload["cases"].append(run_case(case, args.rounds))
        if json_path:
            write_json(json_path, payload)  # after every case: a run cut short keeps what it measured
    print(f"\ndone in {time.perf_counter() - started:.0f} s\n")
    print(summary_tables(payload["cases"]), flush=True)
    if args.out:
        print(f"\njson: {json_path}")
        save_plot(payload["cases"], os.path.join(args.out, "bench_kernels.png"))


if __name__ == "__main__":
    sys.exit(main())
