#!/usr/bin/env bash
# The real clients the peer programs and tests/test_clients_*.py drive, from the package
# registries only: pgJDBC, ActiveRecord + ruby-pg from Debian, node-postgres and knex from npm
# into tests/peer/node (gitignored). Idempotent: installs only what is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

missing=()
command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
[ -e /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
command -v ruby >/dev/null 2>&1 || missing+=(ruby)
ruby -e 'require "active_record"' >/dev/null 2>&1 || missing+=(ruby-activerecord)
ruby -e 'require "pg"' >/dev/null 2>&1 || missing+=(ruby-pg)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing ${missing[*]}; run as root or: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -d "$here/node/node_modules/pg" ] || [ ! -d "$here/node/node_modules/knex" ]; then
    mkdir -p "$here/node"
    cp "$here/clients/package.json" "$here/node/package.json"
    npm install --prefix "$here/node" --no-audit --no-fund --loglevel=error
fi
echo "clients ready: $(javac -version 2>&1), ruby $(ruby -e 'print RUBY_VERSION'), node $(node -v)"
