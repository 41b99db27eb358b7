#!/usr/bin/env bash
# Usage: [PGBOUNCER=/path/to/pgbouncer] ./run-bench.sh [seconds] [scenario...]
#
# Compares read-only pgbench throughput and latency against a scratch PostgreSQL directly, through
# FastPgProxy and through PgBouncer (when installed), over TCP on 127.0.0.1, and reports how much
# CPU each proxy process spent per transaction. Every pgbench run lasts `seconds` (default 15).
# The cancel and cancel-lb scenarios measure query cancel latency instead.
#
# Scenarios, always run in this order; the default is all of them but scale. All but cancel and cancel-lb use
# pgbench -S
# (one SELECT by primary key per transaction) on scale 10:
#
#   session    -S -c 16 -j 2, session pooling
#   tx16       -S -c 16 -j 2, transaction pooling (one client per backend)
#   tx64       -S -c 64 -j 2, transaction pooling (4 clients per backend)
#   tx256      -S -c 256 -j 2, transaction pooling (16 clients per backend)
#   extended   -S -M extended -c 16 -j 2, transaction pooling (unnamed statements)
#   prepared   -S -M prepared -c 16 -j 2, transaction pooling (named prepared statements, which
#              PgBouncer supports in transaction mode only from 1.21 on)
#   connect    -S -C -c 16 -j 2, transaction pooling (a new connection per transaction)
#   cancel     tools/CancelLatency: NpgsqlCommand.Cancel() of SELECT pg_sleep(30) 50 ms after it
#              started, timed until the query fails with 57014; transaction pooling. 200 cancels
#              per target, or 15 per second of `seconds` (at least 50) when that is below 14
#   cancel-lb  as cancel, through HAProxy (mode tcp, balance roundrobin) in front of 3 FastPgProxy
#              instances (peer_id 1..3, the same [peers] section), so that about 2 cancels in 3 land
#              on an instance that forwards them to the owner; against one FastPgProxy directly.
#              Skipped, with a message, when haproxy is not installed (HAPROXY, PATH, /usr/sbin)
#   tls        as tx16 over TLS: pgbench with sslmode=require to every target, and both proxies
#              with TLS to PostgreSQL too (server_tls_sslmode = require)
#   tls-connect  as connect over TLS, the same way: a TLS handshake per transaction between
#              pgbench and its target (the proxies keep their TLS backends in the pool)
#   scale      -S -c 64 -j 4, transaction pooling: FastPgProxy with 1, 2 and 4 loops (SCALE_LOOPS),
#              a fresh instance for each loop count, next to PgBouncer (one thread) and direct, in one
#              table. Not run by default (name it): on a machine with few cores it cannot show
#              scaling, and it adds a run per loop count; see README.md for placement on 8+ cores
#
# TLS. The scenarios above tls are plain on every leg: PostgreSQL runs with ssl = off until the first
# TLS scenario, and both proxies are configured with client_tls_sslmode = disable and
# server_tls_sslmode = disable, explicitly (PgBouncer's default server_tls_sslmode is prefer, which
# would use TLS to PostgreSQL as soon as it offers it). pgbench keeps libpq's default sslmode there
# (prefer), so it asks for TLS and is refused, as before TLS existed. For tls and tls-connect the
# script makes a self-signed RSA 2048 certificate with openssl in its temp folder, turns on ssl in
# PostgreSQL with it (ALTER SYSTEM and a reload), and starts a second pair of transaction-mode
# proxies with client_tls_sslmode = require on the same certificate and server_tls_sslmode =
# require (no certificate checks, as sslmode=require). The TLS protocol and cipher are each side's
# default.
#
# Both proxies get the same pool settings: in session mode default_pool_size = 20 and
# max_client_conn = 200, in transaction mode default_pool_size = 16 and max_client_conn = 1000.
# Each proxy is started once per pool mode (and once more for the TLS scenarios) and serves every
# scenario of that mode. A pgbench run that fails shows as "failed" with pgbench's error; the
# script carries on with the next one. Under each table, FastPgProxy's managed allocations during
# the run (SHOW MEMORY's allocated_bytes before and after) per transaction.
#
# PgBouncer: the executable PGBOUNCER names when set (a path or a command name), else pgbouncer on
# PATH, else /usr/sbin/pgbouncer; the script prints which one and its version.
#
# Under each pgbench table, per proxy: its user and system CPU per transaction (the two parts of the
# table's CPU column, /proc/PID/stat) and its context switches per transaction (voluntary and
# nonvoluntary, summed over /proc/PID/task/*/status, read before and after the run).
#
# Options, from the environment; unset or empty leaves the run as without them:
#
#   LOOPS=N          loop_threads = N in every FastPgProxy but the scale scenario's (unset: the
#                    proxy's default, the processor count it may run on, at most 4)
#   SOCKET_THREADS=N socket_threads = N in every FastPgProxy (unset: the proxy's default, half the
#                    loops, at least one)
#   SCALE_LOOPS="1 2 4"  the scale scenario's loop counts, one fresh FastPgProxy each
#   PG_CPUS=LIST, PGBENCH_CPUS=LIST, PROXY_CPUS=LIST
#                    taskset -c LIST (e.g. 0-3 or 4,5) on the start of PostgreSQL (pg_ctl start: the
#                    postmaster and every backend inherit it), of pgbench and CancelLatency, and of
#                    FastPgProxy and PgBouncer (not HAProxy). Unset: no pinning
#   WARMUP=S         before each measured pgbench run against a proxy (FastPgProxy and PgBouncer
#                    alike), an unmeasured run of the same command for S seconds (default 3), so that
#                    the table shows the steady state and not FastPgProxy's JIT compiling the paths
#                    the scenario takes for the first time. WARMUP=0 measures them cold
#   STRACE=1         after each pgbench scenario's runs, one more run of STRACE_SECONDS (default 3)
#                    per proxy with strace -c -f attached to the proxy process (all its threads),
#                    detached when pgbench is done; under the table, system calls per transaction of
#                    that run: recvfrom (and the share that failed, EAGAIN), sendto, epoll_wait
#                    (epoll_pwait included) and all. strace slows the proxy down: its tps and CPU are
#                    not in the table. Skipped, with a message, when strace is not installed
#   PERF_MAP=1       FastPgProxy (only it, not the build) runs with DOTNET_PerfMapEnabled=1 and
#                    DOTNET_EnableWriteXorExecute=0, so that perf record -g -p PID (the PID is logged
#                    when it answers) resolves JIT-compiled frames; see perf/README.md
#
# The header above the tables prints the loop settings, the placement and whether strace ran.
#
# Everything it starts (PostgreSQL, proxies, HAProxy, temp files) is stopped and removed on exit, also
# on error or Ctrl-C. Exits 1 when FastPgProxy could not be benchmarked in every scenario.
set -euo pipefail

# PGBOUNCER and HAPROXY are resolved before the cd below, so that a relative path is the caller's.
pgbouncer=""
haproxy=""
if [ -n "${HAPROXY:-}" ]; then
    haproxy="$(command -v -- "$HAPROXY")" && haproxy="$(realpath -- "$haproxy")" \
        || { printf '[bench] error: HAPROXY=%s is not an executable\n' "$HAPROXY" >&2; exit 1; }
fi
if [ -n "${PGBOUNCER:-}" ]; then
    pgbouncer="$(command -v -- "$PGBOUNCER")" && pgbouncer="$(realpath -- "$pgbouncer")" \
        || { printf '[bench] error: PGBOUNCER=%s is not an executable\n' "$PGBOUNCER" >&2; exit 1; }
fi

cd "$(dirname "${BASH_SOURCE[0]}")"

readonly scale=10
readonly host=127.0.0.1
readonly start_timeout=30

# Scenarios: pool mode, clients, pgbench threads, pgbench flags, and a note printed under the table.
# TLS scenarios come last: PostgreSQL turns ssl on before the first of them and keeps it on.
readonly all_scenarios=(session tx16 tx64 tx256 extended prepared connect scale cancel cancel-lb tls tls-connect)
# Run only when named.
readonly named_only_scenarios=" scale "
declare -A scen_mode=() scen_clients=() scen_threads=() scen_flags=() scen_note=() scen_tls=()

# define_scenario NAME MODE CLIENTS THREADS FLAGS [NOTE]
define_scenario() {
    scen_mode[$1]="$2"
    scen_clients[$1]="$3"
    scen_threads[$1]="$4"
    scen_flags[$1]="$5"
    scen_note[$1]="${6:-}"
    scen_tls[$1]=""
}
define_scenario session  session     16  2 "-S"
define_scenario tx16     transaction 16  2 "-S"
define_scenario tx64     transaction 64  2 "-S"
define_scenario tx256    transaction 256 2 "-S"
define_scenario extended transaction 16  2 "-S -M extended"
define_scenario prepared transaction 16  2 "-S -M prepared"
define_scenario connect  transaction 16  2 "-S -C" \
    "pgbench -C connects one client at a time per thread, holding up that thread's other clients; avg latency includes connecting, p99 (per-transaction log) starts after the client's own connection"
# A fresh FastPgProxy per loop count of SCALE_LOOPS; PgBouncer is the transaction-mode one. The note
# (socket threads per loop count) is written once the options are read.
define_scenario scale    transaction 64  4 "-S"
# Not pgbench: runs after the other plain scenarios, on the transaction-mode proxies they left running.
define_scenario cancel   transaction 1   1 ""
readonly cancel_delay_ms=50
# Against the cancel scenario's transaction-mode FastPgProxy, and HAProxy in front of lb_instances more.
define_scenario cancel-lb transaction 1  1 "" \
    "HAProxy (mode tcp, balance roundrobin) in front of 3 FastPgProxy instances with peer_id 1..3 and the same [peers]; each cancel is a new connection, so about 2 in 3 reach an instance that forwards it to the owner"
readonly lb_instances=3
define_scenario tls      transaction 16  2 "-S" \
    "TLS on every leg: pgbench sslmode=require to each target; both proxies also TLS to PostgreSQL (server_tls_sslmode = require)"
define_scenario tls-connect transaction 16 2 "-S -C" \
    "TLS on every leg, a handshake per connection: pgbench sslmode=require to each target; both proxies also TLS to PostgreSQL (server_tls_sslmode = require, backends are pooled); avg latency includes connecting"
scen_tls[tls]=1
scen_tls[tls-connect]=1

# is_cancel SCENARIO: whether SCENARIO runs CancelLatency instead of pgbench.
is_cancel() { [ "$1" = cancel ] || [ "$1" = cancel-lb ]; }

# scen_targets SCENARIO: the targets of SCENARIO, in table order.
scen_targets() {
    local n
    case "$1" in
        cancel-lb) echo "fastpgproxy lb" ;;
        scale)
            printf 'direct'
            for n in $scale_loops; do printf ' fastpgproxy-%s' "$n"; done
            printf ' pgbouncer\n'
            ;;
        *) echo "direct fastpgproxy pgbouncer" ;;
    esac
}

# fastpgproxy_targets SCENARIO: the FastPgProxy targets of SCENARIO (scale has one per loop count).
fastpgproxy_targets() {
    local key
    for key in $(scen_targets "$1"); do
        case "$key" in fastpgproxy | fastpgproxy-*) echo "$key" ;; esac
    done
}

# proxy_set SCENARIO: the proxy pair a scenario runs on, its pool mode with "-tls" for the TLS ones.
proxy_set() { printf '%s%s\n' "${scen_mode[$1]}" "${scen_tls[$1]:+-tls}"; }

# Pool settings, the same for both proxies.
declare -A pool_size=([session]=20 [transaction]=16) max_clients=([session]=200 [transaction]=1000)
# PostgreSQL must take the direct runs' clients, plus the backends of the proxies still running.
readonly pg_max_connections=320

# usage [STATUS]: prints the usage (to stderr unless STATUS is 0) and exits with STATUS, default 2.
usage() {
    local status="${1:-2}"
    {
        echo "usage: $0 [seconds] [scenario...]"
        echo "  seconds: per pgbench run, a positive whole number (default 15)"
        echo "  scenarios: ${all_scenarios[*]} (default all but${named_only_scenarios% }; see the top of $0)"
        echo "  environment: PGBOUNCER, HAPROXY, LOOPS, SOCKET_THREADS, SCALE_LOOPS, PG_CPUS, PGBENCH_CPUS,"
        echo "    PROXY_CPUS, WARMUP, STRACE=1, STRACE_SECONDS, PERF_MAP=1 (see the top of $0)"
    } >&"$(( status == 0 ? 1 : 2 ))"
    exit "$status"
}

seconds=15
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
    [[ "$1" =~ ^[1-9][0-9]*$ ]] || usage
    seconds="$1"
    shift
fi
declare -A wanted=()
for arg in "$@"; do
    case "$arg" in -h | --help) usage 0 ;; esac
    [ -n "${scen_mode[$arg]:-}" ] || { echo "unknown scenario: $arg" >&2; usage; }
    wanted[$arg]=1
done
# The order is fixed, so each proxy starts once per pool mode (and TLS) whatever order they were named in.
scenarios=()
for s in "${all_scenarios[@]}"; do
    if { [ $# -eq 0 ] && [[ "$named_only_scenarios" != *" $s "* ]]; } || [ -n "${wanted[$s]:-}" ]; then
        scenarios+=("$s")
    fi
done

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
# The scratch server trusts everyone on 127.0.0.1; a stray password or service must not interfere.
unset PGPASSWORD PGSERVICE PGSERVICEFILE PGPASSFILE PGSSLMODE PGOPTIONS

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# Options from the environment (see the top), checked before anything starts.
positive_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
loops="${LOOPS:-}"
[ -z "$loops" ] || positive_int "$loops" || die "LOOPS=$loops: expected a positive whole number (loop_threads)"
socket_threads="${SOCKET_THREADS:-}"
[ -z "$socket_threads" ] || positive_int "$socket_threads" \
    || die "SOCKET_THREADS=$socket_threads: expected a positive whole number (socket_threads)"
scale_loops="${SCALE_LOOPS:-1 2 4}"
for n in $scale_loops; do
    positive_int "$n" || die "SCALE_LOOPS=$scale_loops: expected positive whole numbers, e.g. \"1 2 4\""
done
[ -n "${scale_loops// /}" ] || die "SCALE_LOOPS is blank"
# socket_threads as FastPgProxy takes it: SOCKET_THREADS, else half the loops, at least one.
scale_sockets=""
for n in $scale_loops; do
    scale_sockets+="${scale_sockets:+, }${socket_threads:-$(( n / 2 > 1 ? n / 2 : 1 ))}"
done
scale_sockets_why="the default: half the loops, at least 1"
[ -z "$socket_threads" ] || scale_sockets_why="SOCKET_THREADS"
scen_note[scale]="a fresh FastPgProxy per loop count (loop_threads ${scale_loops// /, })"
scen_note[scale]+=" with socket_threads ${scale_sockets} (${scale_sockets_why}); PgBouncer runs on one thread"
warmup="${WARMUP:-3}"
[[ "$warmup" =~ ^[0-9]+$ ]] || die "WARMUP=$warmup: expected a whole number of seconds (0: no warm-up)"
strace=""
strace_seconds="${STRACE_SECONDS:-3}"
positive_int "$strace_seconds" || die "STRACE_SECONDS=$strace_seconds: expected a positive whole number"
strace_skipped=""
case "${STRACE:-}" in
    "" | 0) ;;
    1)
        strace="$(command -v strace 2>/dev/null || true)"
        if [ -z "$strace" ]; then
            strace_skipped="STRACE=1: skipped, strace not installed (apt-get install strace)"
            log "note: $strace_skipped"
        fi
        ;;
    *) die "STRACE=${STRACE}: expected 1 (or 0, or unset)" ;;
esac
# taskset -c prefixes for the three kinds of process; empty: not pinned.
pin_pg=()
pin_pgbench=()
pin_proxy=()
# pin_to ARRAY VARIABLE: ARRAY becomes "taskset -c LIST" when the environment VARIABLE holds LIST.
pin_to() {
    local -n pin_to_out="$1"
    local list="${!2:-}" taskset
    [ -n "$list" ] || return 0
    taskset="$(command -v taskset 2>/dev/null)" || die "$2=$list needs taskset (apt-get install util-linux)"
    [[ "$list" =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || die "$2=$list: expected a CPU list such as 0-3 or 4,5"
    "$taskset" -c "$list" true 2>/dev/null || die "$2=$list: taskset -c $list fails here (CPUs 0-$(( $(nproc --all) - 1 )))"
    # shellcheck disable=SC2034 # a reference to the caller's array
    pin_to_out=("$taskset" -c "$list")
}
pin_to pin_pg PG_CPUS
pin_to pin_pgbench PGBENCH_CPUS
pin_to pin_proxy PROXY_CPUS
# FastPgProxy's extra environment; PERF_MAP=1 writes /tmp/perf-PID.map for perf.
fpp_env=()
case "${PERF_MAP:-}" in
    "" | 0) ;;
    1) fpp_env=(env DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0) ;;
    *) die "PERF_MAP=${PERF_MAP}: expected 1 (or 0, or unset)" ;;
esac

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

# Clock ticks the process has used so far, user and system: fields 14 and 15 of /proc/PID/stat
# (every thread, ended ones included), counted after the ")" that closes the command name (which
# may hold spaces).
cpu_ticks() {
    local stat rest
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    rest="${stat##*) }"
    local -a f
    read -r -a f <<< "$rest"
    echo "${f[11]} ${f[12]}"
}

# ctx_switches PID: one line per thread of PID so far: thread id, voluntary and nonvoluntary context
# switches (/proc/PID/task/TID/status; /proc/PID/status counts the main thread only).
ctx_switches() {
    local status tid
    [ -d "/proc/$1/task" ] || return 1
    for status in /proc/"$1"/task/*/status; do
        tid="${status%/status}"
        tid="${tid##*/}"
        # A thread that ends between the glob and the read prints nothing.
        awk -v tid="$tid" '/^voluntary_ctxt_switches:/ { v = $2 } /^nonvoluntary_ctxt_switches:/ { n = $2 }
            END { if (v != "") print tid, v, n }' "$status" 2>/dev/null || true
    done
}

# ctx_delta BEFORE AFTER: the voluntary and nonvoluntary context switches between two ctx_switches
# readings, and the number of threads in AFTER. A thread started in between counts from zero; one
# that ended in between is missed (the kernel keeps no total of the ended threads' switches).
ctx_delta() {
    [ -n "$1" ] && [ -n "$2" ] || return 1
    awk 'NR == FNR { v[$1] = $2; n[$1] = $3; next } { dv += $2 - v[$1]; dn += $3 - n[$1]; t++ }
        END { print dv + 0, dn + 0, t + 0 }' <(printf '%s\n' "$1") <(printf '%s\n' "$2")
}

work=""
pg_data=""
pg_started=false
# The strace process of a STRACE=1 run while it is attached.
strace_pid=""

# Proxies, keyed "target/set" (set: the pool mode, with "-tls" for the TLS scenarios' pair): state
# (pending, ok, failed, skipped, stopped), the reason when not ok, process id while running (the
# one to measure and to stop), and port.
declare -A proxy_state=() proxy_note=() proxy_pid=() proxy_port=()
# The cancel-lb scenario's FastPgProxy instances and HAProxy while they run, their ports and HAProxy's
# listen port.
lb_pids=()
lb_ports=()
lb_port=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local id pidfile
    stop_strace
    for id in "${!proxy_pid[@]}"; do
        stop_pid "${proxy_pid[$id]}"
    done
    for id in "${lb_pids[@]}"; do
        stop_pid "$id"
    done
    # A PgBouncer that daemonized but never answered is known only by its pid file.
    if [ -n "$work" ]; then
        for pidfile in "$work"/pgbouncer-*/pgbouncer.pid; do
            [ -s "$pidfile" ] && stop_pid "$(cat "$pidfile")"
        done
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

# build_cancel_latency: publishes tools/CancelLatency; on failure prints the errors and returns 1.
build_cancel_latency() {
    log "building CancelLatency (dotnet publish -c Release -o .bench/cancel-latency)"
    if ! command -v dotnet >/dev/null 2>&1; then
        cancel_build_note="dotnet not found, could not build"
        return 1
    fi
    if ! dotnet publish tools/CancelLatency/CancelLatency.csproj -c Release -o .bench/cancel-latency \
        </dev/null >"$work/publish-cancel-latency.log" 2>&1; then
        log "dotnet publish of CancelLatency failed:"
        grep -E 'error|Error' "$work/publish-cancel-latency.log" | sort -u | tail -n 15 | sed 's/^/    | /' >&2 || true
        cancel_build_note="CancelLatency build failed"
        return 1
    fi
    if [ ! -x .bench/cancel-latency/CancelLatency ]; then
        cancel_build_note=".bench/cancel-latency/CancelLatency missing after publish"
        return 1
    fi
}

# build_fastpgproxy: publishes FastPgProxy; on failure prints the errors and returns 1.
build_fastpgproxy() {
    log "building FastPgProxy (dotnet publish -c Release -o .bench/bin)"
    if ! command -v dotnet >/dev/null 2>&1; then
        build_note="dotnet not found, could not build"
        return 1
    fi
    if ! dotnet publish src/FastPgProxy/FastPgProxy.csproj -c Release -o .bench/bin \
        </dev/null >"$work/publish.log" 2>&1; then
        log "dotnet publish failed:"
        grep -E 'error|Error' "$work/publish.log" | sort -u | tail -n 15 | sed 's/^/    | /' >&2 || true
        build_note="build failed"
        return 1
    fi
    if [ ! -x .bench/bin/fastpgproxy ]; then
        build_note=".bench/bin/fastpgproxy missing after publish"
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
    cat >>"$pg_data/postgresql.conf" <<CONF

# run-bench.sh
listen_addresses = '$host'
port = $pg_port
unix_socket_directories = '$dir'
max_connections = $pg_max_connections
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
CONF
    pg_started=true
    as_pg 90 "${pin_pg[@]}" "$bindir/pg_ctl" start -D "$pg_data" -l "$dir/postgresql.log" -w -t 60 \
        >/dev/null 2>&1 || { show_tail "$dir/postgresql.log"; die "PostgreSQL did not start"; }

    log "initialising pgbench tables (scale $scale)"
    bounded 600 "${pin_pgbench[@]}" "$pgbench" -i -s "$scale" -q -h "$host" -p "$pg_port" -U postgres postgres \
        >"$work/pgbench-init.log" 2>&1 || { show_tail "$work/pgbench-init.log"; die "pgbench -i failed"; }
}

# enable_tls: makes a self-signed certificate and key in $tls_dir (for PostgreSQL and both proxies)
# and turns ssl on in the running PostgreSQL. Sets tls_state to "on", or to why not and returns 1.
enable_tls() {
    tls_state="could not turn on TLS"
    tls_dir="$work/tls"
    mkdir -p "$tls_dir"
    if ! command -v openssl >/dev/null 2>&1; then
        tls_state="openssl not found, could not make a certificate"
        log "$tls_state"
        return 1
    fi
    log "making a self-signed certificate (RSA 2048) and turning ssl on in PostgreSQL"
    if ! bounded 60 openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$host" \
        -keyout "$tls_dir/server.key" -out "$tls_dir/server.crt" >"$tls_dir/openssl.log" 2>&1; then
        show_tail "$tls_dir/openssl.log"
        tls_state="openssl req failed"
        return 1
    fi
    # PostgreSQL takes a key only its owner can read; PgBouncer runs as that owner too.
    chmod 600 "$tls_dir/server.key"
    is_root && chown -R postgres: "$tls_dir"
    # ssl is reloadable (PostgreSQL 10 on); each -c is its own transaction, as ALTER SYSTEM needs.
    if ! PGCONNECT_TIMEOUT=5 bounded 30 "$psql" -X -q -h "$host" -p "$pg_port" -U postgres -d postgres \
        -c "ALTER SYSTEM SET ssl_cert_file = '$tls_dir/server.crt'" \
        -c "ALTER SYSTEM SET ssl_key_file = '$tls_dir/server.key'" \
        -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >"$tls_dir/enable.log" 2>&1; then
        show_tail "$tls_dir/enable.log"
        tls_state="ALTER SYSTEM SET ssl = on failed"
        return 1
    fi
    local deadline=$((SECONDS + start_timeout)) answer=""
    while [ "$SECONDS" -lt "$deadline" ]; do
        answer="$(PGSSLMODE=require PGCONNECT_TIMEOUT=3 bounded 10 "$psql" -X -q -h "$host" -p "$pg_port" -U postgres \
            -d postgres -Atc "SELECT version || ' ' || cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()" 2>/dev/null)" \
            && [ -n "$answer" ] && break
        answer=""
        sleep 0.2
    done
    if [ -z "$answer" ]; then
        show_tail "$pg_data/../postgresql.log"
        tls_state="PostgreSQL did not accept sslmode=require within ${start_timeout}s after the reload"
        return 1
    fi
    log "PostgreSQL speaks TLS: $answer"
    tls_state=on
}

# proxy_ini TARGET SET PORT: the config file both proxies understand, with the shared pool
# settings of SET's pool mode and its TLS settings, on stdout.
proxy_ini() {
    local mode="${2%-tls}"
    cat <<INI
[databases]
* = host=$host port=$pg_port

[$1]
listen_addr = $host
listen_port = $3
auth_type = trust
pool_mode = $mode
default_pool_size = ${pool_size[$mode]}
max_client_conn = ${max_clients[$mode]}
INI
    if [ "$2" = "$mode" ]; then
        # Plain on both legs, whatever the defaults (PgBouncer's server_tls_sslmode is prefer).
        printf 'client_tls_sslmode = disable\nserver_tls_sslmode = disable\n'
    else
        cat <<INI
client_tls_sslmode = require
client_tls_cert_file = $tls_dir/server.crt
client_tls_key_file = $tls_dir/server.key
server_tls_sslmode = require
INI
    fi
}

# set_label SET: "transaction pooling", or "transaction pooling, TLS".
set_label() { printf '%s pooling%s\n' "${1%-tls}" "$([ "$1" = "${1%-tls}" ] || echo ', TLS')"; }

# fastpgproxy_threads [LOOPS]: FastPgProxy's loop_threads (LOOPS, else the LOOPS option) and
# socket_threads (the SOCKET_THREADS option) lines, each only when set.
fastpgproxy_threads() {
    local n="${1:-$loops}"
    [ -z "$n" ] || echo "loop_threads = $n"
    [ -z "$socket_threads" ] || echo "socket_threads = $socket_threads"
}

# start_fastpgproxy SET [LOOPS]: the FastPgProxy of SET, or with LOOPS the scale scenario's one with
# loop_threads = LOOPS (target fastpgproxy-LOOPS).
start_fastpgproxy() {
    local set="$1" n="${2:-}" key=fastpgproxy port pid
    [ -z "$n" ] || key="fastpgproxy-$n"
    local id="$key/$set" dir="$work/$key-$set"
    if [ -n "$build_note" ]; then
        proxy_note[$id]="$build_note"
        return 1
    fi
    mkdir -p "$dir"
    free_port port
    {
        proxy_ini fastpgproxy "$set" "$port"
        # SHOW MEMORY, read before and after each run, needs a console user.
        echo "stats_users = postgres"
        fastpgproxy_threads "$n"
    } >"$dir/fastpgproxy.ini"
    log "starting FastPgProxy ($(set_label "$set")${n:+, loop_threads = $n}) on port $port"
    # taskset (PROXY_CPUS) and env (PERF_MAP) exec the proxy: $! is the proxy's own pid.
    "${pin_proxy[@]}" "${fpp_env[@]}" .bench/bin/fastpgproxy --config "$dir/fastpgproxy.ini" </dev/null >"$dir/fastpgproxy.log" 2>&1 &
    pid=$!
    proxy_pid[$id]="$pid"
    if ! wait_until_answers "$port" "$pid"; then
        if kill -0 "$pid" 2>/dev/null; then
            proxy_note[$id]="did not answer on port $port within ${start_timeout}s"
        else
            local rc=0
            wait "$pid" || rc=$?
            proxy_note[$id]="exited with status $rc before answering"
        fi
        log "FastPgProxy: ${proxy_note[$id]}; its output:"
        show_tail "$dir/fastpgproxy.log"
        stop_pid "$pid"
        proxy_pid[$id]=""
        return 1
    fi
    proxy_port[$id]="$port"
    log "FastPgProxy answers on port $port, pid $pid"
}

# start_pgbouncer SET
start_pgbouncer() {
    local set="$1" id="pgbouncer/$1" dir="$work/pgbouncer-$1" port pidfile bouncer_pid
    if [ -z "$pgbouncer" ]; then
        proxy_note[$id]="pgbouncer not installed"
        return 1
    fi
    mkdir -p "$dir"
    free_port port
    pidfile="$dir/pgbouncer.pid"
    printf '"postgres" ""\n' >"$dir/userlist.txt"
    {
        proxy_ini pgbouncer "$set" "$port"
        echo "unix_socket_dir ="
        echo "auth_file = $dir/userlist.txt"
        echo "logfile = $dir/pgbouncer.log"
        echo "pidfile = $pidfile"
    } >"$dir/pgbouncer.ini"
    is_root && chown -R postgres: "$dir"
    log "starting PgBouncer $pgbouncer_version ($(set_label "$set")) on port $port"
    if ! as_pg 30 "${pin_proxy[@]}" "$pgbouncer" -d -q "$dir/pgbouncer.ini" >"$dir/start.log" 2>&1; then
        show_tail "$dir/start.log"
        show_tail "$dir/pgbouncer.log"
        proxy_note[$id]="did not start"
        return 1
    fi
    # With -d it daemonizes; the pid file names the process to measure and to stop.
    if ! wait_until_answers "$port" || ! bouncer_pid="$(cat "$pidfile" 2>/dev/null)"; then
        show_tail "$dir/pgbouncer.log"
        proxy_note[$id]="did not answer on port $port within ${start_timeout}s"
        return 1
    fi
    proxy_pid[$id]="$bouncer_pid"
    proxy_port[$id]="$port"
    log "PgBouncer answers on port $port, pid $bouncer_pid"
}

# ensure_proxy TARGET SET: starts TARGET of SET the first time it is needed. Fails when it could
# not be started or has exited since.
ensure_proxy() {
    local id="$1/$2"
    case "${proxy_state[$id]}" in
        pending)
            proxy_state[$id]=failed
            "start_$1" "$2" || return 1
            proxy_state[$id]=ok
            ;;
        ok)
            if ! kill -0 "${proxy_pid[$id]}" 2>/dev/null; then
                proxy_state[$id]=failed
                proxy_note[$id]="exited during an earlier run"
                proxy_pid[$id]=""
                log "${label[$1]} ($(set_label "$2")) ${proxy_note[$id]}; its log:"
                show_tail "$work/$1-$2/$1.log"
                return 1
            fi
            ;;
        *)
            return 1
            ;;
    esac
}

# stop_proxies SET: stops both proxies of SET. FastPgProxy logs its managed allocations at
# shutdown; they are kept to show whether relaying allocates per transaction (it should not: the
# total stays near start-up size).
stop_proxies() {
    local set="$1" target id
    for target in fastpgproxy pgbouncer; do
        id="$target/$set"
        [ -n "${proxy_pid[$id]:-}" ] || continue
        stop_pid "${proxy_pid[$id]}"
        proxy_pid[$id]=""
        proxy_state[$id]=stopped
    done
    allocated[$set]="$(sed -n 's/.* \([0-9][0-9]*\) bytes allocated since start.*/\1/p' \
        "$work/fastpgproxy-$set/fastpgproxy.log" 2>/dev/null | tail -n 1)" || allocated[$set]=""
}

# start_lb: starts lb_instances transaction-mode FastPgProxy instances (peer_id 1..N, each with its
# own port and the same [peers] section) and HAProxy in front of them (mode tcp, balance roundrobin)
# on lb_port. Sets lb_note and returns 1 when something does not start.
start_lb() {
    local dir="$work/lb" i port pid peers="" rc=
    lb_note=""
    if [ -n "$build_note" ]; then lb_note="$build_note"; return 1; fi
    mkdir -p "$dir"
    lb_ports=()
    for i in $(seq 1 "$lb_instances"); do
        free_port port
        lb_ports+=("$port")
        peers+="$i = host=$host port=$port"$'\n'
    done
    for i in $(seq 1 "$lb_instances"); do
        port="${lb_ports[$((i - 1))]}"
        {
            proxy_ini fastpgproxy transaction "$port"
            echo "stats_users = postgres"
            fastpgproxy_threads
            echo "peer_id = $i"
            echo
            echo "[peers]"
            printf '%s' "$peers"
        } >"$dir/fastpgproxy-$i.ini"
        log "starting FastPgProxy instance $i of $lb_instances (transaction pooling, peer_id $i) on port $port"
        "${pin_proxy[@]}" "${fpp_env[@]}" .bench/bin/fastpgproxy --config "$dir/fastpgproxy-$i.ini" </dev/null >"$dir/fastpgproxy-$i.log" 2>&1 &
        pid=$!
        lb_pids+=("$pid")
        if ! wait_until_answers "$port" "$pid"; then
            lb_note="FastPgProxy instance $i did not answer on port $port within ${start_timeout}s"
            log "$lb_note; its output:"
            show_tail "$dir/fastpgproxy-$i.log"
            return 1
        fi
    done
    free_port lb_port
    {
        echo "global"
        echo "    maxconn 4000"
        echo "defaults"
        echo "    mode tcp"
        echo "    timeout connect 5s"
        echo "    timeout client 1h"
        echo "    timeout server 1h"
        echo "frontend postgres"
        echo "    bind $host:$lb_port"
        echo "    default_backend fastpgproxy"
        echo "backend fastpgproxy"
        echo "    balance roundrobin"
        for i in $(seq 1 "$lb_instances"); do
            echo "    server fpp$i $host:${lb_ports[$((i - 1))]}"
        done
    } >"$dir/haproxy.cfg"
    if ! bounded 30 "$haproxy" -c -q -f "$dir/haproxy.cfg" >"$dir/haproxy-check.log" 2>&1; then
        show_tail "$dir/haproxy-check.log"
        lb_note="haproxy -c rejected the generated $dir/haproxy.cfg"
        return 1
    fi
    log "starting HAProxy $haproxy_version (mode tcp, balance roundrobin over $lb_instances instances) on port $lb_port"
    # -db: stays in the foreground, so its pid is the one to stop.
    "$haproxy" -db -f "$dir/haproxy.cfg" </dev/null >"$dir/haproxy.log" 2>&1 &
    pid=$!
    lb_pids+=("$pid")
    if ! wait_until_answers "$lb_port" "$pid"; then
        kill -0 "$pid" 2>/dev/null || wait "$pid" || rc=$?
        lb_note="HAProxy did not answer on port $lb_port within ${start_timeout}s${rc:+ (exit status $rc)}"
        log "$lb_note; its output:"
        show_tail "$dir/haproxy.log"
        return 1
    fi
}

# lb_forwarded: the cancels the cancel-lb instances forwarded to a peer (SHOW CANCELS
# forwarded_to_peer, summed), or nothing when one cannot be read.
lb_forwarded() {
    local port n total=0
    for port in "${lb_ports[@]}"; do
        n="$(PGCONNECT_TIMEOUT=3 bounded 10 "$psql" -X -q -h "$host" -p "$port" -U postgres -d fastpgproxy \
            -F ' ' -Atc 'SHOW CANCELS' 2>/dev/null | awk '$1 == "forwarded_to_peer" { print $2 }')" || return 0
        [ -n "$n" ] || return 0
        total=$((total + n))
    done
    echo "$total"
}

# stop_lb: stops HAProxy and the cancel-lb instances.
stop_lb() {
    local pid
    for pid in "${lb_pids[@]}"; do stop_pid "$pid"; done
    lb_pids=()
}

# ---------------------------------------------------------------------------------------------
# Runs. Results are keyed "scenario/target".

declare -A state=() tps=() latency=() p99=() txns=() cpu_us=() run_alloc=() note=() allocated=()
# Per proxy run, per transaction: user and system CPU µs, voluntary and nonvoluntary context switches
# ("v n threads"); and the STRACE=1 run's system calls ("txns recvfrom recvfrom-errors% sendto
# epoll_wait all"), or why there are none.
declare -A user_us=() sys_us=() ctx=() syscalls=() strace_note=()
# The cancel scenarios' results, keyed "scenario/target".
declare -A cancel_median=() cancel_p99=() cancel_max=()

# p99_ms PREFIX: the 99th percentile (nearest rank) in ms of the transaction latencies in
# pgbench's --log files PREFIX.* (one per thread). The third field is the latency in µs; a failed
# or skipped transaction has a word there instead and is left out.
p99_ms() {
    cat "$1".* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ { print $3 }' | sort -n \
        | awk '{ v[NR] = $1 } END { if (NR == 0) exit 1; i = int(NR * 0.99); if (i < NR * 0.99) i++; printf "%.3f", v[i] / 1000 }'
}

# pgbench_error OUTPUT: pgbench's first error message in OUTPUT, and how many clients it aborted.
pgbench_error() {
    local msg aborted
    msg="$(grep -m 1 -E 'error:|ERROR|FATAL' "$1" | sed -E 's/^pgbench: (error|fatal): //; s/[[:space:]]+/ /g' | cut -c 1-240)" || true
    [ -n "$msg" ] || msg="$(tail -n 1 "$1" | cut -c 1-240)"
    aborted="$(grep -c 'aborted in command' "$1")" || true
    if [ "${aborted:-0}" -gt 0 ]; then msg+=" ($aborted clients aborted)"; fi
    printf '%s\n' "$msg"
}

# fastpgproxy_allocated PORT: FastPgProxy's allocated_bytes (GC.GetTotalAllocatedBytes, to within
# a few KB) from SHOW MEMORY on its console; fails when it cannot be read.
fastpgproxy_allocated() {
    PGCONNECT_TIMEOUT=3 bounded 10 "$psql" -X -q -h "$host" -p "$1" -U postgres -d fastpgproxy \
        -F ' ' -Atc 'SHOW MEMORY' 2>/dev/null | awk '$1 == "allocated_bytes" { print $2; found = 1 } END { exit !found }'
}

# pgbench_command ARRAY SCENARIO SECONDS: ARRAY becomes the pgbench command line of SCENARIO for a
# run of SECONDS (placement and TLS environment included), without target and log options.
pgbench_command() {
    # The caller's array must not be named like this reference.
    local -n pgbench_command_out="$1"
    local scen="$2" secs="$3"
    local -a flags
    read -r -a flags <<< "${scen_flags[$scen]}"
    pgbench_command_out=("${pin_pgbench[@]}")
    # Plain scenarios keep libpq's default (prefer), which every plain target refuses.
    [ -z "${scen_tls[$scen]}" ] || pgbench_command_out+=(env PGSSLMODE=require)
    pgbench_command_out+=("$pgbench" "${flags[@]}" -c "${scen_clients[$scen]}" -j "${scen_threads[$scen]}"
        -T "$secs" -n)
}

# bench SCENARIO TARGET PORT PID: one pgbench run of SCENARIO against PORT; records tps, latency
# and transactions and, when PID names a proxy process, its CPU time and context switches per
# transaction (and for FastPgProxy, its managed allocations during the run).
bench() {
    local scen="$1" key="$2" port="$3" proc="$4" id="$1/$2"
    local out="$work/runs/$1-$2.out" txlog="$work/runs/$1-$2.tx" before="" after="" rc=0
    local alloc_before="" alloc_after="" ctx_before="" ctx_after="" is_fpp=""
    local -a cmd
    pgbench_command cmd "$scen" "$seconds"
    [[ "$key" != fastpgproxy* ]] || is_fpp=1
    log "$scen: ${cmd[*]/#"$pgbench"/pgbench} against ${label[$key]} (port $port)"
    if [ -n "$proc" ] && [ "$warmup" -gt 0 ]; then
        local -a warm
        pgbench_command warm "$scen" "$warmup"
        bounded $((warmup + 60)) "${warm[@]}" -U postgres -h "$host" -p "$port" postgres >/dev/null 2>&1 || true
    fi
    if [ -n "$is_fpp" ]; then alloc_before="$(fastpgproxy_allocated "$port")" || alloc_before=""; fi
    if [ -n "$proc" ]; then
        before="$(cpu_ticks "$proc")" || before=""
        ctx_before="$(ctx_switches "$proc")" || ctx_before=""
    fi
    bounded $((seconds + 120)) "${cmd[@]}" --log --log-prefix="$txlog" \
        -U postgres -h "$host" -p "$port" postgres >"$out" 2>&1 || rc=$?
    if [ -n "$proc" ]; then
        after="$(cpu_ticks "$proc")" || after=""
        ctx_after="$(ctx_switches "$proc")" || ctx_after=""
    fi
    if [ -n "$is_fpp" ]; then alloc_after="$(fastpgproxy_allocated "$port")" || alloc_after=""; fi
    if [ "$rc" -eq 124 ]; then
        note[$id]="pgbench did not finish within $((seconds + 120))s"
        return 1
    elif [ "$rc" -ne 0 ]; then
        show_tail "$out" 5
        note[$id]="pgbench exit status $rc: $(pgbench_error "$out")"
        return 1
    fi

    # "without initial connection time", or with -C "including reconnection times".
    tps[$id]="$(awk '/^tps = / { print $3; exit }' "$out")"
    latency[$id]="$(awk '/^latency average = / { print $4 }' "$out")"
    txns[$id]="$(awk -F': *' '/^number of transactions actually processed:/ { split($2, n, "/"); print n[1] + 0 }' "$out")"
    if [ -z "${tps[$id]}" ] || [ -z "${txns[$id]}" ] || [ "${txns[$id]}" -eq 0 ]; then
        show_tail "$out"
        note[$id]="no transactions completed"
        return 1
    fi
    p99[$id]="$(p99_ms "$txlog")" || p99[$id]=""
    if [ -n "$before" ] && [ -n "$after" ]; then
        local -a b a
        read -r -a b <<< "$before"
        read -r -a a <<< "$after"
        # Per transaction in µs: user, system, and their sum (the table's column).
        read -r "user_us[$id]" "sys_us[$id]" "cpu_us[$id]" < <(awk -v u="$((a[0] - b[0]))" -v s="$((a[1] - b[1]))" \
            -v hz="$clk_tck" -v n="${txns[$id]}" 'BEGIN { f = 1e6 / hz / n; printf "%.1f %.1f %.1f\n", u * f, s * f, (u + s) * f }')
    fi
    local switches
    if switches="$(ctx_delta "$ctx_before" "$ctx_after")"; then ctx[$id]="$switches"; fi
    if [ -n "$alloc_before" ] && [ -n "$alloc_after" ]; then
        run_alloc[$id]="$((alloc_after - alloc_before))"
    fi
    state[$id]=ok
}

# bench_cancel SCENARIO TARGET PORT PID: one CancelLatency run against PORT; records the median,
# p99 and maximum cancel latency. PID is unused (cancels are too few to measure proxy CPU).
bench_cancel() {
    local key="$2" port="$3" id="$1/$2" out="$work/runs/$1-$2.out" rc=0
    if [ -n "$cancel_build_note" ]; then
        note[$id]="$cancel_build_note"
        return 1
    fi
    log "$1: $cancels cancels after ${cancel_delay_ms} ms against ${label[$key]} (port $port)"
    bounded $((60 + cancels)) "${pin_pgbench[@]}" .bench/cancel-latency/CancelLatency --count "$cancels" --delay-ms "$cancel_delay_ms" \
        --connection "Host=$host;Port=$port;Username=postgres;Database=postgres;Timeout=15" </dev/null >"$out" 2>&1 || rc=$?
    if [ "$rc" -eq 124 ]; then
        note[$id]="CancelLatency did not finish within $((60 + cancels))s"
        return 1
    elif [ "$rc" -ne 0 ]; then
        show_tail "$out" 5
        note[$id]="CancelLatency exit status $rc: $(grep -m 1 'error' "$out" | cut -c 1-240)"
        return 1
    fi
    # cancels=N median_ms=X p99_ms=Y max_ms=Z
    cancel_median[$id]="$(sed -n 's/.* median_ms=\([0-9.]*\).*/\1/p' "$out")"
    cancel_p99[$id]="$(sed -n 's/.* p99_ms=\([0-9.]*\).*/\1/p' "$out")"
    cancel_max[$id]="$(sed -n 's/.* max_ms=\([0-9.]*\).*/\1/p' "$out")"
    if [ -z "${cancel_median[$id]}" ] || [ -z "${cancel_p99[$id]}" ] || [ -z "${cancel_max[$id]}" ]; then
        show_tail "$out"
        note[$id]="no result line from CancelLatency"
        return 1
    fi
    state[$id]=ok
}

# stop_strace: stops the strace run under way, if any. SIGTERM makes strace detach from every thread
# and write its summary; after 10 s SIGKILL (the kernel then detaches the tracees itself).
stop_strace() {
    [ -n "$strace_pid" ] || return 0
    stop_pid "$strace_pid"
    wait "$strace_pid" 2>/dev/null || true
    strace_pid=""
}

# strace_run SCENARIO TARGET PORT PID: with STRACE=1, one more pgbench run of SCENARIO, of
# strace_seconds, against PORT with strace -c -f attached to PID (all its threads); records the
# system calls per transaction of that run, or in strace_note why there are none.
strace_run() {
    local scen="$1" key="$2" port="$3" proc="$4" id="$1/$2"
    local out="$work/runs/$1-$2.strace-pgbench" sum="$work/runs/$1-$2.strace" err="$work/runs/$1-$2.strace-err"
    local deadline rc=0 n
    local -a cmd
    [ -n "$strace" ] || return 0
    pgbench_command cmd "$scen" "$strace_seconds"
    log "$scen: strace -c -f -p $proc (${label[$key]}) during a ${strace_seconds}s run"
    "$strace" -c -f -p "$proc" -o "$sum" </dev/null 2>"$err" &
    strace_pid=$!
    # strace says "Process N attached" once it holds every thread.
    deadline=$((SECONDS + start_timeout))
    until grep -q 'attached' "$err" 2>/dev/null; do
        if ! kill -0 "$strace_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            stop_strace
            strace_note[$id]="strace did not attach: $(head -n 1 "$err" | cut -c 1-200)"
            return 1
        fi
        sleep 0.1
    done
    bounded $((strace_seconds + 120)) "${cmd[@]}" -U postgres -h "$host" -p "$port" postgres >"$out" 2>&1 || rc=$?
    stop_strace
    n="$(awk -F': *' '/^number of transactions actually processed:/ { split($2, n, "/"); print n[1] + 0 }' "$out")"
    if [ "$rc" -ne 0 ] || [ -z "$n" ] || [ "$n" -eq 0 ]; then
        strace_note[$id]="pgbench under strace: exit status $rc, $(pgbench_error "$out")"
        return 1
    fi
    # strace -c: "% time seconds usecs/call calls [errors] syscall", then a "total" line.
    syscalls[$id]="$(awk -v n="$n" '$1 ~ /^[0-9.]+$/ && (NF == 5 || NF == 6) { c[$NF] += $4; if (NF == 6) e[$NF] += $5 }
        END {
            if (c["total"] == 0) exit 1
            ep = c["epoll_wait"] + c["epoll_pwait"] + c["epoll_pwait2"]
            printf "%d %.2f %.0f %.2f %.2f %.2f", n, c["recvfrom"] / n, c["recvfrom"] ? 100 * e["recvfrom"] / c["recvfrom"] : 0,
                c["sendto"] / n, ep / n, c["total"] / n
        }' "$sum")" || { syscalls[$id]=""; strace_note[$id]="no summary from strace -c"; return 1; }
}

# run_target SCENARIO TARGET: starts the target's proxy when needed and benchmarks it, recording
# the outcome.
run_target() {
    local scen="$1" key="$2" id="$1/$2" set runner=bench
    set="$(proxy_set "$scen")"
    if is_cancel "$scen"; then runner=bench_cancel; fi
    state[$id]=failed
    if [ -n "${scen_tls[$scen]}" ] && [ "$tls_state" != on ]; then
        note[$id]="$tls_state"
    elif [ "$key" = lb ]; then
        if start_lb; then
            bench_cancel "$scen" "$key" "$lb_port" "" || true
            lb_forwarded_count="$(lb_forwarded)"
        else
            note[$id]="$lb_note"
        fi
        stop_lb
    elif [ "$key" = direct ]; then
        "$runner" "$scen" "$key" "$pg_port" "" || true
    elif [[ "$key" == fastpgproxy-* ]]; then
        # scale: a fresh FastPgProxy for this loop count, stopped after its run (and its strace run,
        # which cannot wait for the end of the scenario as the other proxies' do).
        local sid="$key/$set"
        if start_fastpgproxy "$set" "${key#fastpgproxy-}"; then
            "$runner" "$scen" "$key" "${proxy_port[$sid]}" "${proxy_pid[$sid]}" || true
            if [ "${state[$id]}" = ok ]; then
                strace_run "$scen" "$key" "${proxy_port[$sid]}" "${proxy_pid[$sid]}" || true
            fi
        else
            note[$id]="${proxy_note[$sid]}"
        fi
        stop_pid "${proxy_pid[$sid]:-}"
        proxy_pid[$sid]=""
    elif ensure_proxy "$key" "$set"; then
        "$runner" "$scen" "$key" "${proxy_port[$key/$set]}" "${proxy_pid[$key/$set]}" || true
    else
        [ "${proxy_state[$key/$set]}" = skipped ] && state[$id]=skipped
        note[$id]="${proxy_note[$key/$set]}"
    fi
}

# ratio A B: A / B as "0.00x", or "-" when either is missing.
ratio() {
    if [ -n "$1" ] && [ -n "$2" ]; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
    else
        echo "-"
    fi
}

# print_notes SCENARIO: the reasons under a table.
print_notes() {
    local scen="$1" key id
    for key in $(scen_targets "$scen"); do
        id="$scen/$key"
        if [ -n "${note[$id]:-}" ]; then
            echo "  ${label[$key]}: ${state[$id]}: ${note[$id]}"
        fi
    done
    if [ -n "${scen_note[$scen]}" ]; then
        echo "  note: ${scen_note[$scen]}"
    fi
}

# print_cancel_table SCENARIO
print_cancel_table() {
    local scen="$1" key id base=direct base_median="" heading="median vs direct"
    local fmt="%-20s | %7s | %9s | %9s | %9s | %16s\n"
    # cancel-lb compares with one FastPgProxy instance reached directly.
    if [ "$scen" = cancel-lb ]; then base=fastpgproxy heading="median vs one"; fi
    [ "${state[$scen/$base]}" = ok ] && base_median="${cancel_median[$scen/$base]}"
    echo
    printf '%s: NpgsqlCommand.Cancel() of SELECT pg_sleep(30) %s ms after it started, timed until the query failed with 57014; %s cancels per target (%s), %s pooling, %s CPUs\n' \
        "$scen" "$cancel_delay_ms" "$cancels" "$cancels_why" "${scen_mode[$scen]}" "$(nproc)"
    # shellcheck disable=SC2059
    printf "$fmt" target cancels "median ms" "p99 ms" "max ms" "$heading"
    printf '%s\n' "---------------------+---------+-----------+-----------+-----------+-----------------"
    for key in $(scen_targets "$scen"); do
        id="$scen/$key"
        if [ "${state[$id]}" = ok ]; then
            # shellcheck disable=SC2059
            printf "$fmt" "${label[$key]}" "$cancels" "${cancel_median[$id]}" "${cancel_p99[$id]}" \
                "${cancel_max[$id]}" "$(ratio "${cancel_median[$id]}" "$base_median")"
        else
            # shellcheck disable=SC2059
            printf "$fmt" "${label[$key]}" "${state[$id]}" - - - -
        fi
    done
    print_notes "$scen"
    if [ "$scen" = cancel-lb ] && [ "${state[$scen/lb]}" = ok ] && [ -n "$lb_forwarded_count" ]; then
        echo "  forwarded to the owning instance (SHOW CANCELS forwarded_to_peer, all 3 instances): $lb_forwarded_count of $cancels"
    fi
}

# print_table SCENARIO
print_table() {
    local scen="$1" key id mode="${scen_mode[$1]}" direct_tps="" bouncer_tps=""
    if is_cancel "$scen"; then
        print_cancel_table "$scen"
        return
    fi
    local fmt="%-20s | %10s | %14s | %14s | %17s | %13s | %16s\n"
    [ "${state[$scen/direct]}" = ok ] && direct_tps="${tps[$scen/direct]}"
    [ "${state[$scen/pgbouncer]}" = ok ] && bouncer_tps="${tps[$scen/pgbouncer]}"
    echo
    printf 'pgbench %s%s, %s clients, %s threads, %ss per target, scale %s, %s' "${scen_flags[$scen]}" \
        "${scen_tls[$scen]:+ sslmode=require}" "${scen_clients[$scen]}" "${scen_threads[$scen]}" "$seconds" "$scale" \
        "$(set_label "$(proxy_set "$scen")")"
    [ "$mode" = session ] || printf ' (pool size %s in both proxies)' "${pool_size[$mode]}"
    printf ', %s CPUs\n' "$(nproc)"
    # "µs" takes two bytes and printf pads bytes: one more for that heading.
    printf "${fmt/\%17s/%18s}" target tps "avg latency ms" "p99 latency ms" "proxy CPU µs/txn" "tps vs direct" "tps vs pgbouncer"
    printf '%s\n' "---------------------+------------+----------------+----------------+-------------------+---------------+-----------------"
    for key in $(scen_targets "$scen"); do
        id="$scen/$key"
        if [ "${state[$id]}" = ok ]; then
            # shellcheck disable=SC2059
            printf "$fmt" "${label[$key]}" "$(printf '%.0f' "${tps[$id]}")" "${latency[$id]}" "${p99[$id]:--}" \
                "${cpu_us[$id]:--}" "$(ratio "${tps[$id]}" "$direct_tps")" "$(ratio "${tps[$id]}" "$bouncer_tps")"
        else
            # shellcheck disable=SC2059
            printf "$fmt" "${label[$key]}" "${state[$id]}" - - - - -
        fi
    done
    print_notes "$scen"
    for key in $(fastpgproxy_targets "$scen"); do
        id="$scen/$key"
        [ -n "${run_alloc[$id]:-}" ] || continue
        awk -v who="${label[$key]}" -v a="${run_alloc[$id]}" -v n="${txns[$id]}" 'BEGIN {
            printf "  %s managed allocations during the run (SHOW MEMORY allocated_bytes before and after): %d bytes over %d transactions = %.1f bytes/txn\n", who, a, n, a / n }'
    done
    proxy_lines "$scen"
}

# proxy_lines SCENARIO: under a pgbench table, each proxy's CPU split and context switches per
# transaction, and with STRACE=1 its system calls per transaction.
proxy_lines() {
    local scen="$1" key id
    local -a c sc
    for key in $(scen_targets "$scen"); do
        id="$scen/$key"
        if [ "$key" = direct ] || [ "${state[$id]}" != ok ]; then continue; fi
        if [ -n "${user_us[$id]:-}" ]; then
            printf '  %s per transaction: user %s µs + system %s µs' "${label[$key]}" "${user_us[$id]}" "${sys_us[$id]}"
            if [ -n "${ctx[$id]:-}" ]; then
                read -r -a c <<< "${ctx[$id]}"
                awk -v v="${c[0]}" -v nv="${c[1]}" -v t="${c[2]}" -v n="${txns[$id]}" 'BEGIN {
                    printf ", %.2f context switches (%.2f voluntary + %.2f nonvoluntary, %d thread%s)", (v + nv) / n, v / n, nv / n, t, t == 1 ? "" : "s" }'
            fi
            echo
        fi
        if [ -n "${syscalls[$id]:-}" ]; then
            read -r -a sc <<< "${syscalls[$id]}"
            printf '  %s system calls per transaction (strace -c -f, a %ss run of %s transactions):' \
                "${label[$key]}" "$strace_seconds" "${sc[0]}"
            printf ' recvfrom %s (%s%% failed: EAGAIN), sendto %s, epoll_wait %s, all %s\n' \
                "${sc[1]}" "${sc[2]}" "${sc[3]}" "${sc[4]}" "${sc[5]}"
        elif [ -n "${strace_note[$id]:-}" ]; then
            echo "  ${label[$key]} under strace: ${strace_note[$id]}"
        fi
    done
}

# print_header: the settings the tables depend on beyond their own headers: FastPgProxy's threads,
# the placement, strace.
print_header() {
    local s scale_run=""
    for s in "${scenarios[@]}"; do [ "$s" != scale ] || scale_run=" (scale: ${scale_loops// /, })"; done
    printf 'FastPgProxy: loop_threads = %s%s, socket_threads = %s\n' \
        "${loops:-the default (the processor count it may run on, at most 4)}" "$scale_run" \
        "${socket_threads:-the default (half the loops, at least 1)}"
    printf 'Placement: '
    if [ ${#pin_pg[@]} -eq 0 ] && [ ${#pin_pgbench[@]} -eq 0 ] && [ ${#pin_proxy[@]} -eq 0 ]; then
        printf 'none (no taskset), %s CPUs\n' "$(nproc)"
    else
        printf 'PostgreSQL on CPUs %s, pgbench on CPUs %s, proxies on CPUs %s (taskset -c), of %s CPUs\n' "${PG_CPUS:-any}" \
            "${PGBENCH_CPUS:-any}" "${PROXY_CPUS:-any}" "$(nproc)"
    fi
    if [ "$warmup" -gt 0 ]; then
        echo "Warm-up: an unmeasured ${warmup}s run of the same pgbench command before each measured run against a proxy (WARMUP)"
    else
        echo "Warm-up: none (WARMUP=0): FastPgProxy's first run of each path includes its JIT compilation"
    fi
    [ ${#fpp_env[@]} -eq 0 ] || echo "FastPgProxy ran with DOTNET_PerfMapEnabled=1 DOTNET_EnableWriteXorExecute=0 (PERF_MAP=1)"
    if [ -n "$strace" ]; then
        echo "strace: on, one ${strace_seconds}s pgbench run per proxy after each scenario's runs (not in the tables' tps and CPU)"
    elif [ -n "$strace_skipped" ]; then
        printf '%s\n' "$strace_skipped"
    fi
}

# alloc_line SET: FastPgProxy's managed allocations over its life in SET, per transaction of the
# runs it served.
alloc_line() {
    local set="$1" s n=0 extra="start-up and logins"
    [ -n "${allocated[$set]:-}" ] || return 0
    for s in "${scenarios[@]}"; do
        if [ "$(proxy_set "$s")" = "$set" ] && [ "${state[$s/fastpgproxy]:-}" = ok ]; then
            # The cancel scenarios' cancels are not transactions, but their allocations are in the total.
            if is_cancel "$s"; then extra="start-up, logins and the cancel runs"; continue; fi
            n=$((n + ${txns[$s/fastpgproxy]}))
        fi
    done
    [ "$n" -gt 0 ] || return 0
    echo
    awk -v m="$(set_label "$set")" -v a="${allocated[$set]}" -v n="$n" -v x="$extra" 'BEGIN {
        printf "FastPgProxy (%s) managed allocations, whole process life (%s included): %d bytes over %d transactions = %.1f bytes/txn\n", m, x, a, n, a / n }'
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

# PGBOUNCER (resolved at the top) first, then PATH, then Debian's place.
if [ -z "$pgbouncer" ]; then
    pgbouncer="$(command -v pgbouncer 2>/dev/null || true)"
    if [ -z "$pgbouncer" ] && [ -x /usr/sbin/pgbouncer ]; then pgbouncer=/usr/sbin/pgbouncer; fi
fi
pgbouncer_version=""
if [ -n "$pgbouncer" ]; then
    pgbouncer_version="$("$pgbouncer" --version 2>/dev/null | awk 'NR == 1 { print $NF }')"
    [ -n "$pgbouncer_version" ] || die "$pgbouncer --version printed no version"
    log "PgBouncer: $pgbouncer, version $pgbouncer_version${PGBOUNCER:+ (from PGBOUNCER)}"
fi

# HAPROXY (resolved at the top) first, then PATH, then Debian's place. Only cancel-lb needs it; without
# it that scenario is skipped, and the run goes on with the others.
if [ -z "$haproxy" ]; then
    haproxy="$(command -v haproxy 2>/dev/null || true)"
    if [ -z "$haproxy" ] && [ -x /usr/sbin/haproxy ]; then haproxy=/usr/sbin/haproxy; fi
fi
haproxy_version=""
lb_skipped=""
for s in "${scenarios[@]}"; do
    [ "$s" = cancel-lb ] || continue
    if [ -z "$haproxy" ]; then
        lb_skipped="cancel-lb: skipped, haproxy not installed (apt-get install haproxy, or set HAPROXY)"
        log "note: $lb_skipped"
        kept=()
        for s2 in "${scenarios[@]}"; do [ "$s2" = cancel-lb ] || kept+=("$s2"); done
        scenarios=("${kept[@]}")
    else
        haproxy_version="$("$haproxy" -v 2>/dev/null | awk 'NR == 1 { print $3 }')"
        log "HAProxy: $haproxy, version ${haproxy_version:-unknown}${HAPROXY:+ (from HAPROXY)}"
    fi
done
if [ "${#scenarios[@]}" -eq 0 ]; then
    printf '\n%s\n' "$lb_skipped"
    exit 0
fi

declare -A label=([direct]="PostgreSQL (direct)" [fastpgproxy]="FastPgProxy" [pgbouncer]="PgBouncer"
    [lb]="HAProxy, 3 instances")
for n in $scale_loops; do
    label[fastpgproxy-$n]="FastPgProxy $n loop$([ "$n" -eq 1 ] || echo s)"
done
for set in session transaction transaction-tls; do
    proxy_state[fastpgproxy/$set]=pending
    proxy_state[pgbouncer/$set]=pending
    if [ -z "$pgbouncer" ]; then
        proxy_state[pgbouncer/$set]=skipped
        proxy_note[pgbouncer/$set]="pgbouncer not installed"
    fi
done
[ -n "$pgbouncer" ] || log "note: pgbouncer not found (apt-get install pgbouncer, or set PGBOUNCER); skipping that column"

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

work="$(mktemp -d "${TMPDIR:-/tmp}/fpp-bench.XXXXXX")"
# The postgres OS user must reach its own folders inside.
chmod 755 "$work"
mkdir "$work/runs"

build_note=""
build_fastpgproxy || true
cancel_build_note=""
cancel_built=""
lb_forwarded_count=""
cancels=200 cancels_why="the default"
for scen in "${scenarios[@]}"; do
    if is_cancel "$scen" && [ -z "$cancel_built" ]; then
        cancel_built=1
        build_cancel_latency || true
        # Short runs stay short: 15 cancels per second of a run, at least 50, at most 200.
        if [ "$seconds" -lt 14 ]; then
            cancels=$((seconds * 15 < 50 ? 50 : seconds * 15))
            cancels_why="fewer than 200 because seconds is $seconds: 15 per second, at least 50"
        fi
    fi
done
start_postgres

# One proxy pair at a time: the previous pair stops before the next one starts. PostgreSQL turns
# ssl on before the first TLS scenario (they come last) and keeps it on.
current_set=""
tls_dir=""
tls_state=""
for scen in "${scenarios[@]}"; do
    set="$(proxy_set "$scen")"
    if [ "$set" != "$current_set" ]; then
        [ -z "$current_set" ] || stop_proxies "$current_set"
        current_set="$set"
    fi
    if [ -n "${scen_tls[$scen]}" ] && [ -z "$tls_state" ]; then enable_tls || true; fi
    for target in $(scen_targets "$scen"); do
        run_target "$scen" "$target"
    done
    # STRACE=1: each proxy's run under strace after the normal ones (scale's FastPgProxy instances had
    # theirs before they stopped).
    if [ -n "$strace" ] && ! is_cancel "$scen"; then
        for target in fastpgproxy pgbouncer; do
            id="$target/$set"
            if [ "${state[$scen/$target]:-}" = ok ] && [ -n "${proxy_pid[$id]:-}" ]; then
                strace_run "$scen" "$target" "${proxy_port[$id]}" "${proxy_pid[$id]}" || true
            fi
        done
    fi
done
stop_proxies "$current_set"

echo
[ -z "$pgbouncer" ] || printf 'PgBouncer: %s, version %s\n' "$pgbouncer" "$pgbouncer_version"
[ -z "$haproxy_version" ] || printf 'HAProxy: %s, version %s\n' "$haproxy" "$haproxy_version"
print_header

all_ok=true
for i in "${!scenarios[@]}"; do
    scen="${scenarios[$i]}"
    print_table "$scen"
    for target in $(fastpgproxy_targets "$scen"); do
        [ "${state[$scen/$target]}" = ok ] || all_ok=false
    done
    # Each proxy pair's allocation line follows its last table.
    next="${scenarios[$((i + 1))]:-}"
    if [ -z "$next" ] || [ "$(proxy_set "$next")" != "$(proxy_set "$scen")" ]; then
        alloc_line "$(proxy_set "$scen")"
    fi
done
[ -z "$lb_skipped" ] || printf '\n%s\n' "$lb_skipped"

[ "$all_ok" = true ]
