#!/usr/bin/env bash
# The main job: tools/run_demo.sh [molmo-demo arguments, e.g. --model /path/to/MolmoE-1B-0924 --query "red mug"]
# Prepares the venv, then starts the bundled camera on the sample images and the pointer node, asks
# the node to point, and prints the points. Without reachable weights it stops and says what to set.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MOLMO_ROS_VENV:-$repo_root/.venv}"
"$repo_root/tools/ensure_venv.sh"
exec "$venv/bin/molmo-demo" "$@"
