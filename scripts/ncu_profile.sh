#!/usr/bin/env bash
# Nsight Compute profiles of our main kernels on a GPU machine whose runtime exposes the hardware counters (the
# lent H200 machines run Firecracker, where ncu works): per kernel, the detail sections, the raw pipe metrics and
# the SASS with warp-stall samples, as text under $OUT. Clocks are left alone (--clock-control none).
#   bash scripts/ncu_profile.sh [CASE ...]    (cases: benchmarks/ncu_cases.py; default: three of them)
set -uo pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -n 1)
reports=$(mktemp -d)
status=0
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(fwd_d64_full fwd_d128_full bwd_d64_gqa_causal)
for name in "${cases[@]}"; do
  # Skip the warm-up calls' launches: one forward kernel per call, two backward kernels (dQ, dK/dV).
  if [[ $name == bwd_* ]]; then kernels=_attn_bwd; skip=4; count=2; else kernels=_attn_fwd; skip=2; count=1; fi
  "$NCU" --clock-control none -k "regex:$kernels" --launch-skip $skip --launch-count $count --set full \
      --import-source no -o "$reports/$name" python benchmarks/ncu_cases.py "$name" > "$reports/$name.log" 2>&1
  rc=$?
  echo "$name: rc=$rc"
  if [ $rc -ne 0 ]; then tail -n 5 "$reports/$name.log"; status=$rc; continue; fi
  "$NCU" -i "$reports/$name.ncu-rep" --page details --print-details all >> "$OUT/ncu_details.txt" 2>&1
  "$NCU" -i "$reports/$name.ncu-rep" --page raw >> "$OUT/ncu_raw.txt" 2>&1
  "$NCU" -i "$reports/$name.ncu-rep" --page source --print-source sass --csv > "$OUT/ncu_sass_$name.csv" 2>&1
done
grep -E "^  _attn|Duration|Issue Slots Busy|Registers Per Thread  |Achieved Occupancy" "$OUT/ncu_details.txt"
grep -E "^  _attn|sm__inst_executed_pipe_(xu|fma|alu)\.avg\.pct_of_peak_sustained_active|sm__pipe_tensor_cycles_active\.avg\.pct_of_peak_sustained_active" \
  "$OUT/ncu_raw.txt" | awk '{print $1, $NF}'
exit $status
