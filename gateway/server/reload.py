"""What a config reload may change in a running gateway, and what waits for a restart.

Applied at once (Gateway.reload): auth (authenticators, keys file, JWT, rules, audit), the
rate limits (rate_limits.limits: buckets already in the store keep their levels), the static
pools, routing (profiles, aliases, model costs, retries, outlier policy), request limits,
the per-call server settings (timeouts, access log, shutdown grace) and log_level.

At the next start only: what binds sockets or starts loops at start-up (server.listen, tls,
max_message_bytes, uvloop, metrics, discovery, readiness, routing.load_probe and gpu_capacity,
the stores of the rate limits, budgets and response cache, redis and the ledger).
Those keep their running values, and the reload says which ones differ in the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from pydantic import ValidationError

from ..config import Config, ConfigError, format_errors

log = logging.getLogger("meshgate")

# Whole top-level sections that only a restart applies.
_RESTART_SECTIONS = ("metrics", "discovery", "readiness", "redis", "ledger", "log_format", "tracing")
# Fields of `server` and `routing` that only a restart applies.
_RESTART_FIELDS = {
    "server": ("listen", "tls", "max_message_bytes", "uvloop", "allow_unauthenticated"),
    "routing": ("load_probe", "gpu_capacity"),
    "rate_limits": ("store",),
    "budgets": ("store",),
    "autoscaling": ("keda",),
}


class ReloadPlan(NamedTuple):
    source: str  # the file read
    config: Config  # what to run: the new file, with restart-only settings kept as they run now
    applied: list[str]  # changed and applied (top-level sections, or section.field)
    restart_required: list[str]  # changed in the file, kept until the next start


def plan_reload(running: Config, new: Config, source: str) -> ReloadPlan:
    """ConfigError when the file, with the settings a restart would change kept as they run, is
    not a valid config (e.g. it turns authentication off on a listener other hosts reach)."""
    applied: list[str] = []
    restart: list[str] = []
    keep: dict[str, Any] = {}
    for section in Config.model_fields:
        old_value, new_value = getattr(running, section), getattr(new, section)
        if old_value == new_value:
            continue
        if section in _RESTART_SECTIONS:
            restart.append(section)
            keep[section] = old_value
        elif section == "cache":  # optional; which store holds it is built at start
            applied.append(section)
            store = running.cache.store if running.cache is not None else "memory"
            if new.cache is not None and new.cache.store != store:
                restart.append("cache.store")
                keep[section] = new.cache.model_copy(update={"store": store})
        elif section in _RESTART_FIELDS:
            kept: dict[str, Any] = {}
            for field in type(old_value).model_fields:
                if getattr(old_value, field) == getattr(new_value, field):
                    continue
                if field in _RESTART_FIELDS[section]:
                    restart.append(f"{section}.{field}")
                    kept[field] = getattr(old_value, field)
                else:
                    applied.append(f"{section}.{field}")
            if kept:
                keep[section] = new_value.model_copy(update=kept)
        else:
            applied.append(section)
    merged = new
    if keep:
        try:
            merged = Config.model_validate(new.model_copy(update=keep).model_dump(by_alias=True))
        except ValidationError as err:
            raise ConfigError(
                format_errors(f"{source} (with {', '.join(sorted(restart))} as running until a restart)", err)
            ) from None
    return ReloadPlan(source, merged, sorted(applied), sorted(restart))


def reload_logged(reload: Callable[[], ReloadPlan]) -> None:
    """SIGHUP: reload, and say in the log what happened."""
    try:
        plan = reload()
    except ConfigError as err:
        log.error("config reload refused, the running config stays: %s", err)
        return
    except Exception:  # a bug must not take the gateway down with it
        log.exception("config reload failed, the running config stays")
        return
    log.info(
        "config reloaded: applied %s%s",
        ", ".join(plan.applied) or "nothing (no change)",
        f"; at the next start: {', '.join(plan.restart_required)}" if plan.restart_required else "",
    )
