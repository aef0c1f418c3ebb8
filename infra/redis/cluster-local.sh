#!/usr/bin/env bash
# Starts a local 3-master Redis Cluster on ports 7001-7003 (data in .flashcart/cluster/) for
# trying flashcart against a cluster by hand. Tests start their own private cluster instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
base=.flashcart/cluster
for port in 7001 7002 7003; do
    mkdir -p "$base/$port"
    redis-server infra/redis/flashcart.conf --port "$port" --bind 127.0.0.1 --dir "$PWD/$base/$port" \
        --cluster-enabled yes --cluster-config-file nodes.conf --daemonize yes --logfile redis.log
done
sleep 0.5
redis-cli --cluster create 127.0.0.1:7001 127.0.0.1:7002 127.0.0.1:7003 --cluster-replicas 0 --cluster-yes
echo "cluster up: redis://127.0.0.1:7001 (stop: redis-cli -p 700N shutdown nosave)"
