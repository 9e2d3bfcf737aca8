"""How the fuzz tests run: bounded, reproducible, and saying how to rerun a failure.

Every property test takes `@fuzzed(N)`: at most N examples (times `INSCALE_FUZZ_SCALE`, so a
developer can run `INSCALE_FUZZ_SCALE=20` for a long session), from a fixed seed
(`INSCALE_FUZZ_SEED`, 0 by default) and with no example database, so CI draws the same examples
on every run and machine. A failure carries a note with the seed, and Hypothesis prints the
`@reproduce_failure` blob of the shrunk example (`print_blob`).

No per-example deadline: two shared cores make timings noisy, and a hang is caught instead by
the HTTP client's timeout (tests/test_fuzz_server.py) and pytest-timeout.
"""

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, seed, settings

F = TypeVar("F", bound=Callable[..., Any])

FUZZ_SEED = int(os.environ.get("INSCALE_FUZZ_SEED", "0"))
FUZZ_SCALE = float(os.environ.get("INSCALE_FUZZ_SCALE", "1"))


def fuzzed(examples: int) -> Callable[[F], F]:
    """Apply the fuzz settings to a `@given` test (put it above `@given`)."""

    def apply(test: F) -> F:
        bounded = settings(
            max_examples=max(1, int(examples * FUZZ_SCALE)),
            deadline=None,
            database=None,
            print_blob=True,
            # Generating whole request bodies is slower than Hypothesis expects of a strategy,
            # and server tests share one server (a module fixture) across examples on purpose.
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.function_scoped_fixture,
                HealthCheck.filter_too_much,  # schemathesis negative mode filters a lot
            ],
        )
        run = seed(FUZZ_SEED)(bounded(test))

        @functools.wraps(run)
        def with_seed_note(*args: Any, **kwargs: Any) -> Any:
            try:
                return run(*args, **kwargs)
            except BaseException as exc:
                exc.add_note(
                    f"fuzz seed {FUZZ_SEED}: rerun with INSCALE_FUZZ_SEED={FUZZ_SEED} "
                    f"(and INSCALE_FUZZ_SCALE={FUZZ_SCALE:g}) to draw the same examples"
                )
                raise

        return with_seed_note  # type: ignore[return-value]

    return apply
