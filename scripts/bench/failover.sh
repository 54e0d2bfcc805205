#!/usr/bin/env bash
# Benchmark (not a test): leader failover of a three-replica Tandem control
# plane side by side with a three-member etcd (issue 5's goal: no slower
# than etcd).
#
# The `failover` bench target (crates/control/benches/) runs both groups on
# loopback — three release tandem-control replicas on a throwaway Postgres,
# three etcd members (Debian's etcd-server, default timers: heartbeat
# 100 ms, election 1000 ms) with data dirs in a temp dir — and, alternating
# between them, kill -9s the leader 20 times each. It times, from the kill:
# a survivor reporting itself leader with an entry of its new term committed
# (the headline), and the first client write committed. It prints median,
# p99 and the ratio Tandem/etcd. Method and figures: docs/benchmarks.md.
#
#   scripts/bench/failover.sh
#   scripts/bench/failover.sh --runs 50
#   scripts/bench/failover.sh --help
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh
source scripts/bench/control-bench.sh

ensure_postgres_server
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  echo "installing etcd-server and etcd-client (Debian packages)"
  apt_install etcd-server etcd-client
  # On a systemd host the package starts a system etcd; the benchmark runs
  # its own members on other ports and wants the cores to itself.
  as_root service etcd stop >/dev/null 2>&1 || true
fi
echo "etcd: $(etcd --version | head -1)"

run_control_bench failover 'tandem-control|etcd' "leader failover: tandem vs etcd (about 3 minutes for 20 runs)" "$@"
