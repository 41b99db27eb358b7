#!/usr/bin/env bash
# Usage: ./run-bench.sh [seconds]      (default 15 seconds per target)
#
# Compares read-only pgbench throughput against a scratch PostgreSQL directly, through
# FastPgProxy and through PgBouncer (when installed), all in session pooling mode over TCP on
# 127.0.0.1, and reports how much CPU each proxy process spent per transaction.
#
# Everything it starts (PostgreSQL, proxies, temp files) is stopped and removed on exit, also
# on error or Ctrl-C. Exits 1 when FastPgProxy could not be benchmarked.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

seconds="${1:-15}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [seconds]   (a positive whole number of seconds per target, default 15)" >&2
    exit 2
fi

readonly clients=16 threads=2 scale=10
readonly host=127.0.0.1
readonly start_timeout=30

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
# The scratch server trusts everyone on 127.0.0.1; a stray password or service must not interfere.
unset PGPASSWORD PGSERVICE PGSERVICEFILE PGPASSFILE PGSSLMODE PGOPTIONS

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# Prints the last lines of a log file, indented, to stderr.
show_tail() { [ -s "$1" ] && tail -n "${2:-15}" "$1" | sed 's/^/    | /' >&2 || true; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# bounded SECONDS COMMAND...: runs COMMAND with a time limit. --foreground keeps it in our
# process group, so Ctrl-C reaches it.
bounded() {
    local rc=0
    timeout --foreground "$@" || rc=$?
    # timeout reports a child killed by SIGINT (SIGTERM) as exit status 130 (143) instead of
    # dying of the signal itself; bash would then assume the child handled Ctrl-C and carry
    # on, so stop here.
    case "$rc" in 130 | 143) exit "$rc" ;; esac
    return "$rc"
}

# PostgreSQL and PgBouncer refuse to run as root; run them as the postgres OS user then.
as_pg_prefix=()
if is_root; then as_pg_prefix=(runuser -u postgres --); fi

# as_pg SECONDS COMMAND...: bounded, as the postgres OS user when we are root, in $work.
as_pg() {
    local secs="$1"
    shift
    bounded "$secs" "${as_pg_prefix[@]}" env -C "$work" "$@"
}

# Directory holding initdb and postgres: pg_config --bindir first, then
# /usr/lib/postgresql/<version>/bin with the highest version first.
pg_bindir() {
    local dir candidates=()
    if command -v pg_config >/dev/null 2>&1; then
        candidates+=("$(pg_config --bindir 2>/dev/null || true)")
    fi
    if [ -d /usr/lib/postgresql ]; then
        while IFS= read -r dir; do
            candidates+=("/usr/lib/postgresql/$dir/bin")
        done < <(ls -1 /usr/lib/postgresql | sort -rV)
    fi
    for dir in "${candidates[@]}"; do
        if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_ctl" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 1
}

# A client program, preferably the one matching the server version.
pg_tool() {
    if [ -x "$bindir/$1" ]; then printf '%s\n' "$bindir/$1"; else command -v "$1"; fi
}

# ---------------------------------------------------------------------------------------------
# Ports. Picked below the kernel's ephemeral range (so outgoing connections cannot hold them)
# and checked against every local TCP port currently in /proc/net/tcp{,6}.
taken_ports=" "
port_in_use() {
    local hex
    hex="$(printf '%04X' "$1")"
    cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v suffix=":$hex" \
        'NR > 1 && substr($2, length($2) - 4) == suffix { found = 1 } END { exit !found }'
}

# free_port VAR: stores a free TCP port in VAR.
free_port() {
    local low high candidate try
    read -r low high < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || low=32768
    [ "$low" -gt 12000 ] || low=32768
    for try in $(seq 1 200); do
        candidate=$(( 10000 + (RANDOM * 32768 + RANDOM) % (low - 10000) ))
        if [[ "$taken_ports" != *" $candidate "* ]] && ! port_in_use "$candidate"; then
            taken_ports+="$candidate "
            printf -v "$1" '%s' "$candidate"
            return 0
        fi
    done
    die "no free TCP port found"
}

# ---------------------------------------------------------------------------------------------
# Processes.

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
    local pid="$1" deadline
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

# wait_until_answers PORT PID: polls with psql until "select 1" works on PORT, for at most
# $start_timeout seconds. Fails early when PID (if given) is gone.
wait_until_answers() {
    local port="$1" pid="${2:-}" deadline=$((SECONDS + start_timeout))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if PGCONNECT_TIMEOUT=3 bounded 10 "$psql" -X -q -h "$host" -p "$port" -U postgres -d postgres \
            -Atc 'select 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# Clock ticks (user + system) the process has used so far: fields 14 and 15 of
# /proc/PID/stat, counted after the ")" that closes the command name (which may hold spaces).
cpu_ticks() {
    local stat rest
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    rest="${stat##*) }"
    local -a f
    read -r -a f <<< "$rest"
    echo $(( f[11] + f[12] ))
}

work=""
pg_data=""
pg_started=false
proxy_pid=""
pgbouncer_pidfile=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    stop_pid "$proxy_pid"
    if [ -n "$pgbouncer_pidfile" ] && [ -s "$pgbouncer_pidfile" ]; then
        stop_pid "$(cat "$pgbouncer_pidfile")"
    fi
    if [ "$pg_started" = true ]; then
        # Plain timeout, in its own process group: a second Ctrl-C must not cut this short.
        timeout 60 "${as_pg_prefix[@]}" env -C "$work" "$bindir/pg_ctl" stop -D "$pg_data" -m fast -w -t 30 >/dev/null 2>&1 \
            || log "pg_ctl stop failed; PostgreSQL in $pg_data may still run"
    fi
    [ -n "$work" ] && rm -rf "$work"
    exit "$rc"
}

# ---------------------------------------------------------------------------------------------
# Targets.

build_fastpgproxy() {
    log "building FastPgProxy (dotnet publish -c Release -o .bench/bin)"
    if ! command -v dotnet >/dev/null 2>&1; then
        note[fastpgproxy]="dotnet not found, could not build"
        return 1
    fi
    if ! dotnet publish src/FastPgProxy/FastPgProxy.csproj -c Release -o .bench/bin \
        </dev/null >"$work/publish.log" 2>&1; then
        log "dotnet publish failed:"
        grep -E 'error|Error' "$work/publish.log" | sort -u | tail -n 15 | sed 's/^/    | /' >&2 || true
        note[fastpgproxy]="build failed"
        return 1
    fi
    if [ ! -x .bench/bin/fastpgproxy ]; then
        note[fastpgproxy]=".bench/bin/fastpgproxy missing after publish"
        return 1
    fi
}

start_postgres() {
    local dir="$work/pg"
    pg_data="$dir/data"
    mkdir -p "$dir"
    is_root && chown postgres: "$dir"
    free_port pg_port
    log "starting PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on port $pg_port"
    as_pg 120 "$bindir/initdb" -D "$pg_data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1 || { show_tail "$dir/initdb.log"; die "initdb failed"; }
    cat >>"$pg_data/postgresql.conf" <<EOF

# run-bench.sh
listen_addresses = '$host'
port = $pg_port
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
EOF
    pg_started=true
    as_pg 90 "$bindir/pg_ctl" start -D "$pg_data" -l "$dir/postgresql.log" -w -t 60 \
        >/dev/null 2>&1 || { show_tail "$dir/postgresql.log"; die "PostgreSQL did not start"; }

    log "initialising pgbench tables (scale $scale)"
    bounded 600 "$pgbench" -i -s "$scale" -q -h "$host" -p "$pg_port" -U postgres postgres \
        >"$work/pgbench-init.log" 2>&1 || { show_tail "$work/pgbench-init.log"; die "pgbench -i failed"; }
}

start_fastpgproxy() {
    local dir="$work/fastpgproxy"
    mkdir -p "$dir"
    free_port fastpgproxy_port
    cat >"$dir/fastpgproxy.ini" <<EOF
[databases]
* = host=$host port=$pg_port

[fastpgproxy]
listen_addr = $host
listen_port = $fastpgproxy_port
auth_type = trust
pool_mode = session
EOF
    log "starting FastPgProxy on port $fastpgproxy_port"
    .bench/bin/fastpgproxy --config "$dir/fastpgproxy.ini" </dev/null >"$dir/fastpgproxy.log" 2>&1 &
    proxy_pid=$!
    if ! wait_until_answers "$fastpgproxy_port" "$proxy_pid"; then
        if kill -0 "$proxy_pid" 2>/dev/null; then
            note[fastpgproxy]="did not answer on port $fastpgproxy_port within ${start_timeout}s"
        else
            local rc=0
            wait "$proxy_pid" || rc=$?
            note[fastpgproxy]="exited with status $rc before answering"
        fi
        log "FastPgProxy: ${note[fastpgproxy]}; its output:"
        show_tail "$dir/fastpgproxy.log"
        stop_pid "$proxy_pid"
        proxy_pid=""
        return 1
    fi
    pid[fastpgproxy]="$proxy_pid"
}

start_pgbouncer() {
    local dir="$work/pgbouncer" bouncer_pid
    mkdir -p "$dir"
    free_port pgbouncer_port
    pgbouncer_pidfile="$dir/pgbouncer.pid"
    printf '"postgres" ""\n' >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=$host port=$pg_port

[pgbouncer]
listen_addr = $host
listen_port = $pgbouncer_port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 20
logfile = $dir/pgbouncer.log
pidfile = $pgbouncer_pidfile
EOF
    is_root && chown -R postgres: "$dir"
    log "starting PgBouncer $("$pgbouncer" --version | awk 'NR == 1 {print $NF}') on port $pgbouncer_port"
    if ! as_pg 30 "$pgbouncer" -d -q "$dir/pgbouncer.ini" >"$dir/start.log" 2>&1; then
        show_tail "$dir/start.log"
        show_tail "$dir/pgbouncer.log"
        note[pgbouncer]="did not start"
        return 1
    fi
    # With -d it daemonizes; the pid file names the process to measure and to stop.
    if ! wait_until_answers "$pgbouncer_port" || ! bouncer_pid="$(cat "$pgbouncer_pidfile" 2>/dev/null)"; then
        show_tail "$dir/pgbouncer.log"
        note[pgbouncer]="did not answer on port $pgbouncer_port within ${start_timeout}s"
        return 1
    fi
    pid[pgbouncer]="$bouncer_pid"
}

# bench KEY PORT: one pgbench run against PORT; records tps, latency, transactions and, when
# pid[KEY] names a proxy process, its CPU time per transaction.
bench() {
    local key="$1" port="$2" out="$work/pgbench-$1.log" before="" after="" proc="${pid[$1]:-}"
    log "pgbench -S -c $clients -j $threads -T $seconds against ${label[$key]} (port $port)"
    if [ -n "$proc" ]; then before="$(cpu_ticks "$proc")" || before=""; fi
    if ! bounded $((seconds + 120)) "$pgbench" -S -c "$clients" -j "$threads" -T "$seconds" -n \
        -U postgres -h "$host" -p "$port" postgres >"$out" 2>&1; then
        show_tail "$out"
        note[$key]="pgbench failed"
        return 1
    fi
    if [ -n "$proc" ]; then after="$(cpu_ticks "$proc")" || after=""; fi

    tps[$key]="$(awk '/^tps = .*without initial connection time/ { print $3 }' "$out")"
    latency[$key]="$(awk '/^latency average = / { print $4 }' "$out")"
    txns[$key]="$(awk -F': *' '/^number of transactions actually processed:/ { split($2, n, "/"); print n[1] + 0 }' "$out")"
    if [ -z "${tps[$key]}" ] || [ -z "${txns[$key]}" ] || [ "${txns[$key]}" -eq 0 ]; then
        show_tail "$out"
        note[$key]="no transactions completed"
        return 1
    fi
    if [ -n "$before" ] && [ -n "$after" ]; then
        cpu_us[$key]="$(awk -v t="$((after - before))" -v hz="$clk_tck" -v n="${txns[$key]}" \
            'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
    fi
    state[$key]=ok
}

# run_target KEY: start (when the target needs starting) and benchmark, recording the outcome.
run_target() {
    local key="$1"
    if [ "${state[$key]}" != pending ]; then
        return 0
    fi
    state[$key]=failed
    if [ -n "${starter[$key]}" ] && ! "${starter[$key]}"; then
        return 0
    fi
    local port_var="${key}_port"
    bench "$key" "${!port_var}" || true
}

# ratio A B: A / B as "0.00x", or "-" when either is missing.
ratio() {
    if [ -n "$1" ] && [ -n "$2" ]; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
    else
        echo "-"
    fi
}

print_table() {
    local key fmt="%-20s | %10s | %14s | %17s | %13s | %16s\n"
    local direct_tps="" bouncer_tps=""
    [ "${state[direct]}" = ok ] && direct_tps="${tps[direct]}"
    [ "${state[pgbouncer]}" = ok ] && bouncer_tps="${tps[pgbouncer]}"
    echo
    echo "pgbench -S, $clients clients, $threads threads, ${seconds}s per target, scale $scale, session pooling, $(nproc) CPUs"
    # shellcheck disable=SC2059
    printf "$fmt" target tps "avg latency ms" "proxy CPU µs/txn" "tps vs direct" "tps vs pgbouncer"
    printf '%s\n' "---------------------+------------+----------------+-------------------+---------------+-----------------"
    for key in direct fastpgproxy pgbouncer; do
        case "${state[$key]}" in
            ok)
                # shellcheck disable=SC2059
                printf "$fmt" "${label[$key]}" "$(printf '%.0f' "${tps[$key]}")" "${latency[$key]}" \
                    "${cpu_us[$key]:--}" "$(ratio "${tps[$key]}" "$direct_tps")" \
                    "$(ratio "${tps[$key]}" "$bouncer_tps")"
                ;;
            *)
                # shellcheck disable=SC2059
                printf "$fmt" "${label[$key]}" "${state[$key]}" - - - -
                ;;
        esac
    done
    for key in direct fastpgproxy pgbouncer; do
        if [ -n "${note[$key]:-}" ]; then
            echo "  ${label[$key]}: ${state[$key]}: ${note[$key]}"
        fi
    done
}

# ---------------------------------------------------------------------------------------------

bindir="$(pg_bindir)" || die "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found; install them with: apt-get install postgresql"
pgbench="$(pg_tool pgbench)" || die "pgbench not found; install it with: apt-get install postgresql-contrib postgresql-client"
psql="$(pg_tool psql)" || die "psql not found; install it with: apt-get install postgresql-client"
if is_root; then
    id -u postgres >/dev/null 2>&1 || die "running as root, but there is no 'postgres' OS user to run PostgreSQL as"
    command -v runuser >/dev/null 2>&1 || die "running as root, but runuser is missing"
fi
clk_tck="$(getconf CLK_TCK)"

pgbouncer="$(command -v pgbouncer 2>/dev/null || true)"
if [ -z "$pgbouncer" ] && [ -x /usr/sbin/pgbouncer ]; then pgbouncer=/usr/sbin/pgbouncer; fi

declare -A label=([direct]="PostgreSQL (direct)" [fastpgproxy]="FastPgProxy" [pgbouncer]="PgBouncer")
declare -A starter=([direct]="" [fastpgproxy]=start_fastpgproxy [pgbouncer]=start_pgbouncer)
declare -A state=([direct]=pending [fastpgproxy]=pending [pgbouncer]=pending)
declare -A pid=() tps=() latency=() txns=() cpu_us=() note=()

if [ -z "$pgbouncer" ]; then
    log "note: pgbouncer not found (apt-get install pgbouncer); skipping that column"
    state[pgbouncer]=skipped
    note[pgbouncer]="pgbouncer not installed"
fi

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

work="$(mktemp -d "${TMPDIR:-/tmp}/fpp-bench.XXXXXX")"
# The postgres OS user must reach its own folders inside.
chmod 755 "$work"

if ! build_fastpgproxy; then
    state[fastpgproxy]=failed
fi
start_postgres
direct_port="$pg_port"

for target in direct fastpgproxy pgbouncer; do
    run_target "$target"
done

# FastPgProxy logs its managed allocations at shutdown: stop it now and read them, so the table can
# show whether relaying allocates per transaction (it should not: the total stays at start-up size).
alloc_line=""
if [ "${state[fastpgproxy]}" = ok ] && [ -n "$proxy_pid" ]; then
    stop_pid "$proxy_pid"
    proxy_pid=""
    allocated="$(sed -n 's/.* \([0-9][0-9]*\) bytes allocated since start.*/\1/p' "$work/fastpgproxy/fastpgproxy.log" | tail -n 1)"
    if [ -n "$allocated" ]; then
        alloc_line="$(awk -v a="$allocated" -v n="${txns[fastpgproxy]}" \
            'BEGIN { printf "FastPgProxy managed allocations, whole process life (start-up and logins included): %d bytes over %d transactions = %.1f bytes/txn", a, n, a / n }')"
    fi
fi

print_table
if [ -n "$alloc_line" ]; then
    echo "$alloc_line"
fi

[ "${state[fastpgproxy]}" = ok ]
