#!/usr/bin/env bash
# The CPU check: every speed figure the README claims, re-measured in one command on a quiet machine, each
# against Hugging Face GPT-2 in the same process. Training steps (seed and tiny configs, fp32 and bf16, plus
# the defaults of each side), evaluation, generation at batch 1 and 8, tokenizing WikiText-2 train, and the
# allocator settings' kernel time; then one file, table.md, with every table, the CPU's flags and `uptime`
# before and after. Nothing else may run meanwhile: the machine's load is part of every figure.
#
#   bash benchmarks/cpu_check.sh [OUT_DIR] [THREADS]
#
# About 35 minutes on 2 cores. Needs the project installed and MINIGPT_DATA_DIR pointing at the asset root.
# On a CPU without bf16 in hardware the bf16 rows are skipped with the reason printed (see benchmarks/README).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-cpu-check}"
threads="${2:-2}"
mkdir -p "$out"
status=0
{
  echo "# CPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  echo '```'
  echo "uptime before: $(uptime)"
  lscpu | grep -E '^(Model name|CPU\(s\)|Thread\(s\) per core)'
  echo "speed flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|avx512f|avx512_bf16|amx_bf16|amx_tile' | tr '\n' ' ')"
  python -c "import torch; print('torch', torch.__version__)"
  echo '```'
} > "$out/table.md"

bench() {  # TAG MODULE TITLE ARGS...: benchmarks.MODULE ARGS, written as TAG.txt / TAG.json
  local tag="$1" module="$2" title="$3"; shift 3
  python -m "benchmarks.$module" "$@" --out "$out/$tag.json" > "$out/$tag.txt" 2>&1 || status=1
  { echo; echo "## $title"; echo; echo '```'; cat "$out/$tag.txt"; echo '```'; } >> "$out/table.md"
}

bench matmul matmul "Matmul ceiling (GFLOP/s)" --threads "$threads"
bench train_step train_step "Training step (tokens/s, MFU, kernel time, peak memory)" \
  --config seed tiny --threads "$threads" --reps 3
bench evaluate evaluate "Evaluation, fp32 (tokens/s)" --config seed tiny --threads "$threads" --reps 3
if python -c "from minigpt.perf import cpu_has_fast_bf16 as f; raise SystemExit(0 if f() else 1)"; then
  bench evaluate_bf16 evaluate "Evaluation, bf16 (tokens/s)" --config seed tiny --precision bf16 \
    --threads "$threads" --reps 3
else
  printf '\n## Evaluation, bf16\n\nSkipped: this CPU has no bf16 in hardware, so bf16 is emulated here.\n' \
    >> "$out/table.md"
fi
for config in seed tiny; do
  bench "generate_$config" generate "Generation, $config config, greedy (tokens/s)" \
    --config "$config" --batch-sizes 1 8 --threads 1
done
bench data_prep data_prep "Tokenizing WikiText-2 train (seconds, empty cache)" --reps 3
# Each setting and side in a process of its own; the tiny size's steps are short, so it gets more of them.
bench allocator_tiny allocator "Kernel time by allocator setting, tiny config" --config tiny \
  --threads "$threads" --steps 20 --reps 2
bench allocator allocator "Kernel time by allocator setting, CPU-hour and seed configs" \
  --config cpu_hour seed --threads "$threads" --steps 6

{ echo; echo '```'; echo "uptime after: $(uptime)"; echo '```'; } >> "$out/table.md"
cat "$out/table.md"
exit $status
