#!/usr/bin/env bash
# Debian packages that meshgate's tests and benchmarks need, installed only when missing and
# only when it can (root + apt-get).
#   system-deps.sh test    Java for TorchServe (the real TorchServe in tests/test_torchserve.py),
#                          redis-server (the shared counters' tests run against a real Redis),
#                          postgresql (the usage ledger's tests run against a real PostgreSQL),
#                          prometheus (promtool lints the gateway's metrics page in the tests)
#   system-deps.sh bench   nginx as the C reference proxy, h2load as load generator
set -euo pipefail
need=()
[ $# -eq 0 ] && set -- test bench
for what in "$@"; do
  case "$what" in
    test)
      command -v java >/dev/null 2>&1 || need+=(default-jre-headless)
      command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
      compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
      command -v promtool >/dev/null 2>&1 || need+=(prometheus) ;;
    bench)
      command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
      command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client) ;;
    *) echo "usage: $0 [test] [bench]" >&2; exit 2 ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing: ${need[*]} (install them with apt-get as root)" >&2
  exit 1
fi
echo "installing ${need[*]} ..." >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
  apt-get update -q >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
}
