#!/usr/bin/env bash
# Start the services the cluster tests need, when they are not already reachable:
# Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 with a database `test` that the
# user `postgres` reaches without a password (trust on loopback). Installs them with apt-get
# when missing. Idempotent; safe to call from scripts/test.sh and .ci/run.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apt_ready=0
apt_install() {
    if [ "$apt_ready" = 0 ]; then apt-get update -qq; apt_ready=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# -- Redis ---------------------------------------------------------------------------------
if ! port_open 6379; then
    have redis-server || apt_install redis-server
    redis-server --port 6379 --bind 127.0.0.1 --daemonize yes --save '' --appendonly no \
        --logfile /tmp/roomwire-redis.log
    for _ in $(seq 50); do port_open 6379 && break; sleep 0.1; done
    port_open 6379 || { echo "redis-server did not start (see /tmp/roomwire-redis.log)" >&2; exit 1; }
fi

# -- PostgreSQL ------------------------------------------------------------------------------
if ! port_open 5432; then
    if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
        apt_install postgresql
    fi
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    data=${ROOMWIRE_PGDATA:-/tmp/roomwire-pgdata}
    if [ ! -s "$data/PG_VERSION" ]; then
        mkdir -p "$data"
        chown postgres "$data" 2>/dev/null || true
        su postgres -s /bin/sh -c "$bin/initdb -D '$data' -U postgres --auth=trust" >/dev/null
    fi
    su postgres -s /bin/sh -c "$bin/pg_ctl -D '$data' -l /tmp/roomwire-pg.log \
        -o \"-c listen_addresses=127.0.0.1 -c port=5432 -k /tmp\" -w start" >/dev/null
fi
for _ in $(seq 50); do port_open 5432 && break; sleep 0.1; done
if have psql; then
    if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" \
            postgres 2>/dev/null | grep -q 1; then
        psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" postgres >/dev/null
    fi
fi


# -- coturn (the TURN relay test of tests/ops) ----------------------------------------------
# Only the binary is needed: the test starts its own turnserver on 127.0.0.1.
if ! have turnserver; then
    apt_install coturn
    # Debian enables the system service on install; the tests run their own instance.
    (systemctl disable --now coturn >/dev/null 2>&1 || service coturn stop >/dev/null 2>&1) || true
fi
# -- espeak-ng (`roomwire join --say` and its test) -------------------------------------------
have espeak-ng || apt_install espeak-ng
# -- ffmpeg / ffprobe (room recordings are checked with ffprobe in tests/peer/test_recording.py)
{ have ffprobe && have ffmpeg; } || apt_install --no-install-recommends ffmpeg
# -- Prometheus and promtool (tests/ops/test_prometheus.py, deploy/prometheus) -------------------
# The tests start their own prometheus on a free port; Debian's service is never started here
# (no systemd in these containers) and is stopped where it is.
if ! have prometheus || ! have promtool; then
    apt_install --no-install-recommends prometheus
    (systemctl disable --now prometheus >/dev/null 2>&1 || service prometheus stop >/dev/null 2>&1) || true
fi

# -- HAProxy (the load balancer of tests/cluster/test_rolling_restart.py, deploy/haproxy) -----
# The test runs its own haproxy on free ports; Debian's service is stopped where it started.
if ! have haproxy && [ ! -x /usr/sbin/haproxy ]; then
    apt_install --no-install-recommends haproxy
    (systemctl disable --now haproxy >/dev/null 2>&1 || service haproxy stop >/dev/null 2>&1) || true
fi

echo "services ready: redis 127.0.0.1:6379, postgresql 127.0.0.1:5432/test, coturn, espeak-ng, ffmpeg, prometheus, haproxy"
