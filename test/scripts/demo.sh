#!/bin/bash
# make demo: installs what is missing, builds and installs the extension,
# starts a private cluster (left running) and walks through the DogSchool.
source "$(dirname "$0")/common.sh"

ensure_packages
build_and_install
cluster_start demo
cluster_env demo
"$PG_BIN/dropdb" --if-exists dogschool 2>/dev/null
"$PG_BIN/createdb" dogschool
psql -X -q -v ON_ERROR_STOP=0 -d dogschool -f "$ROOT/test/demo/dogschool.sql"

cat <<MSG

The demo cluster is still running. Connect to it with:

    psql -h $PGHOST -p $PGPORT -U $PGUSER dogschool

Stop it with:  make stop
MSG
