#!/usr/bin/env bash
# Starts a local Redis Cluster for trying flashcart against a cluster by hand: 3 masters on
# ports 7001-7003 and a replica each on 7004-7006 (REPLICAS=0: masters only), every node with
# flashcart.conf + cluster.conf (AOF on), data in .flashcart/cluster/. Tests start their own
# private cluster instead (flashcart-testkit, free ports).
#   infra/redis/cluster-local.sh          start
#   infra/redis/cluster-local.sh stop     stop every node (data kept)
#   redis-cli -p 7001 debug sleep 0; kill -9 $(cat .flashcart/cluster/7001/redis.pid)   # a failover
set -euo pipefail
cd "$(dirname "$0")/../.."
base=.flashcart/cluster
replicas=${REPLICAS:-1}
masters=(7001 7002 7003)
ports=("${masters[@]}")
if [ "$replicas" -ge 1 ]; then ports+=(7004 7005 7006); fi

if [ "${1:-}" = stop ]; then
    for port in "${ports[@]}"; do redis-cli -p "$port" shutdown nosave 2>/dev/null || true; done
    exit 0
fi

for port in "${ports[@]}"; do
    mkdir -p "$base/$port"
    redis-server infra/redis/flashcart.conf --include "$PWD/infra/redis/cluster.conf" \
        --port "$port" --bind 127.0.0.1 --dir "$PWD/$base/$port" \
        --pidfile "$PWD/$base/$port/redis.pid" --daemonize yes --logfile redis.log
done
for port in "${ports[@]}"; do
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
done
# With one replica per master, redis-cli makes the first three nodes masters and gives each a
# replica from the rest.
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") \
    --cluster-replicas "$replicas" --cluster-yes
seeds=$(printf '127.0.0.1:%s,' "${masters[@]}"); seeds=${seeds%,}
cat <<MSG
cluster up (stop: $0 stop). Serve flashcart on it:
  flashcart up --variable redis_address=$seeds --variable redis_cluster_hosts=127.0.0.1:7001..7007 \\
      --redis-cluster $seeds [--variable durability=replicated]
MSG
