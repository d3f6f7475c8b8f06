"""The developer scripts that run without a GPU keep working as the kernels change."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize("args", [["dkdv", "--grouped"], ["fwd", "--block-m", "128", "--block-n", "64", "--warps", "8"]])
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
