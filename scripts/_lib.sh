# Shared helpers for the scripts in this folder; sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# find_python 3.11 -> path of an interpreter of that version (pyenv aware).
find_python() {
  local version="$1" candidate
  for candidate in "${HOME}"/.pyenv/versions/"${version}".*/bin/python"${version}" \
                   /usr/local/bin/python"${version}" /usr/bin/python"${version}"; do
    if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

# ensure_venv DIR VERSION EXTRAS -> a virtual environment with the project installed.
# Reinstalls only when pyproject.toml changed since the last install.
ensure_venv() {
  local dir="$1" version="$2" extras="$3" python stamp
  stamp="$(sha256sum pyproject.toml | cut -c1-16)-${extras}"
  if [ -f "$dir/.installed" ] && [ "$(cat "$dir/.installed")" = "$stamp" ]; then return 0; fi
  python="$(find_python "$version")" || { echo "Python $version not found" >&2; return 1; }
  [ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
  echo "$stamp" > "$dir/.installed"
}

MAIN_PYTHON="${MAIN_PYTHON:-3.11}"
VENV="$ROOT/.venv"
