"""The registry of log adapters: look one up by name, or detect a log's format from its head."""

from __future__ import annotations

from typing import Any, Mapping

from .base import LogAdapter
from .modded_nanogpt import ModdedNanoGPTAdapter
from .nanochat import NanochatAdapter
from .orch_format import OrchAdapter
from .parameter_golf import ParameterGolfAdapter

ADAPTERS: dict[str, LogAdapter] = {
    adapter.name: adapter
    for adapter in (OrchAdapter(), ModdedNanoGPTAdapter(), ParameterGolfAdapter(), NanochatAdapter())
}


class UnknownFormat(ValueError):
    pass


def get_adapter(name: str, options: Mapping[str, Any] | None = None) -> LogAdapter:
    """The adapter of format `name`, configured with a study's `trainer.log_options` when given (ValueError for an
    option the format does not take)."""
    try:
        adapter = ADAPTERS[name]
    except KeyError:
        raise UnknownFormat(
            f"unknown log format {name!r}; known formats: {', '.join(sorted(ADAPTERS))}"
        ) from None
    return adapter.configure(options)


def sniff_scores(head: str) -> list[tuple[float, str]]:
    """Every adapter's confidence about `head`, best first (ties broken by registration order, so the more
    specific adapters registered first win)."""
    order = {name: i for i, name in enumerate(ADAPTERS)}
    scores = []
    for adapter in ADAPTERS.values():
        try:
            score = float(adapter.sniff(head))
        except Exception:  # a broken sniff must not take detection down for every format
            score = 0.0
        scores.append((max(0.0, min(1.0, score)), adapter.name))
    return sorted(scores, key=lambda item: (-item[0], order[item[1]]))


def detect_format(head: str) -> LogAdapter:
    """The adapter most confident about `head`; raises UnknownFormat when none recognises it."""
    scored = sniff_scores(head)
    if not scored or scored[0][0] <= 0.0:
        raise UnknownFormat(
            f"the log is in no known format (known: {', '.join(sorted(ADAPTERS))}); pass --format"
        )
    return ADAPTERS[scored[0][1]]
