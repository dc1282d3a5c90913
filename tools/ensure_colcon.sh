#!/usr/bin/env bash
# Makes `colcon` ready for test/test_colcon_build.py: Debian's colcon and the extensions a ROS 2 workspace
# build needs, installed with apt-get when missing (Debian has colcon, but no ROS 2: the ament and rosidl
# parts come from the venv's PyPI wheels). The installed packages are the cache: when they are all
# there this costs one dpkg query. Each apt-get step is bounded in time. Run as root, or by a user with
# passwordless sudo.
# Exit 0 when ready; otherwise 1, with the reason on the last line of stderr.
#   MOLMO_ROS_APT_TIMEOUT_S  seconds allowed for each apt-get step (default 240)
set -euo pipefail

# Without recommends apt would add GTK for colcon's desktop notifications; these are what the build uses:
# the ROS package type (package.xml), the CMake build, setup.bash, and --packages-select.
packages=(colcon python3-colcon-ros python3-colcon-cmake python3-colcon-bash python3-colcon-package-selection)
timeout_s="${MOLMO_ROS_APT_TIMEOUT_S:-240}"

all_installed() {
  local installed
  installed="$(dpkg-query -W -f='${Status}\n' "${packages[@]}" 2>/dev/null | grep -c ' installed$' || true)"
  [[ "$installed" -eq "${#packages[@]}" ]] && command -v colcon >/dev/null
}

fail() {
  echo "ensure_colcon: $*" >&2
  exit 1
}

if all_installed; then
  exit 0
fi
command -v apt-get >/dev/null || fail "colcon is not installed and there is no apt-get to install it" \
  "(install ${packages[*]} or pip's colcon-common-extensions by hand)"
# Not root: passwordless sudo (GitHub's hosted runners have it) will do; -n fails rather than ask.
as_root=()
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null && sudo -n true 2>/dev/null ||
    fail "colcon is not installed and installing it needs root or passwordless sudo:" \
      "sudo apt-get install ${packages[*]}"
  as_root=(sudo -n)
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
apt_get() {
  # Waits up to a minute for another apt run's lock rather than failing at once.
  # env sets DEBIAN_FRONTEND past sudo, which would drop it from the environment.
  timeout "$timeout_s" "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=60 -o Acquire::Retries=2 "$@" >>"$log" 2>&1
}
explain() {
  local status=$1 what=$2
  if [[ $status -eq 124 ]]; then
    fail "$what took longer than ${timeout_s} s (MOLMO_ROS_APT_TIMEOUT_S)"
  fi
  local reason
  reason="$(grep -E '^(E|W):' "$log" | tail -n 1)"
  fail "$what failed (exit $status): ${reason:-$(tail -n 1 "$log")}"
}

echo "ensure_colcon: installing ${packages[*]} with apt-get"
started=$SECONDS
install=(install -y --no-install-recommends "${packages[@]}")
if ! apt_get "${install[@]}"; then
  # The package lists may be missing or out of date: refresh them once and try again.
  status=0
  apt_get update || status=$?
  [[ $status -eq 0 ]] || explain "$status" "apt-get update"
  apt_get "${install[@]}" || explain $? "apt-get install ${packages[*]}"
fi
all_installed || fail "apt-get installed ${packages[*]} but colcon is still not on PATH"
echo "ensure_colcon: colcon $(dpkg-query -W -f='${Version}' colcon) ready in $((SECONDS - started)) s"
