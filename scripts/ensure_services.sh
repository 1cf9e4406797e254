#!/usr/bin/env bash
# Make sure the services the test suite needs answer on loopback, installing them when missing:
#   PostgreSQL 15 on 127.0.0.1:5432 (role "postgres", trust authentication for local connections)
#   Redis on 127.0.0.1:6379
# and installs Debian's chromium with its chromedriver (the admin console's browser tests, tests/browser).
# A new Debian 12 machine has neither; `make test` and `.ci/run` call this script, so a fresh clone
# needs nothing installed by hand. It is idempotent: services already up are left alone.
#
# Trust authentication is for a local test machine only: never run this script on a shared host.
set -euo pipefail

PG_VERSION=${PG_VERSION:-15}
PG_CLUSTER=main
PG_ETC=/etc/postgresql/$PG_VERSION/$PG_CLUSTER
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "ensure_services: run as root or install sudo"; exit 1; }
  SUDO="sudo"
fi

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    echo "ensure_services: apt-get update"
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  echo "ensure_services: apt-get install $*"
  # A policy-rc.d that answers 101 keeps the packages' init scripts from starting the servers (there is
  # no init system on a test machine); this script starts them itself below.
  local policy=/usr/sbin/policy-rc.d placed=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy" && placed=1
  fi
  local rc=0
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  [ -n "$placed" ] && $SUDO rm -f "$policy"
  return $rc
}

pg_up() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p 5432 2>/dev/null; }
pg_trusts() { psql -h 127.0.0.1 -p 5432 -U postgres -w -Atc 'select 1' >/dev/null 2>&1; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
wait_for() { for _ in $(seq 1 60); do "$1" && return 0; sleep 0.5; done; return 1; }

configure_pg() {
  # Listen on loopback only and trust local connections (the suite connects as postgres without a password).
  $SUDO mkdir -p "$PG_ETC/conf.d"
  printf "listen_addresses = '127.0.0.1'\nport = 5432\n" | $SUDO tee "$PG_ETC/conf.d/budcluster-test.conf" >/dev/null
  if ! $SUDO grep -q '^# budcluster-test' "$PG_ETC/pg_hba.conf"; then
    $SUDO tee "$PG_ETC/pg_hba.conf" >/dev/null <<'EOF'
# budcluster-test: written by scripts/ensure_services.sh (local test machine only)
local   all   all                  trust
host    all   all   127.0.0.1/32   trust
host    all   all   ::1/128        trust
EOF
    if pg_up; then $SUDO pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" reload; fi
  fi
}

# --- PostgreSQL ---------------------------------------------------------------------------------
if ! pg_up || ! pg_trusts; then
  if [ ! -x "$PG_BIN/postgres" ] || ! command -v psql >/dev/null; then
    apt_install "postgresql-$PG_VERSION" "postgresql-client-$PG_VERSION"
  fi
  if [ ! -d "$PG_ETC" ]; then
    echo "ensure_services: creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
    $SUDO pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >/dev/null
  fi
  configure_pg
  if ! pg_up; then
    echo "ensure_services: starting PostgreSQL $PG_VERSION"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start
  fi
  wait_for pg_up || { echo "PostgreSQL is not answering on 127.0.0.1:5432; see /var/log/postgresql/"; exit 1; }
  wait_for pg_trusts || { echo "PostgreSQL on 127.0.0.1:5432 refuses the passwordless postgres role"; exit 1; }
fi

# --- Redis --------------------------------------------------------------------------------------
if ! redis_up; then
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || apt_install redis-server redis-tools
  echo "ensure_services: starting Redis"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/budcluster-test.log
  wait_for redis_up || { echo "Redis is not answering on 127.0.0.1:6379; see /var/log/redis/"; exit 1; }
fi

# --- Chromium and chromedriver ------------------------------------------------------------------
# Installed together: Debian's chromium-driver depends on the exact chromium version, so the two always match.
# The browser tests point Selenium at these paths, never at a driver or browser it would download.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install chromium chromium-driver
fi
echo "PostgreSQL and Redis are up; chromium and chromedriver are installed"
