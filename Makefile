# The two commands a newcomer needs: `make demo` (the real thing, in a local sandbox) and
# `make test` (the whole suite against real servers). Both set up what is missing first.
VENV   := .venv
PY     := $(VENV)/bin/python
UDF_SO := udf/build/gearman_udf.so

# SERVER=mysql runs the demo and the sandbox on MySQL (in a container) instead of MariaDB:
# mysql is the newest line, mysql:9, mysql:8.4 and mysql:8.0 pick one.
SERVER ?= mariadb
ON_MYSQL := $(filter mysql mysql:%,$(SERVER))
MYSQL_LINE := $(if $(filter mysql:%,$(SERVER)),$(patsubst mysql:%,%,$(SERVER)),9)
# Runs a command with a Docker engine at hand (ours, started and stopped around it, if none runs).
WITH_DOCKER := scripts/docker-engine.sh

.PHONY: setup setup-mysql demo test lint udf udf-test install-udf bench chaos clean sandbox-up \
        sandbox-down

setup:
	@scripts/setup.sh

# The MySQL images, one per line (9: Debian sid's; 8.4, 8.0: Ubuntu LTS's), each a chroot
# imported into Docker: built once.
setup-mysql: setup
	@$(WITH_DOCKER) scripts/mysql-image.sh >/dev/null

udf: setup
	@$(MAKE) --no-print-directory -C udf

udf-test: udf
	@$(MAKE) --no-print-directory -C udf test

# A sandbox in a temporary directory, the example shop's triggers and handlers, sample orders
# written back; everything is stopped again at the end (scripts/demo.py says each step).
# KEEP=1 keeps its temporary directory (logs, data) afterwards; a failed demo always keeps it.
DEMO_KEEP := $(if $(KEEP),--keep)
demo: udf
ifneq ($(ON_MYSQL),)
	@$(WITH_DOCKER) sh -c 'scripts/mysql-image.sh $(MYSQL_LINE) >/dev/null && $(PY) scripts/demo.py --server $(SERVER) $(DEMO_KEEP)'
else
	@$(PY) scripts/demo.py $(DEMO_KEEP)
endif

# Every database test runs on MariaDB and the newest MySQL line; TEST_SERVERS=all (what .ci/run
# runs) adds MySQL 8.4 and 8.0, TEST_SERVERS=mariadb,mysql:8.0 picks servers (tests/conftest.py
# reads it). Only the MySQL images the run needs are built.
comma := ,
TEST_SERVER_LIST := $(subst $(comma), ,$(TEST_SERVERS))
TEST_MYSQL := $(patsubst mysql:%,%,$(patsubst mysql,mysql:9,$(filter mysql mysql:%,$(TEST_SERVER_LIST))))
TEST_MYSQL_LINES := $(if $(filter all,$(TEST_SERVER_LIST)),9 8.4 8.0,$(if $(TEST_SERVER_LIST),$(TEST_MYSQL),9))
# In parallel (pytest-xdist): -n auto is a worker per server plus one (tests/conftest.py), and
# --dist loadgroup keeps each server's tests on the worker that runs its sandbox. PYTEST_ARGS
# may set either itself: PYTEST_ARGS=-n0 runs in one process (for -s, or a debugger).
TEST_PARALLEL := $(if $(filter -n% --numprocesses% %no:xdist,$(PYTEST_ARGS)),,-n auto) \
                 $(if $(filter --dist% %no:xdist,$(PYTEST_ARGS)),,--dist loadgroup)
test: setup udf
	$(WITH_DOCKER) sh -c '$(if $(strip $(TEST_MYSQL_LINES)),scripts/mysql-image.sh $(TEST_MYSQL_LINES) >/dev/null && )$(PY) -m pytest $(strip $(TEST_PARALLEL)) $(PYTEST_ARGS)'

lint: setup
	$(PY) -m mypy --strict
	$(PY) -m ruff check workerhost tests bench scripts

# For a real server: builds the library, copies it into @@plugin_dir and creates the functions.
# Needs only a C compiler, the server's headers and its client: no developer setup (no venv,
# no packages installed). Needs root on the host (to write plugin_dir) and INSERT on mysql.func
# (e.g. the root account). MYSQL="mariadb -uroot" by default; mysqld must have
# GEARMAN_UDF_CONFIG in its environment (or use the default /etc/mysql/gearman_udf.conf).
# From a wheel, without a checkout: `workerhost udf install -c FILE` does the same and writes
# gearman_udf.conf from the file's gearman.servers.
MYSQL ?= mariadb -uroot
install-udf:
	@$(MAKE) --no-print-directory -C udf GEARMAN_CFLAGS= GEARMAN_LIBS= build/gearman_udf.so
	@plugin_dir=$$($(MYSQL) -N -B -e 'SELECT @@plugin_dir'); \
	  test -n "$$plugin_dir" || { echo "install-udf: cannot read @@plugin_dir via: $(MYSQL)"; exit 1; }; \
	  install -m 0755 $(UDF_SO) "$$plugin_dir/gearman_udf.so.new" && \
	  mv -f "$$plugin_dir/gearman_udf.so.new" "$$plugin_dir/gearman_udf.so" && \
	  $(MYSQL) < sql/install.sql && echo "install-udf: installed into $$plugin_dir"

# On MySQL the sandbox's mysqld runs in a container: it needs a Docker engine that stays up
# (dockerd, or `systemctl start docker`), so this target does not start one for you.
sandbox-up: udf
ifneq ($(ON_MYSQL),)
	$(VENV)/bin/workerhost sandbox up --dir .sandbox --server $(SERVER) --install-udf udf
else
	$(VENV)/bin/workerhost sandbox up --dir .sandbox --install-udf $(UDF_SO)
endif

sandbox-down: setup
	$(VENV)/bin/workerhost sandbox down --dir .sandbox

# Rows through random SIGKILLs of gearmand, workers, the relay and the host, and a database
# restart; prints lost and applied-twice counts per delivery (both must be 0), and the rows
# shipped more than once. CHAOS_ARGS="--mode two-gearmand": two gearmand servers, a 300ms
# lease and stalled (SIGSTOPped) workers, so rows are shipped again to the other server.
# SERVER=mysql:8.0 (or CHAOS_ARGS="--server mysql:8.0"), CHAOS_ARGS="--rows 20000 --seconds 40",
# "--seed N" to repeat a run.
chaos: udf
ifneq ($(ON_MYSQL),)
	@$(WITH_DOCKER) sh -c 'scripts/mysql-image.sh $(MYSQL_LINE) >/dev/null && $(PY) scripts/chaos.py --server $(SERVER) $(CHAOS_ARGS)'
else
	@$(PY) scripts/chaos.py $(CHAOS_ARGS)
endif

# Every figure beside its baseline, measured in the same run (never part of `make test`).
# BENCH_ARGS=--quick for a sanity check in under a minute. BENCH_ARGS=--peers: this project's
# deliveries beside a polling outbox, a binlog CDC reader and Celery with Redis (the extra
# `bench` installs their libraries, and Debian's redis-server comes as root; a peer that
# cannot run is skipped with the reason); add "--stack mysql:8.4" for the second stack,
# MySQL 8.4 with client shapes of its own.
BENCH_STACK := $(filter mysql:%,$(BENCH_ARGS))
bench: udf
ifneq ($(filter --peers,$(BENCH_ARGS)),)
	@$(PY) -c 'import pymysqlreplication, celery, redis' 2>/dev/null \
	  || $(PY) -m pip install -q -e '.[bench]' \
	  || echo "bench: could not install the extra bench; its peers will be skipped"
	@command -v redis-server >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	       --no-install-recommends redis-server >/dev/null; } \
	  || echo "bench: redis-server is missing (as root: apt-get install redis-server)"
endif
ifneq ($(BENCH_STACK),)
	$(WITH_DOCKER) sh -c 'scripts/mysql-image.sh $(patsubst mysql:%,%,$(BENCH_STACK)) >/dev/null && $(PY) bench/run.py $(BENCH_ARGS)'
else
	$(PY) bench/run.py $(BENCH_ARGS)
endif

clean:
	rm -rf build udf/build .pytest_cache .mypy_cache .ruff_cache
