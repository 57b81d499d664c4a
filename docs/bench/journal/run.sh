#!/bin/sh
# The SSD tier's waits on the event loop under writes and wipes scattered
# over its extents: a victim's Get latency and the daemon's loop turns while
# an attacker churns blocks kept on SSD (kvdrive-bench interference, modes
# ssd-churn and ssd-durable), with an index checkpoint every second (so
# every extent the churn touches is journaled again each second). A warm-up
# churn first provisions every extent of the 128 MiB tier (fresh extents
# are allocated, and journaled, on the loop either way).
# Usage: docs/bench/journal/run.sh BENCH ROUNDS NAME=KVDRIVED...
# (the daemons interleaved, ROUNDS times).
set -eu
bench=$1 rounds=$2
shift 2
D=$(mktemp -d /tmp/kvd-journal.XXXXXX)
pid=
trap 'test -z "$pid" || kill $pid 2>/dev/null; rm -rf "$D"' EXIT
for r in $(seq "$rounds"); do
        for nb in "$@"; do
                name=${nb%%=*} bin=${nb#*=}
                rm -rf "$D/ssd" && mkdir -p "$D/ssd"
                "$bin" --foreground --socket "$D/s" --host-bytes 16M --ssd-dir "$D/ssd" --ssd-bytes 128M \
                        --ssd-extent-bytes 1M --ssd-checkpoint-interval 1 --metrics-listen off \
                        --log-level info 2>"$D/log" &
                pid=$!
                for i in $(seq 100); do [ -S "$D/s" ] && break; sleep 0.1; done
                echo "## round $r: $name ($bin)"
                "$bench" interference --socket "$D/s" --modes ssd-churn --repeat 1 --seconds 15 >/dev/null
                "$bench" interference --socket "$D/s" --modes none,ssd-churn,ssd-durable --repeat 3 --seconds 5
                kill -TERM $pid; wait $pid || true
                pid=
                rm -f "$D/s"
                # Extents journaled per checkpoint interval, as the daemon logged them.
                grep -o '[0-9]* extents written since' "$D/log" |
                        awk '{n++; s+=$1} END {if (n) printf "checkpoints %d, extents journaled per interval: mean %.1f\n", n, s/n}'
        done
done
