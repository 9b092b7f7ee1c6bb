# The release venvs and the private namespaces, for ci/compat and ci/guests (sourced).
# uv (from PyPI, in a venv of its own under target/) makes the release venvs: twenty of
# them from a shared cache take seconds, not the minutes pip takes.
uv=target/uv-venv/bin/uv
if ! [ -x "$uv" ]; then
    python3 -m venv target/uv-venv >&2
    target/uv-venv/bin/pip install -q uv >&2
fi
venv() { # module version [requirements...]: prints the venv's python
    m=$1 v=$2
    shift 2
    dir=target/compat/$m-$v
    if ! "$dir/bin/python" -c "import $m" 2>/dev/null; then
        rm -rf "$dir"
        "$uv" venv -q --python "$(command -v python3)" "$dir" >&2
        "$uv" pip install -q --compile-bytecode --python "$dir/bin/python" "$m==$v" "$@" >&2
    fi
    echo "$(pwd)/$dir/bin/python"
}
pgvenv() { # version [requirements...]: SmolVM with its PostgreSQL extra (psycopg 3)
    v=$1
    shift
    dir=target/compat/smolvm-pg-$v
    if ! "$dir/bin/python" -c "import smolvm, psycopg, psycopg_pool" 2>/dev/null; then
        rm -rf "$dir"
        "$uv" venv -q --python "$(command -v python3)" "$dir" >&2
        "$uv" pip install -q --compile-bytecode --python "$dir/bin/python" "smolvm[postgres]==$v" "$@" >&2
    fi
    echo "$(pwd)/$dir/bin/python"
}
inside() { # <name> <script.py> its arguments: in a fresh work dir (last argument) and
    # private network and mount namespaces with their own /tmp (PIDNS=1: a pid one too)
    work=$(pwd)/target/compat-run/$1
    shift
    rm -rf "$work" && mkdir -p "$work"
    # A private /tmp (SmolVM puts its sockets there). A checkout under /tmp stays
    # visible: /tmp is bound aside first, and the checkout bound back into the new one.
    # shellcheck disable=SC2086
    unshare -n -m ${PIDNS:+-p -f --mount-proc} sh -c '
        top=$1; shift
        case $top in
            /tmp/*)
                mount --bind /tmp /mnt && mount -t tmpfs tmpfs /tmp &&
                    mkdir -p "$top" && mount --bind "/mnt/${top#/tmp/}" "$top" ;;
            *) mount -t tmpfs tmpfs /tmp ;;
        esac && exec python3 "$@"' compat "$(pwd)" "$@" "$work"
}
# The stand-in Firecracker (standin.c), built before releases run side by side. Every
# `--one` child sources this file too: it rebuilds only a missing or stale binary, and
# renames a whole one into place, so no release runs a binary being rewritten (EACCES
# before the linker's chmod, or ETXTBSY).
mkdir -p target/standin
if [ ! -x target/standin/firecracker ] || [ ci/compat.d/standin.c -nt target/standin/firecracker ]; then
    cc -O2 -static -o "target/standin/firecracker.$$" ci/compat.d/standin.c
    mv -f "target/standin/firecracker.$$" target/standin/firecracker
fi
