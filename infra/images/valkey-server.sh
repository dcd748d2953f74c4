#!/bin/sh
# valkey-server as the official image runs it: protected mode off (that image builds it with
# CONFIG_DEFAULT_PROTECTED_MODE 0), else a server without a password answers DENIED to every
# other container. A config file stays the first argument; later options still override.
real=/usr/local/lib/valkey/valkey-server
case "${1:-}" in
  -v|--version|-h|--help) exec "$real" "$@" ;;
  ""|-*) exec "$real" --protected-mode no "$@" ;;
  *) conf="$1"; shift; exec "$real" "$conf" --protected-mode no "$@" ;;
esac
