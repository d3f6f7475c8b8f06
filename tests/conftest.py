"""Tests run the real kernels: on a CUDA GPU when there is one, else in the Triton interpreter on the CPU.

TRITON_INTERPRET must be set before Triton decorates the kernels, i.e. before hf_triton_attn is imported.
The interpreter computes bf16 dot products wrongly (triton 3.9), so bf16 runs only on the GPU.
"""
import os
import zlib

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if ON_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh inputs per test, yet reproducible from the test's name when a failure needs replaying.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
