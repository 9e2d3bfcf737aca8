"""Reading a `results.json` written by `inscale profile` (schema 1, docs: the README's
profile section). Only what a plan needs is typed; other fields are ignored, so a later
profile that adds fields still plans. A file that is not JSON, has another schema or lacks
a field is refused with the file's name and the first problems, never a traceback."""

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inscale.plan.errors import PlanError

SCHEMA = 1
SHOWN_PROBLEMS = 3


class _Read(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Level(_Read):
    """One concurrency step of a trial: closed-loop load, so `concurrency` requests in flight."""

    concurrency: int = Field(ge=1)
    requests: int = Field(ge=0)
    errors: int = Field(ge=0)
    rps: float = Field(ge=0)
    p99_ms: float | None = Field(ge=0)  # None: no answer in the window


class Trial(_Read):
    id: int
    config: dict[str, float | int]
    is_default: bool = False
    status: str
    rss_mb: float | None = Field(default=None, ge=0)
    levels: list[Level] = Field(default_factory=list)


class Machine(_Read):
    cpus: int = Field(ge=1)
    server_cores: list[int]


class Results(_Read):
    schema_: int = Field(alias="schema")
    model: str = Field(min_length=1)
    version: int
    machine: Machine
    slo_p99_ms: float = Field(gt=0)
    trials: list[Trial]
    # The profile's answer, when it was checked side by side against the defaults: a trial
    # confirmed so outweighs single runs that happened to read higher.
    answer_trial: int | None = None
    # Throughput the side-by-side check measured (median of interleaved rounds), by trial:
    # steadier than a trial's single run, so it is the capacity planned for those trials.
    confirmed_rps: dict[int, float] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _confirmed_answer(cls, raw: Any) -> Any:
        check = raw.get("confirmation") if isinstance(raw, dict) else None
        if not isinstance(check, dict) or check.get("ratio") is None:
            return raw
        measured = {}
        for side in ("best", "default"):
            if check.get(f"{side}_trial") is not None and check.get(f"{side}_rps"):
                measured[int(check[f"{side}_trial"])] = float(check[f"{side}_rps"])
        answer = (raw.get("best") or {}).get("trial")
        return {**raw, "answer_trial": answer, "confirmed_rps": measured}


def read_results(path: Path) -> Results:
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the results file ({exc.strerror})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(
            f"{path}: not a results file: not JSON ({exc.msg} at line {exc.lineno} "
            f"column {exc.colno})"
        ) from None
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: not a results file: a JSON object was expected")
    if raw.get("schema") != SCHEMA:
        raise PlanError(
            f"{path}: not a results file of schema {SCHEMA} (its 'schema' is "
            f"{raw.get('schema')!r}); write it again with `inscale profile`"
        )
    try:
        results = Results.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()[:SHOWN_PROBLEMS]
        ]
        more = exc.error_count() - len(problems)
        tail = f" (and {more} more)" if more > 0 else ""
        raise PlanError(f"{path}: not a valid results file: {'; '.join(problems)}{tail}") from None
    if not results.machine.server_cores:
        raise PlanError(
            f"{path}: machine.server_cores is empty: the servers were not pinned, so the "
            "results do not say how many cores one replica's capacity was measured on"
        )
    return results
