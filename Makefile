# eventsourcing: a PostgreSQL extension (PGXS build), plus the project's
# two commands (`make demo`, `make test`) which set everything up themselves.

EXTENSION  = eventsourcing
MODULE_big = eventsourcing
OBJS       = src/eventsourcing.o src/catalog.o src/access.o src/ordering.o src/append.o src/read.o src/worker.o src/wakeup.o src/integrity.o src/follow.o src/replay.o src/codec.o src/keys.o src/dcb.o
# The proxy database's extension (README, *Scaling out*): its control file
# sits with its script in sql/, so it is installed as data, by name.
DATA       = sql/eventsourcing--0.1.0.sql sql/eventsourcing--0.2.0.sql sql/eventsourcing--0.1.0--0.2.0.sql \
             sql/eventsourcing_proxy.control sql/eventsourcing_proxy--0.2.0.sql
PG_CPPFLAGS = -I$(srcdir)/src -Wall -Wmissing-prototypes
SHLIB_LINK = -lz -lcrypto

# `make installcheck` (PGXS): the suites against an installed, running server
# (PGHOST, PGPORT, PGUSER) that preloads the library and has a master key
# (eventsourcing.key_command) for the encryption tests.  The TAP tests make
# their own clusters.  `make test` sets all of that up by itself.
# (the install scripts, sql/eventsourcing--* and sql/eventsourcing_proxy--*, are no tests)
REGRESS        = $(sort $(patsubst sql/%.sql,%,$(filter-out sql/eventsourcing--% sql/eventsourcing_proxy--%,$(wildcard sql/*.sql))))
ISOLATION      = $(sort $(patsubst test/isolation/specs/%.spec,%,$(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS = --inputdir=test/isolation
TAP_TESTS      = 1
PROVE_TESTS    = test/t/*.pl

# Debian's server dev package puts pg_config here; fall back to PATH.
PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && \
	echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(PGXS),)
include $(PGXS)
endif
# (after PGXS, which sets it) the TAP tests' own module
PROVE_FLAGS += -I test/t

.PHONY: deps demo test stop bench bench-field bench-size bench-partitions bench-dcb

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
	bash test/bench/field.sh
	bash test/bench/size.sh
	bash test/bench/python_recorders.sh
	bash test/bench/proxy.sh
	bash test/bench/dcb.sh

# The field's workload shapes, and costs against the size of the log.
bench-field:
	bash test/bench/field.sh

bench-size:
	bash test/bench/size.sh

# One application's costs against another's log size (partitioning, #15).
bench-partitions:
	bash test/bench/partitions.sh

# Conditional appends of tagged events (DCB) against es_append and the table lock.
bench-dcb:
	bash test/bench/dcb.sh

# PGXS does not track header dependencies.
$(OBJS): $(wildcard src/*.h)
