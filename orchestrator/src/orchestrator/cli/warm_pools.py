"""The warm pools' state for ``ironclaw status``, read from the orchestrator's ``/metrics``."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.settings import Settings

_TIMEOUT_S = 3.0


def read_warm_pools(settings: Settings) -> tuple[dict[str, dict[str, Any]], str]:
    """Per pooled mode: its size, ready and starting slots, claims and misses; and "" or why
    the metrics could not be read (then only the configured sizes are known)."""
    pools: dict[str, dict[str, Any]] = {mode: {"size": size} for mode, size in settings.warm_pool}
    if not settings.metrics_enabled:
        return pools, "METRICS_ENABLED=0"
    host = settings.metrics_bind
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{settings.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            text = response.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError) as exc:
        return pools, f"{url}: {exc}"
    return parse_warm_pools(text, pools), ""


def parse_warm_pools(
    text: str, pools: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The warm-pool figures in a Prometheus exposition, merged into ``pools``."""
    pools = {mode: dict(pool) for mode, pool in (pools or {}).items()}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            mode = sample.labels.get("mode", "")
            value = int(sample.value)
            if sample.name == "ironclaw_warm_pool_slots":
                pools.setdefault(mode, {})[sample.labels.get("state", "")] = value
            elif sample.name == "ironclaw_warm_pool_size":
                pools.setdefault(mode, {})["size"] = value
            elif sample.name == "ironclaw_warm_pool_claims_total":
                pools.setdefault(mode, {})["claims"] = value
            elif sample.name == "ironclaw_warm_pool_misses_total":
                entry = pools.setdefault(mode, {})
                entry["misses"] = entry.get("misses", 0) + value
    for pool in pools.values():
        pool.setdefault("claims", 0)
        pool.setdefault("misses", 0)
    return pools
