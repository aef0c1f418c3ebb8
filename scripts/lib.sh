# Shared helpers for flashcart's set-up scripts: say what we do, install only what is missing.
# Sourced by scripts/test.sh and scripts/up.sh; not meant to be run on its own.

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update (once, to install: $*)"
        as_root apt-get update -qq
        apt_updated=1
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_wasm_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        say "installing the Rust target wasm32-wasip2 (rustup target add)"
        rustup target add wasm32-wasip2
    fi
}

ensure_redis() {
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        apt_install redis-server redis-tools
        # Debian starts a system service on install; flashcart never uses it.
    fi
    say "using $(redis-server --version | cut -d' ' -f1-3)"
}

ensure_postgres() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
        apt_install postgresql
    fi
}

setup_cargo_target() {
    # One target dir outside the clone, reused across runs and clones: never build one thing twice.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flashcart/target}"
    mkdir -p "$CARGO_TARGET_DIR"
    say "cargo target dir: $CARGO_TARGET_DIR"
}

# The operators' tools the tests drive (PyPI: schemathesis, kubernetes-validate,
# check-jsonschema), pinned in scripts/python-tools.txt, in a venv outside the clone.
ensure_python_tools() {
    local venv="${FLASHCART_VENV:-$HOME/.cache/flashcart/venv}"
    local stamp="$venv/.flashcart-tools"
    local want
    want="$(sha256sum scripts/python-tools.txt | cut -d' ' -f1)"
    if [ ! -x "$venv/bin/python" ]; then
        if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
            apt_install python3 python3-venv python3-pip
        fi
        say "creating a Python venv for the test tools: $venv"
        python3 -m venv "$venv"
    fi
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "pip install -r scripts/python-tools.txt (into $venv)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/python-tools.txt
        echo "$want" > "$stamp"
    fi
    export PATH="$venv/bin:$PATH"
}

# promtool (Debian's prometheus package) checks the alert rules and their unit tests.
ensure_promtool() {
    if ! command -v promtool >/dev/null; then
        apt_install prometheus
    fi
}

# Headless Chromium (Debian's package) for the live sale page's test.
ensure_chromium() {
    if ! command -v chromium >/dev/null; then
        apt_install chromium
    fi
}
