#!/usr/bin/env bash
# Stop exactly what up.sh started, by pid, in an order that does not hang (the apiserver waits
# for etcd on shutdown): kwok, scheduler, controller-manager, apiserver, etcd. SIGTERM, then
# SIGKILL after 10 s. `--purge` also removes the cluster's state (etcd data, PKI, kubeconfigs).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RUN=$here/run
PIDS=$RUN/pids
stop() {
  local file=$PIDS/$1
  [ -f "$file" ] || return 0
  local pid; pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "testbed: $1 (pid $pid) ignored SIGTERM for 10 s: SIGKILL" >&2
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
    fi
  fi
  rm -f "$file"
}
for c in ferry-agent kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$c"; done
# No process of a pod may outlive the agent: find any by its environment, kill it, and fail.
orphans=""
for environ in /proc/[0-9]*/environ; do
  if { tr '\0' '\n' < "$environ"; } 2>/dev/null | grep -q '^FERRY_TESTBED_NODE='; then
    pid=${environ#/proc/}; pid=${pid%/environ}
    orphans="$orphans $pid"
    kill -KILL "$pid" 2>/dev/null
  fi
done
if [ "${1:-}" = "--purge" ]; then
  rm -rf "$RUN"
fi
if [ -n "$orphans" ]; then
  echo "testbed: ORPHAN pod processes survived the agent (killed now):$orphans" >&2
  exit 1
fi
echo "testbed: down"
