#!/bin/bash
# cluster.sh start|stop|status NAME: a private PostgreSQL cluster of the project.
source "$(dirname "$0")/common.sh"
case ${1:-} in
    start) cluster_start "$2" ;;
    stop) cluster_stop "$2"; log "cluster '$2' stopped" ;;
    status) cluster_running "$2" && echo running || echo stopped ;;
    *) echo "usage: $0 start|stop|status NAME" >&2; exit 2 ;;
esac
