"""Routing policies per model alias: fallback chains, weighted splits, deadline-aware spill-over.

A caller asks for a model name. When the name is an alias in `routing.aliases`, it maps to an
ordered chain of targets (model, optional version, optional pool):

    routing:
      aliases:
        chat:
          split:                      # optional: the chain's first target, by weight (canaries)
            - {model: llama-70b, version: "2", weight: 10}
            - {model: llama-70b, version: "1", weight: 90}
          fallback:                   # then these, in order
            - {model: llama-8b, pool: gpu-small}
            - {model: gpt-4o-mini, pool: openai}
          spill_on_deadline: true     # skip a target whose predicted completion misses the deadline

The director walks the chain: a target with no usable endpoint (down, not ready, ejected, all
tried) is skipped ("down"); so is one whose best endpoint's predicted completion, in seconds,
exceeds the caller's remaining deadline ("deadline", the spill-over to a smaller model or an
external API when the preferred pool is saturated). The last target is always tried. The
response's RouteInfo names the model that answered and why earlier targets were skipped.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import NamedTuple


class Target(NamedTuple):
    model: str
    version: str = ""
    pool: str = ""  # "" = any pool serving the model


class Alias(NamedTuple):
    split: tuple[tuple[Target, float], ...]  # (target, weight); empty = no split
    fallback: tuple[Target, ...]
    spill_on_deadline: bool = True


class Policies:
    def __init__(self, aliases: Mapping[str, Alias], rng: random.Random | None = None) -> None:
        self.aliases = dict(aliases)
        self._rng = rng or random.Random()

    def chain(self, model: str, version: str) -> tuple[tuple[Target, ...], bool]:
        """The targets to try for what the caller asked, and whether deadline spill-over applies."""
        alias = self.aliases.get(model)
        if alias is None or version:
            return (Target(model, version),), False
        first: tuple[Target, ...] = ()
        if alias.split:
            first = (self._choose(alias.split),)
        return first + alias.fallback, alias.spill_on_deadline

    def _choose(self, split: Sequence[tuple[Target, float]]) -> Target:
        total = sum(w for _, w in split)
        x = self._rng.uniform(0, total)
        for target, w in split:
            x -= w
            if x <= 0:
                return target
        return split[-1][0]
