#!/usr/bin/env bash
# Usage: perf/ab-bench.sh BEFORE AFTER [rounds] [seconds] [scenario...]
#
# Compares two commits of FastPgProxy end to end: each commit is checked out into its own worktree and
# ./run-bench.sh (of that commit) runs there, alternating BEFORE, AFTER, BEFORE, AFTER... for `rounds`
# rounds (default 2), so both see the same machine conditions in turn. Every run measures PostgreSQL
# directly, FastPgProxy and PgBouncer (when installed), which makes the runs comparable through the
# ratios even when the machine's speed drifts. Arguments after `rounds` go to run-bench.sh
# (default: 10 session tx16 tx256). Each run's full output is printed with its commit and round.
#
# The environment reaches both sides' run-bench.sh unchanged: PGBOUNCER, HAPROXY (made absolute here,
# as the runs happen in other folders), LOOPS, SOCKET_THREADS, SCALE_LOOPS, PG_CPUS, PGBENCH_CPUS,
# PROXY_CPUS, STRACE, STRACE_SECONDS, PERF_MAP (see run-bench.sh). The options that are set are
# printed first; a run-bench.sh older than an option ignores it (its header then does not show it).
#
# Example: perf/ab-bench.sh HEAD~5 HEAD 2 10 session tx16 tx256
#          PG_CPUS=0-3 PGBENCH_CPUS=4-5 PROXY_CPUS=6-7 perf/ab-bench.sh main HEAD 3 15 tx16 tx64
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi

# A relative PGBOUNCER or HAPROXY is the caller's; the runs start in the worktrees.
for var in PGBOUNCER HAPROXY; do
    if [ -n "${!var:-}" ]; then
        path="$(command -v -- "${!var}")" && path="$(realpath -- "$path")" \
            || { printf 'error: %s=%s is not an executable\n' "$var" "${!var}" >&2; exit 1; }
        export "$var=$path"
    fi
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
before="$(git rev-parse --verify "$1^{commit}")"
after="$(git rev-parse --verify "$2^{commit}")"
rounds="${3:-2}"
shift $(( $# >= 3 ? 3 : 2 ))
bench_args=("$@")
[ ${#bench_args[@]} -gt 0 ] || bench_args=(10 session tx16 tx256)

work="$(mktemp -d "${TMPDIR:-/tmp}/fpp-ab.XXXXXX")"
cleanup() {
    git worktree remove --force "$work/before" >/dev/null 2>&1 || true
    git worktree remove --force "$work/after" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

git worktree add --detach -q "$work/before" "$before"
git worktree add --detach -q "$work/after" "$after"

settings=""
for var in PGBOUNCER HAPROXY LOOPS SOCKET_THREADS SCALE_LOOPS PG_CPUS PGBENCH_CPUS PROXY_CPUS \
    STRACE STRACE_SECONDS PERF_MAP; do
    [ -z "${!var:-}" ] || settings+=" $var=${!var}"
done
echo "=== run-bench.sh ${bench_args[*]}, $rounds rounds; environment:${settings:- no run-bench.sh options}"

for (( round = 1; round <= rounds; round++ )); do
    for side in before after; do
        commit="$before"
        [ "$side" = after ] && commit="$after"
        echo "=== round $round, $side: $(git log -1 --format='%h %s' "$commit" | cut -c1-100)"
        (cd "$work/$side" && ./run-bench.sh "${bench_args[@]}" </dev/null) || echo "=== run-bench.sh exited $?"
    done
done
