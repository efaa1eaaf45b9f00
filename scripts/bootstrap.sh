# Sourced by scripts/serve and scripts/test: make sure uv and the locked environment exist.
# Everything comes from the package registries (PyPI, and Debian's apt where a tool is missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# apt_install PKG...: install the Debian packages that are missing (root or sudo needed).
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing with apt: ${missing[*]}" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

find_uv() {
    if command -v uv >/dev/null 2>&1; then
        UV="$(command -v uv)"
        return 0
    fi
    if [ -x "$ROOT/.tools/bin/uv" ]; then
        UV="$ROOT/.tools/bin/uv"
        return 0
    fi
    return 1
}

if ! find_uv; then
    echo "installing uv into .tools/ (from PyPI)" >&2
    if ! python3 -m venv "$ROOT/.tools" >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 && apt_install python3-venv
        rm -rf "$ROOT/.tools"
        python3 -m venv "$ROOT/.tools"
    fi
    "$ROOT/.tools/bin/pip" install --quiet --disable-pip-version-check uv
    find_uv
fi
export UV
# The native relay engine is compiled when the project is installed (hatch_build.py): it
# needs a C compiler and the C library's headers, Debian's gcc and libc6-dev.
if ! command -v gcc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt_install gcc libc6-dev
fi
"$UV" sync --frozen --quiet "$@"
