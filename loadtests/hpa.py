"""Replay the Kubernetes HPA's algorithm on a run's metrics: when, and how far, it would scale.

Every sync period (15 s) the controller reads the pods' average metric and computes
    desired = ceil(current * average / target)
skipping changes within the tolerance (10%). It then stabilises (a scale-up takes the lowest
recommendation of its window, a scale-down the highest of its window: 5 minutes by default)
and limits the rate with the `behavior` policies (default up: double or +4 pods per 15 s).
`policy_from_manifest` reads the target, bounds and behaviour of an autoscaling/v2 manifest.

The metric is averaged over `metric_window_s` before the HPA sees it, as the adapter rule in
k8s/prometheus-adapter/values.yaml does (avg_over_time over a minute). The replay assumes the
total stays what was measured and spreads evenly over the pods. For requests in flight under
a closed-loop load (each user waits for its answer) that holds: the total is about the number
of users, whatever the replica count. A CPU metric in the same HPA is not replayed.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass(frozen=True)
class Rule:
    """One HPAScalingPolicy: at most `value` pods (or percent) per `period_s`."""

    kind: Literal["Pods", "Percent"]
    value: float
    period_s: float


@dataclass(frozen=True)
class Direction:
    window_s: float
    rules: tuple[Rule, ...]
    select: Literal["Max", "Min"] = "Max"


@dataclass(frozen=True)
class Policy:
    target: float  # average value per pod the HPA aims for
    min_replicas: int = 1
    max_replicas: int = 10
    metric: str = "inscale_requests_in_flight"
    metric_window_s: float = 60.0
    sync_s: float = 15.0
    tolerance: float = 0.1
    up: Direction = field(
        default_factory=lambda: Direction(0, (Rule("Percent", 100, 15), Rule("Pods", 4, 15)))
    )
    down: Direction = field(default_factory=lambda: Direction(300, (Rule("Percent", 100, 15),)))


@dataclass(frozen=True)
class Decision:
    time: float  # seconds since the first sample
    total: float  # the metric summed over pods, as the HPA saw it (averaged)
    replicas_before: int
    replicas: int


def _averaged(samples: Sequence[tuple[float, float]], at: float, window_s: float) -> float:
    inside = [v for t, v in samples if at - window_s <= t <= at]
    if inside and window_s > 0:
        return sum(inside) / len(inside)
    return next(v for t, v in reversed(samples) if t <= at)


def _rate_limit(
    direction: Direction, current: int, changes: list[tuple[float, int]], now: float, up: bool
) -> int:
    """The furthest the policies let replicas move from `current` in this direction."""
    limits = []
    for rule in direction.rules:
        moved = sum(c for t, c in changes if t > now - rule.period_s and (c > 0) == up)
        start = current - moved  # replicas at the start of the rule's period
        step = start * rule.value / 100 if rule.kind == "Percent" else rule.value
        limits.append(math.ceil(start + step) if up else start - math.ceil(step))  # as k8s
    pick_most = (direction.select == "Max") == up  # Max up: highest; Max down: lowest
    return max(limits) if pick_most else min(limits)


def simulate(samples: Sequence[tuple[float, float]], policy: Policy, start: int) -> list[Decision]:
    """samples: (epoch seconds, metric total over all pods), in time order."""
    if not samples:
        return []
    t0 = samples[0][0]
    replicas = max(policy.min_replicas, min(start, policy.max_replicas))
    recommendations: list[tuple[float, int]] = []
    changes: list[tuple[float, int]] = []
    decisions = []
    now = t0 + policy.sync_s
    while now <= samples[-1][0]:
        total = _averaged(samples, now, policy.metric_window_s)
        ratio = total / replicas / policy.target
        wanted = replicas if abs(ratio - 1) <= policy.tolerance else math.ceil(replicas * ratio)
        wanted = max(policy.min_replicas, min(wanted, policy.max_replicas))
        recommendations.append((now, wanted))
        up = min(r for t, r in recommendations if t > now - policy.up.window_s or t == now)
        down = max(r for t, r in recommendations if t > now - policy.down.window_s or t == now)
        stable = max(replicas, up) if up > replicas else min(replicas, down)
        if stable > replicas:
            stable = min(stable, _rate_limit(policy.up, replicas, changes, now, up=True))
        elif stable < replicas:
            stable = max(stable, _rate_limit(policy.down, replicas, changes, now, up=False))
        stable = max(policy.min_replicas, min(stable, policy.max_replicas))
        if stable != replicas:
            changes.append((now, stable - replicas))
        decisions.append(Decision(now - t0, total, replicas, stable))
        replicas = stable
        now += policy.sync_s
    return decisions


def policy_from_manifest(path: Path) -> Policy:
    """The first Pods or Object metric with an averageValue target of the first
    HorizontalPodAutoscaler in the file (which may hold several documents)."""
    for document in yaml.safe_load_all(path.read_text()):
        if not document or document.get("kind") != "HorizontalPodAutoscaler":
            continue
        spec: dict[str, Any] = document["spec"]
        for metric in spec.get("metrics", []):
            kind = str(metric.get("type", ""))
            source = metric.get(kind[:1].lower() + kind[1:], {})
            if "averageValue" not in source.get("target", {}):
                continue
            behavior = spec.get("behavior", {})
            defaults = Policy(target=1)
            return Policy(
                target=_quantity(source["target"]["averageValue"]),
                min_replicas=int(spec.get("minReplicas", 1)),
                max_replicas=int(spec["maxReplicas"]),
                metric=str(source["metric"]["name"]),
                up=_direction(behavior.get("scaleUp"), defaults.up),
                down=_direction(behavior.get("scaleDown"), defaults.down),
            )
    raise ValueError(f"{path}: no HorizontalPodAutoscaler with an averageValue target")


def _direction(raw: dict[str, Any] | None, default: Direction) -> Direction:
    if not raw:
        return default
    rules = tuple(
        Rule(p["type"], float(p["value"]), float(p["periodSeconds"]))
        for p in raw.get("policies", [])
    )
    return Direction(
        window_s=float(raw.get("stabilizationWindowSeconds", default.window_s)),
        rules=rules or default.rules,
        select=raw.get("selectPolicy", "Max"),
    )


def _quantity(value: str | float) -> float:
    """A Kubernetes quantity as a number: '16', '500m' (0.5), '1k'."""
    text = str(value)
    scale = {"m": 1e-3, "k": 1e3, "M": 1e6}
    return float(text[:-1]) * scale[text[-1]] if text[-1] in scale else float(text)
