#!/usr/bin/env bash
# Lint and test the project in its venv: tools/run_tests.sh [pytest arguments] (default: all of test/).
# ROS participants started by the tests stay on this machine, in a random domain unless one is set.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MOLMO_ROS_VENV:-$repo_root/.venv}"
"$repo_root/tools/ensure_venv.sh"
cd "$repo_root"  # pytest's paths are relative to it
# Lint first: a failure here is known before the vLLM venv's build (minutes on a fresh machine).
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .

# The real vLLM server's venv (test/test_vllm_server.py), 6.3 GB: skipped when the arguments name test files,
# no directory, and not that file. The scan errs towards building: an option that names that file or a
# directory (--ignore=…, --basetemp DIR) counts too. A failure here does not stop the other tests: the vLLM
# tests then fail under CI=true and are skipped elsewhere, each saying why.
needs_vllm=true
for argument in "$@"; do
  if [[ $argument == *test_vllm_server.py* || -d $argument ]]; then
    needs_vllm=true
    break
  elif [[ $argument == *.py || $argument == *.py::* ]]; then
    needs_vllm=false
  fi
done
if [[ $needs_vllm == true ]]; then
  vllm_errors="$(mktemp)"
  if ! tools/ensure_vllm_venv.sh 2>"$vllm_errors"; then
    cat "$vllm_errors" >&2
    # The vLLM tests' failure repeats the reason, where a CI log's end shows it.
    MOLMO_ROS_VLLM_PROBLEM="$(tail -n 1 "$vllm_errors")"
    export MOLMO_ROS_VLLM_PROBLEM
    echo "run_tests: the vLLM test venv could not be set up (see above)" >&2
  fi
  rm -f "$vllm_errors"
fi

# Debian's colcon for test/test_colcon_build.py (one dpkg query once installed). If it cannot be had, the
# run goes on: that test fails under CI=true and is skipped elsewhere, with this reason.
colcon_errors="$(mktemp)"
if ! tools/ensure_colcon.sh 2>"$colcon_errors"; then
  cat "$colcon_errors" >&2
  MOLMO_ROS_COLCON_PROBLEM="$(tail -n 1 "$colcon_errors")"
  export MOLMO_ROS_COLCON_PROBLEM
fi
rm -f "$colcon_errors"

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((RANDOM % 101 + 1))}"


status=0
"$venv/bin/python" -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "run_tests: pytest collected no tests" >&2
fi
exit "$status"
