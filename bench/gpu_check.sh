#!/usr/bin/env bash
# The GPU figures this project still lacks, in one command for the minutes a lent GPU is available.
#
#   bench/gpu_check.sh [--dry-run] [OUTPUT_DIR]
#
# OUTPUT_DIR defaults to $OUT (what a lent machine collects), else ./gpu_check_out. Everything goes to
# OUTPUT_DIR/gpu_check.txt: the GPU's name and the versions, then each step's command, output and exit
# code, then a summary of the figures (peak GPU memory and decode ms/token per run). Steps, about 6
# minutes on one H100 by estimate (never measured), each capped by `timeout`:
#   1. the CUDA-only tests (graph capture, bf16 agreement, int8 experts under a graph);
#   2. bench/engine.py --full-random, bf16 and int8 weights (grouped_mm prefill, CUDA-graph decode);
#   3. the same with batched_mm experts, and with eager decoding instead of CUDA graphs, both weights.
# A failing step is recorded and the next one runs; the exit code is 1 if any step failed.
# Without CUDA it stops at once with exit code 3; --dry-run writes the file with the steps it would run.
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${MOLMO_ROS_VENV:-$repo_root/.venv}/bin/python"
usage="usage: bench/gpu_check.sh [--dry-run] [OUTPUT_DIR]"
dry_run=false
output_dir=""
for argument in "$@"; do
  case "$argument" in
    --dry-run) dry_run=true ;;
    -h | --help) echo "$usage"; exit 0 ;;
    -*) echo "gpu_check: unknown option $argument; $usage" >&2; exit 2 ;;
    *)
      if [[ -n "$output_dir" ]]; then
        echo "gpu_check: more than one output folder given; $usage" >&2
        exit 2
      fi
      output_dir="$argument"
      ;;
  esac
done
output_dir="${output_dir:-${OUT:-$repo_root/gpu_check_out}}"
mkdir -p "$output_dir" || { echo "gpu_check: cannot create $output_dir" >&2; exit 2; }
report="$output_dir/gpu_check.txt"
cd "$repo_root"

if [[ ! -x "$python" ]]; then
  echo "gpu_check: no venv at ${python%/bin/python}; run tools/ensure_venv.sh first" >&2
  exit 2
fi

# Seconds each step may take: 90 + 6 x 60 = 450 s at the very most, under the 8 minutes a check may take.
tests_limit=90
bench_limit=60
bench_args=(--full-random --runs 3 --warmup 1 --tokens 16)
steps=(
  "$tests_limit|CUDA-only tests|$python -m pytest -q -rs -p no:cacheprovider test/test_fast_generation.py test/test_quantization.py -k cuda"
  "$bench_limit|bf16, grouped_mm, CUDA graphs|$python bench/engine.py ${bench_args[*]} --quantization none"
  "$bench_limit|int8, grouped_mm, CUDA graphs|$python bench/engine.py ${bench_args[*]} --quantization int8"
  "$bench_limit|bf16, batched_mm, CUDA graphs|$python bench/engine.py ${bench_args[*]} --quantization none --experts batched_mm"
  "$bench_limit|int8, batched_mm, CUDA graphs|$python bench/engine.py ${bench_args[*]} --quantization int8 --experts batched_mm"
  "$bench_limit|bf16, grouped_mm, eager decoding|$python bench/engine.py ${bench_args[*]} --quantization none --no-cuda-graphs"
  "$bench_limit|int8, grouped_mm, eager decoding|$python bench/engine.py ${bench_args[*]} --quantization int8 --no-cuda-graphs"
)

{
  echo "# molmo_ros GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if $dry_run; then
    echo "mode: dry run (nothing was run)"
  fi
} >"$report"

if $dry_run; then
  for step in "${steps[@]}"; do
    IFS='|' read -r limit name command <<<"$step"
    echo "## $name (at most $limit s)" >>"$report"
    echo "\$ $command" >>"$report"
  done
  echo "gpu_check: dry run; the steps are listed in $report"
  exit 0
fi

gpu="$("$python" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)"
if [[ -z "$gpu" ]]; then
  echo "error: no CUDA GPU visible to torch (torch.cuda.is_available() is False); nothing was measured" >>"$report"
  echo "gpu_check: no CUDA GPU visible to torch; run this on a machine with an NVIDIA GPU and its driver" >&2
  exit 3
fi
{
  echo "gpu: $gpu"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/nvidia-smi: /'
  "$python" -c 'import torch, transformers, torchao; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, torchao {torchao.__version__}")' 2>/dev/null
} >>"$report"

failed=0
summary=()
for step in "${steps[@]}"; do
  IFS='|' read -r limit name command <<<"$step"
  echo "gpu_check: $name"
  {
    echo
    echo "## $name (at most $limit s)"
    echo "\$ $command"
  } >>"$report"
  started=$SECONDS
  # shellcheck disable=SC2086  # the command is a word list on purpose
  timeout "$limit" $command >"$output_dir/step.log" 2>&1
  status=$?
  grep -v "register_constant" "$output_dir/step.log" >>"$report"
  echo "exit code $status after $((SECONDS - started)) s" >>"$report"
  if [[ $status -ne 0 ]]; then
    failed=1
  fi
  peak="$(grep -o 'peak GPU memory overall: .*' "$output_dir/step.log" | head -1)"
  per_token="$(grep -E '^1920x1080 x1 +fast  ' "$output_dir/step.log" | awk '{print $(NF-2)}' | head -1)"
  summary+=("$name: exit $status${peak:+, $peak}${per_token:+, 1080p x1 fast decode $per_token ms/token}")
done
rm -f "$output_dir/step.log"
{
  echo
  echo "## summary ($gpu)"
  printf '%s\n' "${summary[@]}"
} >>"$report"
echo "gpu_check: wrote $report"
exit "$failed"
