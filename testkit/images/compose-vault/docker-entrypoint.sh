#!/bin/sh
case "${1:-}" in
  -*|server|operator|status|version|read|write|kv|login|token|policy|secrets|auth) set -- bao "$@" ;;
esac
exec "$@"
