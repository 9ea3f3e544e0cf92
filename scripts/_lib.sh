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

# find_recent_python -> path of a working Python 3.10 or newer, the newest first: $PYTHON
# if set, else python3.13 ... python3.10 on PATH or under pyenv, else python3. Each
# candidate must run and have venv with pip (Debian's python3 lacks it without python3-venv).
find_recent_python() {
  local minor candidate
  local -a candidates=()
  if [ -n "${PYTHON:-}" ]; then candidates+=("$PYTHON"); fi
  for minor in 13 12 11 10; do
    candidate="$(command -v "python3.${minor}" 2>/dev/null)" && candidates+=("$candidate")
    for candidate in "${HOME}"/.pyenv/versions/3."${minor}".*/bin/python3."${minor}"; do
      if [ -x "$candidate" ]; then candidates+=("$candidate"); fi
    done
  done
  candidate="$(command -v python3 2>/dev/null)" && candidates+=("$candidate")
  for candidate in "${candidates[@]}"; do
    if "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' \
        >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  echo "no Python 3.10 or newer with venv found on PATH or under ~/.pyenv;" \
    "install one, or point PYTHON at it" >&2
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
