#!/bin/sh
# Run a command in a private network namespace that has only loopback, plus a second loopback address.
#
#   scripts/in_netns.sh .venv/bin/python -m pytest tests/browser
#
# Why: WebRTC's server side (aioice) never offers 127.0.0.1 as an ICE host candidate, so on a machine
# with no other interface a call hangs in "signalling". 127.0.0.2 on lo gives it a candidate that only
# this machine can reach. It also proves the command touches no network: there is no route out.
# Needs root (or unprivileged user namespaces: then it maps the caller to root inside a user namespace).
set -eu
if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARG...]" >&2
    exit 2
fi
PATH="$PATH:/usr/sbin:/sbin"
if [ "${_IN_NETNS_CHILD:-}" != 1 ]; then
    if [ "$(id -u)" = 0 ]; then
        exec env _IN_NETNS_CHILD=1 unshare --net -- "$0" "$@"
    fi
    exec env _IN_NETNS_CHILD=1 unshare --map-root-user --net -- "$0" "$@"
fi
ip link set lo up
ip addr add 127.0.0.2/8 dev lo
exec "$@"
