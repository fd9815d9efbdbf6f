# eventsourcing: a PostgreSQL extension (PGXS build), plus the project's
# two commands (`make demo`, `make test`) which set everything up themselves.

EXTENSION  = eventsourcing
MODULE_big = eventsourcing
OBJS       = src/eventsourcing.o src/catalog.o src/access.o src/ordering.o src/append.o src/read.o src/worker.o src/wakeup.o src/integrity.o src/follow.o src/replay.o src/codec.o src/keys.o
DATA       = sql/eventsourcing--0.1.0.sql sql/eventsourcing--0.2.0.sql sql/eventsourcing--0.1.0--0.2.0.sql
PG_CPPFLAGS = -I$(srcdir)/src -Wall -Wmissing-prototypes
SHLIB_LINK = -lz -lcrypto

# Debian's server dev package puts pg_config here; fall back to PATH.
PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && \
	echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
endif

.PHONY: deps demo test stop bench

# Installs missing Debian packages (as root).
deps:
	bash test/scripts/deps.sh

# Builds, installs, starts a private cluster and walks through the DogSchool.
demo:
	bash test/scripts/demo.sh

# Builds, installs and runs the whole suite on a throwaway cluster.
test:
	bash test/scripts/test.sh

# Stops the demo cluster.
stop:
	bash test/scripts/cluster.sh stop demo

# The benchmark harness (not part of the suite).
bench:
	bash test/bench/run.sh
	bash test/bench/notify_bench.sh
	bash test/bench/crypto_bench.sh

# PGXS does not track header dependencies.
$(OBJS): $(wildcard src/*.h)
