# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_hapulse_global_optspecs
    string join \n server= token= config= o/output= h/help V/version
end

function __fish_hapulse_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_hapulse_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_hapulse_using_subcommand
    set -l cmd (__fish_hapulse_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c hapulse -n "__fish_hapulse_needs_command" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_needs_command" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_needs_command" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_needs_command" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_needs_command" -s V -l version -d 'Print version'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "status" -d 'Every cluster (health, masters, nodes), or one cluster\'s instances, VIP holders, nodes and replication'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "switchover" -d 'Move the master of a cluster\'s VRRP instance (and its database) to another node: shows the plan, asks, then follows the steps'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "pause" -d 'Stop automatic actions on a cluster until resumed (a maintenance window)'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "resume" -d 'End a pause'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "events" -d 'What happened, newest first'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "alerts" -d 'Alerts firing now'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "silence" -d 'Silences: matchers that mute alerts for a while (like amtool\'s)'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "failover" -d 'A person\'s part in automatic failover'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "nodes" -d 'Nodes'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "history" -d 'A node\'s history: min/avg/max per step of one metric'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "completions" -d 'Shell completions on standard output'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "man" -d 'The man page (roff) on standard output'
complete -c hapulse -n "__fish_hapulse_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hapulse -n "__fish_hapulse_using_subcommand status" -l watch -d 'Show it again every this many seconds until interrupted' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand status" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand status" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand status" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand status" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -l to -d 'The node that becomes master' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -l instance -d 'The VRRP instance (needed when the cluster has several)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -l reason -d 'Why (recorded in the audit log)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -l at -d 'Start it at this time (RFC 3339, `2026-12-07T22:00:00Z`) instead of now' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -l dry-run -d 'Show the plan only'
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -s y -l yes -d 'Do not ask'
complete -c hapulse -n "__fish_hapulse_using_subcommand switchover" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand pause" -l reason -d 'Why (required)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand pause" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand pause" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand pause" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand pause" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand pause" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand resume" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand resume" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand resume" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand resume" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand resume" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand events" -l cluster -d 'Only this cluster' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand events" -l since -d 'Only since this long ago (`10m`, `2h`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand events" -l limit -d 'Most events' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand events" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand events" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand events" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand events" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand events" -s f -l follow -d 'Keep printing new events as they happen (every 2 s) until interrupted'
complete -c hapulse -n "__fish_hapulse_using_subcommand events" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand alerts" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand alerts" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand alerts" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand alerts" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand alerts" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and not __fish_seen_subcommand_from add list expire help" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and not __fish_seen_subcommand_from add list expire help" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and not __fish_seen_subcommand_from add list expire help" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and not __fish_seen_subcommand_from add list expire help" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and not __fish_seen_subcommand_from add list expire help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and not __fish_seen_subcommand_from add list expire help" -f -a "add" -d 'Mute matching alerts for a while. At least one matcher'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and not __fish_seen_subcommand_from add list expire help" -f -a "list" -d 'The silences in force'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and not __fish_seen_subcommand_from add list expire help" -f -a "expire" -d 'End a silence now'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and not __fish_seen_subcommand_from add list expire help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -l cluster -d 'Cluster matcher' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -l node -d 'Node matcher' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -l rule -d 'Rule matchers (`node_down`; repeat or separate by commas)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -l severity -d 'Severity matcher (`critical`, `warning`, `info`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -l for -d 'How long (`2h`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -l reason -d 'Why (required)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from list" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from list" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from list" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from list" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from expire" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from expire" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from expire" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from expire" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from expire" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from help" -f -a "add" -d 'Mute matching alerts for a while. At least one matcher'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from help" -f -a "list" -d 'The silences in force'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from help" -f -a "expire" -d 'End a silence now'
complete -c hapulse -n "__fish_hapulse_using_subcommand silence; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and not __fish_seen_subcommand_from confirm ack help" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and not __fish_seen_subcommand_from confirm ack help" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and not __fish_seen_subcommand_from confirm ack help" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and not __fish_seen_subcommand_from confirm ack help" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and not __fish_seen_subcommand_from confirm ack help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and not __fish_seen_subcommand_from confirm ack help" -f -a "confirm" -d 'Confirm a failover the arbiter proposed (policy `notify`), to a node'
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and not __fish_seen_subcommand_from confirm ack help" -f -a "ack" -d 'Acknowledge an automatic failover or step-down: lifts its anti-flapping hold'
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and not __fish_seen_subcommand_from confirm ack help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from confirm" -l to -d 'The node to promote' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from confirm" -l reason -d 'Why (recorded in the audit log)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from confirm" -l instance -d 'The VRRP instance to fail over (needed when the cluster has several)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from confirm" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from confirm" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from confirm" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from confirm" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from confirm" -l accept-data-loss -d 'Go ahead even beyond the data-loss bound'
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from confirm" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from ack" -l reason -d 'Why (recorded in the audit log)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from ack" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from ack" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from ack" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from ack" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from ack" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from help" -f -a "confirm" -d 'Confirm a failover the arbiter proposed (policy `notify`), to a node'
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from help" -f -a "ack" -d 'Acknowledge an automatic failover or step-down: lifts its anti-flapping hold'
complete -c hapulse -n "__fish_hapulse_using_subcommand failover; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and not __fish_seen_subcommand_from unfence help" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and not __fish_seen_subcommand_from unfence help" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and not __fish_seen_subcommand_from unfence help" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and not __fish_seen_subcommand_from unfence help" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and not __fish_seen_subcommand_from unfence help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and not __fish_seen_subcommand_from unfence help" -f -a "unfence" -d 'Lift the fence kept on a node that has rejoined (its priority is lowered first)'
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and not __fish_seen_subcommand_from unfence help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and __fish_seen_subcommand_from unfence" -l reason -d 'Why (recorded in the audit log)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and __fish_seen_subcommand_from unfence" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and __fish_seen_subcommand_from unfence" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and __fish_seen_subcommand_from unfence" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and __fish_seen_subcommand_from unfence" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and __fish_seen_subcommand_from unfence" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and __fish_seen_subcommand_from help" -f -a "unfence" -d 'Lift the fence kept on a node that has rejoined (its priority is lowered first)'
complete -c hapulse -n "__fish_hapulse_using_subcommand nodes; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hapulse -n "__fish_hapulse_using_subcommand history" -l metric -d 'lag_bytes, lag_seconds (with --link), heartbeats, load1, check_passing or check_duration_ms (with --check)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand history" -l link -d 'The replication link, for lag (`postgresql:pg`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand history" -l check -d 'The service check, for check_passing and check_duration_ms (`pg-port`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand history" -l since -d 'How far back (`1h`, `7d`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand history" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand history" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand history" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand history" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand history" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand completions" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand completions" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand completions" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand completions" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand man" -l server -d 'The server\'s base URL (`https://hapulse.example:8080`)' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand man" -l token -d 'An API token (`hpt_…`, from `hapulse-server token create`); never printed' -r
complete -c hapulse -n "__fish_hapulse_using_subcommand man" -l config -d 'A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml]' -r -F
complete -c hapulse -n "__fish_hapulse_using_subcommand man" -s o -l output -d 'Output format' -r -f -a "table\t'A table for people'
json\t'The server\'s JSON, for scripts'"
complete -c hapulse -n "__fish_hapulse_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "status" -d 'Every cluster (health, masters, nodes), or one cluster\'s instances, VIP holders, nodes and replication'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "switchover" -d 'Move the master of a cluster\'s VRRP instance (and its database) to another node: shows the plan, asks, then follows the steps'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "pause" -d 'Stop automatic actions on a cluster until resumed (a maintenance window)'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "resume" -d 'End a pause'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "events" -d 'What happened, newest first'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "alerts" -d 'Alerts firing now'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "silence" -d 'Silences: matchers that mute alerts for a while (like amtool\'s)'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "failover" -d 'A person\'s part in automatic failover'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "nodes" -d 'Nodes'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "history" -d 'A node\'s history: min/avg/max per step of one metric'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "completions" -d 'Shell completions on standard output'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "man" -d 'The man page (roff) on standard output'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and not __fish_seen_subcommand_from status switchover pause resume events alerts silence failover nodes history completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and __fish_seen_subcommand_from silence" -f -a "add" -d 'Mute matching alerts for a while. At least one matcher'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and __fish_seen_subcommand_from silence" -f -a "list" -d 'The silences in force'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and __fish_seen_subcommand_from silence" -f -a "expire" -d 'End a silence now'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and __fish_seen_subcommand_from failover" -f -a "confirm" -d 'Confirm a failover the arbiter proposed (policy `notify`), to a node'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and __fish_seen_subcommand_from failover" -f -a "ack" -d 'Acknowledge an automatic failover or step-down: lifts its anti-flapping hold'
complete -c hapulse -n "__fish_hapulse_using_subcommand help; and __fish_seen_subcommand_from nodes" -f -a "unfence" -d 'Lift the fence kept on a node that has rejoined (its priority is lowered first)'
