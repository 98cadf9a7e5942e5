"""Authorisation: what a principal may call, from the rules in config (first match decides).

A rule matches a call when its `who` matches the principal (any listed user, role, project or
department; an empty `who` is everybody), one of its `methods` globs matches the RPC's short name
and one of its `models` globs matches the model the caller named (a model or an alias). Calls
that name no model (ListModels, ServerLive ...) are checked at the front door, where only rules
whose models are `*` can match them; calls on a model are checked by AuthorizeStage with the
model. No rule matching: `auth.default`. A refusal is PERMISSION_DENIED naming the method and
model, never the rules. Decisions are cached per (principal, method, model): a call costs one
dict lookup once its kind has been seen.
"""

from __future__ import annotations

import fnmatch
import re
from typing import NamedTuple

import grpc

from ...errors import GatewayError, echo
from ...pipeline.context import Principal
from ...pipeline.stages import Call
from .config import AuthConfig, Rule

_MAX_CACHED = 50_000


class _Compiled(NamedTuple):
    allow: bool
    users: frozenset[str]
    roles: frozenset[str]
    projects: frozenset[str]
    departments: frozenset[str]
    everybody: bool
    models: re.Pattern[str]
    any_model: bool
    methods: re.Pattern[str]


def _compile(rule: Rule) -> _Compiled:
    who = rule.who
    return _Compiled(
        rule.effect == "allow",
        frozenset(who.users),
        frozenset(who.roles),
        frozenset(who.projects),
        frozenset(who.departments),
        not (who.users or who.roles or who.projects or who.departments),
        re.compile("|".join(fnmatch.translate(m) for m in rule.models)),
        "*" in rule.models,
        re.compile("|".join(fnmatch.translate(m) for m in rule.methods)),
    )


class Rules:
    def __init__(self, config: AuthConfig) -> None:
        self._rules = [_compile(r) for r in config.rules]
        self._default = config.default == "allow"
        self._cache: dict[tuple[Principal, str, str | None], bool] = {}

    def allowed(self, principal: Principal, method: str, model: str | None) -> bool:
        key = (principal, method, model)
        decision = self._cache.get(key)
        if decision is None:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            decision = self._cache[key] = self._decide(principal, method, model)
        return decision

    def _decide(self, p: Principal, method: str, model: str | None) -> bool:
        for r in self._rules:
            if not (
                r.everybody
                or p.user in r.users
                or p.project in r.projects
                or p.department in r.departments
                or not r.roles.isdisjoint(p.roles)
            ):
                continue
            if not r.methods.fullmatch(method):
                continue
            if model is None and not r.any_model:
                continue
            if model is not None and not r.models.fullmatch(model):
                continue
            return r.allow
        return self._default

    def check(self, principal: Principal, method: str, model: str | None) -> None:
        if not self.allowed(principal, method, model):
            who = principal.user or principal.credential_id or "anonymous"
            what = f"{method} on model {echo(model)}" if model is not None else method
            raise GatewayError(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {what}")


class AuthorizeStage:
    """Refuses a call on a model its principal may not use, before anything is spent on it."""

    name = "authorize"

    def __init__(self, rules: Rules) -> None:
        self._rules = rules

    def admit(self, call: Call) -> None:
        ctx = call.ctx
        self._rules.check(ctx.principal, ctx.method, call.model)

    @property
    def rules(self) -> Rules:
        return self._rules
