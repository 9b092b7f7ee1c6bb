# bash completion for smolvm-cleanup (and `smolvm cleanup`), kept in step with --help by
# a test (tests/cli.rs).
_smolvm_cleanup() {
    local cur prev
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    case $prev in
        --state-dir|--socket-dir)
            COMPREPLY=($(compgen -d -- "$cur")); return ;;
        --db|--metrics-file)
            COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --prefix|--database-url)
            COMPREPLY=(); return ;;
        --older-than|--every|--grace|--timeout)
            COMPREPLY=($(compgen -W "500ms 3s 30s 10m 1h" -- "$cur")); return ;;
    esac
    if [[ ${COMP_WORDS[0]##*/} == smolvm && $COMP_CWORD -eq 1 ]]; then
        COMPREPLY=($(compgen -W "cleanup --help --version" -- "$cur")); return
    fi
    COMPREPLY=($(compgen -W "--all --prefix --dry-run --state-dir --db --socket-dir
        --database-url --database-is-local --older-than --check --json -v --verbose --every --metrics-file
        --grace --timeout -h --help -V --version" -- "$cur"))
}
complete -F _smolvm_cleanup smolvm-cleanup
