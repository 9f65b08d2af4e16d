#!/bin/sh
# Run the C test driver under valgrind against a gearmand of its own (libsqlite3 queue,
# which epoch jobs need), or against the one on $GEARMAN_PORT if that is set.
#   run_driver.sh SO_PATH DRIVER_PATH
set -eu
so=$1
driver=$2
scratch=$(mktemp -d "${TMPDIR:-/tmp}/gearman_udf_test.XXXXXX")
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT INT TERM

port=${GEARMAN_PORT:-}
if [ -z "$port" ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    gearmand --listen 127.0.0.1 --port "$port" --queue-type libsqlite3 \
        --libsqlite3-db "$scratch/queue.db" --log-file "$scratch/gearmand.log" \
        --pid-file "$scratch/gearmand.pid" --daemon
    for _ in $(seq 50); do
        [ -s "$scratch/gearmand.pid" ] && gearadmin --host 127.0.0.1 --port "$port" --getpid \
            >/dev/null 2>&1 && break
        sleep 0.1
    done
    pid=$(cat "$scratch/gearmand.pid")
fi

# At exit valgrind has glibc free its pools; glibc frees getaddrinfo_a's request pool from
# an array it never fully initialised. That report is glibc's, not ours: suppress only it.
cat >"$scratch/glibc.supp" <<'EOF'
{
   glibc-getaddrinfo_a-pool-at-exit
   Memcheck:Cond
   fun:free
   fun:free_res
   fun:__libc_freeres
}
EOF
valgrind --quiet --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,possible \
    --suppressions="$scratch/glibc.supp" "$driver" "$so" "$port" "$scratch"
