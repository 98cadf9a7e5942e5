"""The full policy path for make bench-overhead: authentication (an API key), a rate limit that
every call passes (requests and tokens buckets) and the response cache, with the rate limits'
counters in memory, in Redis (exact) and in Redis (leased), plus the cache-hit path.

    meshgate-policy-mem     auth + limits (memory) + cache miss
    meshgate-policy-redis   auth + limits (Redis, one script per call) + cache miss
    meshgate-policy-leased  auth + limits (Redis, leased) + cache miss
    meshgate-cache-hit      auth + limits (memory) + cache hit (h2load repeats one request)
    meshgate-cache-hit-redis  the same, the cache in Redis (cache.store: redis)
    meshgate-budget-mem     auth + limits (memory) + a money budget (memory: reserve + settle) + cache miss
    meshgate-budget-redis   auth + limits (memory) + a budget (Redis) + cache miss

A miss is forced by a TTL shorter than the time between calls: every lookup finds the entry
expired, then the answer is stored again, so a miss pays for the digest, the lookup and the
store. The Redis is a real redis-server on loopback (tests/redis_server.py).
"""

from __future__ import annotations

NAMES = (
    "meshgate-policy-mem",
    "meshgate-policy-redis",
    "meshgate-policy-leased",
    "meshgate-cache-hit",
    "meshgate-cache-hit-redis",
    "meshgate-budget-mem",
    "meshgate-budget-redis",
)

_LIMITS = (
    "rate_limits: {{store: {store}, limits: [{{name: bench, key: [user], requests_per_s: 1000000,"
    " tokens_per_min: 1000000000}}]}}"
)


def policy_setups(
    apikey: tuple[str, tuple[tuple[str, str], ...]], redis_url: str
) -> dict[str, tuple[str, tuple[tuple[str, str], ...]]]:
    """path name -> (its config YAML, the metadata a caller sends); `apikey`: bench-overhead's
    API key path (its auth config and metadata)."""
    auth_yaml, headers = apikey
    miss = "cache: {ttl_s: 0.000001}"
    hit = "cache: {ttl_s: 3600}"
    hit_redis = "cache: {ttl_s: 3600, store: redis}"

    def budget(store: str) -> str:  # one budget every call passes (reserve + settle per call)
        return (
            f"budgets: {{store: {store}, limits: [{{name: bench, scope: user, limit: 1.0e12, unit: money,"
            " window: monthly}]}"
        )

    def redis(mode: str) -> str:
        return f"redis: {{url: '{redis_url}', mode: {mode}}}"

    return {
        "meshgate-policy-mem": ("\n".join([auth_yaml, _LIMITS.format(store="memory"), miss]), headers),
        "meshgate-policy-redis": (
            "\n".join([auth_yaml, _LIMITS.format(store="redis"), redis("exact"), miss]),
            headers,
        ),
        "meshgate-policy-leased": (
            "\n".join([auth_yaml, _LIMITS.format(store="redis"), redis("leased"), miss]),
            headers,
        ),
        "meshgate-cache-hit": ("\n".join([auth_yaml, _LIMITS.format(store="memory"), hit]), headers),
        "meshgate-budget-mem": (
            "\n".join([auth_yaml, _LIMITS.format(store="memory"), budget("memory"), miss]),
            headers,
        ),
        "meshgate-budget-redis": (
            "\n".join([auth_yaml, _LIMITS.format(store="memory"), budget("redis"), redis("exact"), miss]),
            headers,
        ),
        "meshgate-cache-hit-redis": (
            "\n".join([auth_yaml, _LIMITS.format(store="memory"), redis("exact"), hit_redis]),
            headers,
        ),
    }


def report_rows(results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Each policy path against the gateway without policy stages (meshgate), and hits vs misses."""
    rows = []
    for key, row in results.items():
        base = row.get("meshgate")
        if base is None:
            continue
        for name in NAMES:
            if name not in row:
                continue
            st = row[name]
            rows.append(
                f"| {key} | {name} | {st['rps']:.0f} | {st['rps'] / base['rps']:.2f} |"
                f" {(st['p50_ms'] - base['p50_ms']) * 1000:+.0f} |"
                f" {(st['cpu_ms_per_call'] - base['cpu_ms_per_call']) * 1000:+.0f} |"
            )
        for name in ("meshgate-budget-mem", "meshgate-budget-redis"):
            if name in row and "meshgate-policy-mem" in row:
                ratio = row[name]["rps"] / row["meshgate-policy-mem"]["rps"]
                rows.append(f"| {key} | {name} / limits only (target >= 0.95) | | {ratio:.2f} | | |")
        if "meshgate-cache-hit" in row and "meshgate-policy-mem" in row:
            ratio = row["meshgate-cache-hit"]["rps"] / row["meshgate-policy-mem"]["rps"]
            rows.append(f"| {key} | cache hit / miss (memory) | | {ratio:.2f} | | |")
    return rows
