#!/usr/bin/env bash
# The GPU check in one command (device time is scarce): versions, then the named steps in order; full logs
# go to $OUT, short tables to stdout, and a last line per step with its exit code and duration.
#   bash scripts/gpu_check.sh [tests|head-dim-tests|examples|tune|bench-quick|bench|head-dims|models|train-memory|ncu|
#                              diag|pending|pending-probes]...
# The examples step needs the fp16 MiniLM copy, made here (no GPU) and carried along:
#   python examples/make_minilm_fp16.py .carry/minilm-fp16   (then run with carry=[".carry"])
# "pending" applies every benchmarks/pending/*.patch (if any) to this copy (for good: the steps after it run patched)
# and runs the GPU tests of the Gluon kernels; "pending-probes" applies them too (once) and runs every
# benchmarks/pending/probe_*.py; "diag" runs benchmarks/pending/diag_value_split.py.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
apply_pending() {  # each patch once: one whose reverse applies is in already
  local patch rc=0
  for patch in benchmarks/pending/*.patch; do
    [ -e "$patch" ] || continue
    patch -p1 -R --dry-run < "$patch" > /dev/null 2>&1 || patch -p1 < "$patch" >> "$OUT/pending.log" 2>&1 || rc=1
  done
  return $rc
}
summary=()
for step in "$@"; do
  start=$SECONDS
  case $step in
    tests) python -m pytest -q -n 8 tests > "$OUT/tests.log" 2>&1; rc=$?; tail -n 25 "$OUT/tests.log" ;;
    head-dim-tests)
      python -m pytest -q -n 16 -p no:cacheprovider tests/test_kernel.py tests/test_autograd.py tests/test_models.py \
        -k "head_dim or dense or sink or window" > "$OUT/head_dim_tests.log" 2>&1; rc=$?
      grep -E "^FAILED|^ERROR|passed|failed" "$OUT/head_dim_tests.log" | tail -n 15 ;;
    diag) python benchmarks/pending/diag_value_split.py > "$OUT/diag.log" 2>&1; rc=$?; cut -c1-160 "$OUT/diag.log" ;;
    pending)
      rc=0
      apply_pending || rc=1
      python -m pytest -q -n 16 -p no:cacheprovider tests/test_kernel.py tests/test_autograd.py tests/test_scripts.py \
        -k "hopper_forward or backward_after_hopper or hopper_dq or hopper_dkdv or value_head_dim or gluon" \
        >> "$OUT/pending.log" 2>&1 \
        || rc=1
      grep -E "^FAILED|^ERROR|passed|failed" "$OUT/pending.log" | tail -n 15 ;;
    pending-probes)
      rc=0
      apply_pending || rc=1
      for probe in benchmarks/pending/probe_*.py; do
        [ -e "$probe" ] || continue
        python "$probe" 2>&1 | tee -a "$OUT/probes.log" | tail -n 12 || rc=1
      done ;;
    examples)
      rc=0
      python examples/compare_bert.py .carry/minilm-fp16 --dtype float16 > "$OUT/examples.log" 2>&1 || rc=1
      python examples/compare_bert.py .carry/minilm-fp16 --dtype float32 >> "$OUT/examples.log" 2>&1 || rc=1
      python examples/compare_gpt.py --size large >> "$OUT/examples.log" 2>&1 || rc=1
      python examples/compare_gpt.py --dtype float32 >> "$OUT/examples.log" 2>&1 || rc=1
      python examples/finetune.py >> "$OUT/examples.log" 2>&1 || rc=1
      python examples/finetune.py --size base >> "$OUT/examples.log" 2>&1 || rc=1
      grep -E "PASS|FAIL|max|tol|loss|Error" "$OUT/examples.log" | tail -n 40 ;;
    tune) python benchmarks/tune.py --out "$OUT" > "$OUT/tune.log" 2>&1; rc=$?; tail -n 20 "$OUT/tune.log" ;;
    train-memory) python benchmarks/bench_models.py --train-memory --out "$OUT" > "$OUT/models.log" 2>&1; rc=$?
      tail -n 12 "$OUT/models.log" ;;
    bench-quick) python benchmarks/bench_kernels.py --quick --out "$OUT" > "$OUT/bench.log" 2>&1; rc=$?; tail -n 40 "$OUT/bench.log" ;;
    bench) python benchmarks/bench_kernels.py --out "$OUT" > "$OUT/bench.log" 2>&1; rc=$?; tail -n 60 "$OUT/bench.log" ;;
    head-dims) python benchmarks/bench_head_dims.py --rounds 3 --out "$OUT" > "$OUT/head_dims.log" 2>&1; rc=$?
      tail -n 30 "$OUT/head_dims.log" ;;
    models) python benchmarks/bench_models.py --out "$OUT" > "$OUT/models.log" 2>&1; rc=$?; tail -n 40 "$OUT/models.log" ;;
    ncu) bash scripts/ncu_profile.sh > "$OUT/ncu.log" 2>&1; rc=$?; tail -n 40 "$OUT/ncu.log" ;;
    *) echo "unknown step $step"; rc=2 ;;
  esac
  summary+=("$step: rc=$rc in $((SECONDS - start))s")
done
printf '%s\n' "${summary[@]}"
