#!/usr/bin/env bash
# The GPU check: one command, under 14 minutes on one GPU (on an H200 the tests and the eager benchmark took
# under 2). It runs the CUDA tests, then the training-step benchmark of the seed config (6 x 512, context 512)
# and GPT-2 small in bf16, eager and compiled, each against Hugging Face GPT-2 in the same process, and writes
# everything under one folder (default gpu-check/), with table.md holding the tables.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Needs a CUDA build of torch and the project installed (pip install torch; pip install -e ".[test]") and
# MINIGPT_DATA_DIR pointing at the asset root (tokenizer, WikiText) for the tests that train.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
status=0
{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  echo '```'
} > "$out/table.md"

timeout 300 python -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider > "$out/tests.txt" 2>&1 || status=1
{ echo; echo "## CUDA tests"; echo; echo '```'; tail -n 15 "$out/tests.txt"; echo '```'; } >> "$out/table.md"

for mode in eager compile; do
  flag=""; [ "$mode" = compile ] && flag="--compile"
  # compiling both models on both sides takes minutes: 150 s cut the compiled run short on an H200
  limit=150; [ "$mode" = compile ] && limit=330
  timeout "$limit" python -m benchmarks.train_step --config seed gpt2 --device cuda --precision bf16 --reps 5 \
    --no-memory $flag --out "$out/train_step_$mode.json" > "$out/train_step_$mode.txt" 2>&1 || status=1
  { echo; echo "## Training step, bf16, $mode (tokens/s and MFU, MiniGPT vs HF)"; echo; echo '```';
    cat "$out/train_step_$mode.txt"; echo '```'; } >> "$out/table.md"
done
cat "$out/table.md"
exit $status
