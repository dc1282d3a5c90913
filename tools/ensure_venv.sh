#!/usr/bin/env bash
# Makes the project venv ready: creates it if missing, installs the pinned requirements when
# requirements/*.txt changed, and rebuilds and reinstalls molmo_ros when any file that goes into
# the package changed. Each step is skipped when the hash stamped into the venv still matches.
#   MOLMO_ROS_VENV   venv directory (default: .venv in the repo root)
#   MOLMO_ROS_PYTHON interpreter that creates it (default: python3.11)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MOLMO_ROS_VENV:-$repo_root/.venv}"
python="${MOLMO_ROS_PYTHON:-python3.11}"
package_paths=(molmo_ros msg srv action launch config samples cmake setup.py pyproject.toml CMakeLists.txt package.xml)
cd "$repo_root"

# shellcheck source=tools/file_hash.sh
source tools/file_hash.sh

if [[ ! -x "$venv/bin/python" ]]; then
  echo "ensure_venv: creating $venv with $python"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)

requirements_hash="$(hash_of requirements/*.txt)"
requirements_stamp="$venv/.molmo_ros_requirements.sha256"
if [[ "$(cat "$requirements_stamp" 2>/dev/null)" != "$requirements_hash" ]]; then
  echo "ensure_venv: installing requirements/dev.txt into $venv"
  "${pip[@]}" install --progress-bar off -r requirements/dev.txt
  echo "$requirements_hash" >"$requirements_stamp"
fi

# New requirements (other ROS wheels) also need a rebuild of the interfaces.
package_hash="$(printf '%s %s' "$requirements_hash" "$(hash_of "${package_paths[@]}")" | sha256sum | cut -d' ' -f1)"
package_stamp="$venv/.molmo_ros_package.sha256"
if [[ "$(cat "$package_stamp" 2>/dev/null)" != "$package_hash" ]]; then
  echo "ensure_venv: building and installing molmo_ros into $venv"
  "${pip[@]}" install --no-build-isolation --no-deps .
  echo "$package_hash" >"$package_stamp"
fi
