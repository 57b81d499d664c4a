#!/bin/bash
# Interleaves daemons: old (before this change), new none, new fp8; fio beside each run.
set -u
N=${NEW:-build-rel} O=${OLD:-/tmp/oldtree/build-rel}   # OLD: a release build of the tree before (git worktree)
declare -A BIN=( [old]=$O [none]=$N [fp8]=$N ) COD=( [old]=none [none]=none [fp8]=fp8 )
LABELS="${LABELS:-old none fp8}"
for c in $LABELS; do
  rm -rf /tmp/cb/$c; mkdir -p /tmp/cb/$c/sb /tmp/cb/$c/ssd
  args=(); [ $c != old ] && args=(--ssd-codec ${COD[$c]} ${EXTRA:-})
  ${BIN[$c]}/kvdrived/kvdrived --socket /tmp/cb/$c/sb/sock --host-bytes 64M --ssd-dir /tmp/cb/$c/ssd \
     --ssd-bytes 4G "${args[@]}" --metrics-listen off 2>/tmp/cb/$c/log &
done
sleep 3
for round in $(seq 1 ${ROUNDS:-3}); do
  for c in $LABELS; do
    $N/tools/kvdrive-bench ssd -s /tmp/cb/$c/sb/sock --fio-dir /tmp/cb/$c/ssd --values fp8 --sizes ${SIZES:-64K,1M} \
       --read "${READ:-512M}" --repeat 1 --json > /tmp/cb/$c.$round.json 2>/tmp/cb/$c.$round.err || echo "bench $c failed"
  done
done
for c in $LABELS; do $N/tools/kvdrivectl -s /tmp/cb/$c/sb/sock shutdown >/dev/null 2>&1; done
wait
