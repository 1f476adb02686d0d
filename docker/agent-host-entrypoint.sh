#!/bin/sh
# A demo keepalived host: keepalived in the foreground of a background job, the agent in front.
# keepalived's configuration is mounted at /etc/keepalived/keepalived.conf; the agent's settings
# come from HAPULSE_AGENT_* variables.
set -eu
mkdir -p /run/keepalived /var/lib/hapulse-agent
keepalived --dont-fork --vrrp --log-console --no-syslog \
    --use-file=/etc/keepalived/keepalived.conf --pid=/run/keepalived.pid --vrrp_pid=/run/keepalived-vrrp.pid &
exec /usr/local/bin/hapulse-agent
