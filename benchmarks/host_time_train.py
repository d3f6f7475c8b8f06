"""Host time of a training call: microseconds per forward (with grad) and per forward+backward.

At BERT-base sizes (B32 H12 S512 D64) the attention kernels of one forward+backward take ~0.4 ms of GPU time,
so a training call whose Python costs more than that is host-bound. This script issues 200 calls back to back
and reports the time per call before and after draining the GPU (equal: host-bound), then a cProfile of the
forward+backward calls.

    PYTHONPATH=. python benchmarks/host_time_train.py
"""
import cProfile
import io
import pstats
import time

import torch

import hf_triton_attn

CALLS = 200


def main() -> None:
    batch, heads, seqlen, head_dim = 32, 12, 512, 64
    q, k, v = (torch.randn(batch, seqlen, heads, head_dim, device="cuda", dtype=torch.bfloat16)
               .transpose(1, 2).requires_grad_() for _ in range(3))
    grad_out = torch.randn(batch, heads, seqlen, head_dim, device="cuda", dtype=torch.bfloat16)

    def forward_backward():
        torch.autograd.backward(hf_triton_attn.attention(q, k, v), grad_out)

    def forward_with_grad():
        hf_triton_attn.attention(q, k, v)

    for name, fn in (("fwd+bwd", forward_backward), ("fwd with grad", forward_with_grad)):
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        issued = time.perf_counter()
        torch.cuda.synchronize()
        drained = time.perf_counter()
        print(f"{name}: host {1e6 * (issued - start) / CALLS:.0f} us/call, "
              f"with drain {1e6 * (drained - start) / CALLS:.0f} us/call", flush=True)

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(CALLS):
        forward_backward()
    torch.cuda.synchronize()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(28)
    print("\n".join(line[:160] for line in text.getvalue().splitlines()[:50]))


if __name__ == "__main__":
    main()
