# Sourced by tools/ensure_venv.sh and tools/ensure_vllm_venv.sh, from the repo root: the hash each stamps
# into its venv, so that a step runs again only when its inputs changed.

# The files under the given paths that git would commit (tracked, or untracked but not ignored, so no
# generated files); outside a git checkout, every file there but caches and built extensions.
committed_files() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard -- "$@"
  else
    find "$@" -type f -not -path '*/__pycache__/*' -not -name '*.so' -print0 2>/dev/null || true
  fi
}

# sha256 over the names and contents of those files (one git still tracks but that was deleted is left out).
hash_of() {
  local file
  committed_files "$@" | while IFS= read -r -d '' file; do
    if [[ -f "$file" ]]; then printf '%s\0' "$file"; fi
  done | sort -z | xargs -0 --no-run-if-empty sha256sum | sha256sum | cut -d' ' -f1
}
