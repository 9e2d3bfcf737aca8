"""The sizing formula: from one replica's measured curve to replicas, resources and targets.

A replica's capacity at a config is the highest throughput among its measured levels that
met the objective (p99 at or under the SLO, errors at most 0.1% of requests). Then:

    usable per replica = capacity x (1 - headroom) x lb_efficiency
    replicas           = max(2, ceil(rps / usable per replica))
    cores per replica  = the cores each profiled server was pinned to (requests = limits)
    memory request     = measured RSS x 1.25, rounded up to 64 Mi
    memory limit       = memory request x 1.5, rounded up to 64 Mi
    in-flight target   = max(1, floor(knee concurrency x (1 - headroom)))
    maxReplicas        = max(2 x replicas, replicas + 4)

Everything here is a pure function of the results and the inputs, so a test can redo the
arithmetic by hand.
"""

import dataclasses
import math
from dataclasses import dataclass, field

from inscale.plan.errors import InfeasibleSlo, PlanError
from inscale.plan.results import Level, Results, Trial

ERROR_BUDGET = 0.001  # errors allowed per answered request, as `inscale profile` counts them
# k8s/40-poddisruptionbudget.yaml lets one pod go at a time, and k8s/60-... has minReplicas 2:
# below 2 a node drain would leave nothing serving.
MIN_REPLICAS = 2
# The share of capacity kept free: 0.3 uses a replica up to 70%, as the HPA's CPU target in
# k8s/60-horizontalpodautoscaler.yaml does. It absorbs bursts while new pods start.
DEFAULT_HEADROOM = 0.3
# Throughput N replicas behind a balancer give, over N times one replica's. An assumption:
# the one measurement (README, "Horizontal scaling on one machine": loadtests/scale_local.py,
# haproxy least-connections, 2 replicas on their own core) served 3,353 req/s on 1.05 cores
# used against 2,755 req/s on 0.81 cores for one replica, 0.94 per core used; its raw gain
# (1.22x of 2x) mostly shows other work on the machine, not balancing. A Service spreads
# connections at random rather than by least connections, and many replicas split the load
# into smaller batches, so 0.9 stays below that 0.94.
DEFAULT_LB_EFFICIENCY = 0.9
# A trial's RSS is read at the end of a few seconds of load: days of serving add allocator
# fragmentation, larger batches than the trial saw and Python heap growth. 25% covers that.
MEMORY_MARGIN = 1.25
# The limit above the request lets a rare spike (a huge batch, a model reload that holds two
# versions for a moment) through instead of an OOM kill; 1.5x of the request bounds what a
# leak can take from the node. Requests != limits makes the pod Burstable, not Guaranteed:
# pass --memory-limit-factor 1 for Guaranteed QoS (e.g. the kubelet's static CPU manager).
MEMORY_LIMIT_FACTOR = 1.5
MEMORY_STEP_MI = 64
# A level within this share of the best throughput is at capacity: the difference is inside
# the noise of a few seconds' run on a shared machine.
KNEE_SHARE = 0.95


def within_slo(level: Level, slo_p99_ms: float) -> bool:
    if level.p99_ms is None:  # no answer in the window: nothing met anything
        return False
    return level.p99_ms <= slo_p99_ms and level.errors <= ERROR_BUDGET * level.requests


@dataclass(frozen=True)
class Capacity:
    """One trial's best level under the objective: what one replica of its config serves."""

    trial: int
    config: dict[str, float | int]
    is_default: bool
    concurrency: int  # the knee: requests in flight at capacity (closed-loop load)
    rps: float
    p99_ms: float
    rss_mb: float | None


def capacity_of(trial: Trial, slo_p99_ms: float) -> Capacity | None:
    """None when the trial failed or none of its levels met the objective."""
    if trial.status != "ok":
        return None
    feasible = [level for level in trial.levels if within_slo(level, slo_p99_ms)]
    if not feasible:
        return None
    best = max(feasible, key=lambda level: (level.rps, -level.concurrency))
    # The knee: the fewest requests in flight that already give (nearly) all of it. Past it a
    # closed loop only adds queueing, so it is the in-flight figure to scale out at.
    knee = min(
        (level for level in feasible if level.rps >= KNEE_SHARE * best.rps),
        key=lambda level: level.concurrency,
    )
    assert best.p99_ms is not None  # within_slo saw it
    return Capacity(
        trial.id, trial.config, trial.is_default, knee.concurrency, best.rps, best.p99_ms,
        trial.rss_mb,
    )  # fmt: skip


@dataclass(frozen=True)
class Inputs:
    rps: float
    slo_p99_ms: float
    headroom: float = DEFAULT_HEADROOM
    lb_efficiency: float = DEFAULT_LB_EFFICIENCY
    memory_limit_factor: float = MEMORY_LIMIT_FACTOR

    def __post_init__(self) -> None:
        if not self.rps > 0:
            raise PlanError(f"--rps must be above 0, got {self.rps}")
        if not self.slo_p99_ms > 0:
            raise PlanError(f"--slo-p99-ms must be above 0, got {self.slo_p99_ms}")
        if not 0 <= self.headroom < 1:
            raise PlanError(f"--headroom must be at least 0 and below 1, got {self.headroom}")
        if not 0 < self.lb_efficiency <= 1:
            raise PlanError(
                f"--lb-efficiency must be above 0 and at most 1, got {self.lb_efficiency}"
            )
        if not self.memory_limit_factor >= 1:
            raise PlanError(
                f"--memory-limit-factor must be at least 1, got {self.memory_limit_factor}"
            )


@dataclass(frozen=True)
class Plan:
    inputs: Inputs
    model: str
    version: int
    profile_slo_p99_ms: float
    chosen: Capacity
    usable_rps: float  # per replica: capacity x (1 - headroom) x lb_efficiency
    replicas: int
    cores: int
    memory_request_mi: int
    memory_limit_mi: int
    in_flight_target: int
    max_replicas: int
    candidates: list[Capacity] = field(default_factory=list)  # every feasible trial
    confirmed: bool = False  # the profile's answer, checked side by side, not fewest replicas

    @property
    def replicas_exact(self) -> float:
        return self.inputs.rps / self.usable_rps


def _ceil(x: float) -> int:
    # Rounded first so that 3.0000000000000004 (float noise) is 3, not 4.
    return math.ceil(round(x, 9))


def round_up_mi(mi: float) -> int:
    return _ceil(mi / MEMORY_STEP_MI) * MEMORY_STEP_MI


def replicas_for(rps: float, usable_rps: float) -> int:
    return max(MIN_REPLICAS, _ceil(rps / usable_rps))


def in_flight_target(knee_concurrency: int, headroom: float) -> int:
    return max(1, math.floor(round(knee_concurrency * (1 - headroom), 9)))


def max_replicas_for(replicas: int) -> int:
    """Room for the autoscaler to double the floor (a burst, a slow node); at least 4 pods
    over it, so a small floor still has somewhere to go."""
    return max(2 * replicas, replicas + 4)


def plan(results: Results, inputs: Inputs) -> Plan:
    cores = len(results.machine.server_cores)
    candidates = [
        _confirmed(c, results.confirmed_rps)
        for t in results.trials
        if (c := capacity_of(t, inputs.slo_p99_ms))
    ]
    if not candidates:
        raise InfeasibleSlo(_infeasible(results, inputs.slo_p99_ms))

    def usable(c: Capacity) -> float:
        return c.rps * (1 - inputs.headroom) * inputs.lb_efficiency

    def cost(c: Capacity) -> tuple[int, int, float, float, int]:
        replicas = replicas_for(inputs.rps, usable(c))
        memory = math.inf if c.rss_mb is None else replicas * c.rss_mb
        return replicas, replicas * cores, memory, -c.rps, c.trial

    confirmed = [c for c in candidates if c.trial == results.answer_trial]
    chosen = confirmed[0] if confirmed else min(candidates, key=cost)
    if chosen.rss_mb is None:
        raise PlanError(f"trial {chosen.trial} has no rss_mb: its memory cannot be sized")
    replicas = replicas_for(inputs.rps, usable(chosen))
    # rss_mb is MiB: the profile sums VmRSS (KiB) over the server's processes and divides by 1024.
    request = round_up_mi(chosen.rss_mb * MEMORY_MARGIN)
    return Plan(
        inputs=inputs,
        model=results.model,
        version=results.version,
        profile_slo_p99_ms=results.slo_p99_ms,
        chosen=chosen,
        usable_rps=usable(chosen),
        replicas=replicas,
        cores=cores,
        memory_request_mi=request,
        memory_limit_mi=round_up_mi(request * inputs.memory_limit_factor),
        in_flight_target=in_flight_target(chosen.concurrency, inputs.headroom),
        max_replicas=max_replicas_for(replicas),
        candidates=sorted(candidates, key=cost),
        confirmed=bool(confirmed),
    )


def _confirmed(capacity: Capacity, measured: dict[int, float]) -> Capacity:
    """A trial the side-by-side check measured again is planned at that median, if lower:
    a single few-second run on a shared machine can read tens of percent high."""
    again = measured.get(capacity.trial)
    if again is None or again >= capacity.rps:
        return capacity
    return dataclasses.replace(capacity, rps=again)


def _infeasible(results: Results, slo_p99_ms: float) -> str:
    ok = [t for t in results.trials if t.status == "ok"]
    measured = [(level, t.id) for t in ok for level in t.levels if level.p99_ms is not None]
    if not measured:
        return (
            f"no trial of the results measured any level ({len(results.trials)} trials, "
            f"{len(ok)} ok): nothing to plan from"
        )
    level, trial = min(measured, key=lambda pair: pair[0].p99_ms or 0.0)
    return (
        f"no measured level meets a p99 of {slo_p99_ms:g} ms with at most "
        f"{ERROR_BUDGET:.1%} errors: the lowest p99 seen was {level.p99_ms:g} ms (trial "
        f"{trial} at concurrency {level.concurrency}); no number of replicas can meet this "
        "objective: relax it, or profile a smaller or faster variant"
    )
