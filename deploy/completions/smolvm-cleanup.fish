# fish completion for smolvm-cleanup, kept in step with --help by a test (tests/cli.rs).
complete -c smolvm-cleanup -f
complete -c smolvm-cleanup -l all -d 'Target every VM in the state DB (ignores --prefix)'
complete -c smolvm-cleanup -l prefix -x -d 'Target VMs whose id starts with PREFIX'
complete -c smolvm-cleanup -l dry-run -d 'Print the targets and change nothing'
complete -c smolvm-cleanup -l state-dir -r -a '(__fish_complete_directories)' -d "Use DIR's smolvm.db and celesto.db only"
complete -c smolvm-cleanup -l db -r -F -d 'Use this state DB file only'
complete -c smolvm-cleanup -l socket-dir -r -a '(__fish_complete_directories)' -d 'Where SmolVM puts fc-<id>.sock'
complete -c smolvm-cleanup -l database-url -x -d 'The PostgreSQL URL SmolVM 0.0.8-0.0.29 keeps its state in'
complete -c smolvm-cleanup -l older-than -x -d 'Leave VMs younger than DURATION alone'
complete -c smolvm-cleanup -l check -d 'Change nothing; exit 1 if anything is left'
complete -c smolvm-cleanup -l json -d 'Print one JSON document instead of the text'
complete -c smolvm-cleanup -s v -l verbose -d 'Report each step on stderr'
complete -c smolvm-cleanup -l every -x -d 'Run again every DURATION until SIGTERM'
complete -c smolvm-cleanup -l metrics-file -r -F -d 'Write Prometheus text there after each run'
complete -c smolvm-cleanup -l grace -x -d 'Time a VMM gets after SIGTERM before SIGKILL'
complete -c smolvm-cleanup -l timeout -x -d 'Bound on the whole run'
complete -c smolvm-cleanup -s h -l help -d 'Print the help'
complete -c smolvm-cleanup -s V -l version -d 'Print version and commit'
