"""How a sweep picks its next config: a full grid, a hill-climb, or Optuna's TPE.

Each strategy looks only at the history (configs measured and their scores) to propose the
next one, so a resumed sweep carries on where it stopped. The model's own config is always
measured first: the tuner's answer is then never worse than the defaults, and says by how much
it is better.
"""

from typing import Any, Protocol

from inscale.model_folder import ToolError
from inscale.profile.space import KNOBS, Config, Space

STRATEGIES = ("auto", "grid", "hill", "optuna")
GRID_MAX = 16  # `auto` takes the whole grid up to this many configs
HILL_GAIN = 0.02  # a move must beat the current config by more than the noise of a short run

History = list[tuple[Config, float]]  # config and its score (throughput under the objective)


class Strategy(Protocol):
    name: str

    def propose(self, history: History) -> Config | None:
        """The next config to measure, or None when this strategy is done."""


class Grid:
    name = "grid"

    def __init__(self, space: Space, start: Config) -> None:
        self._order = [start, *(c for c in space.grid() if c != start)]

    def propose(self, history: History) -> Config | None:
        seen = [config for config, _ in history]
        return next((c for c in self._order if c not in seen), None)


class HillClimb:
    """From the default, measure every one-step neighbour; move to the best if it beats the
    current config by more than HILL_GAIN; stop at a config no neighbour beats. Model
    Analyzer's quick search works the same way."""

    name = "hill"

    def __init__(self, space: Space, start: Config) -> None:
        self._space = space
        self._start = start

    def propose(self, history: History) -> Config | None:
        scores = [(config, score) for config, score in history]
        seen = [config for config, _ in scores]

        def score_of(config: Config) -> float:
            return scores[seen.index(config)][1]

        if self._start not in seen:
            return self._start
        current = self._start
        while True:
            neighbours = list(self._space.neighbours(current))
            unmeasured = [c for c in neighbours if c not in seen]
            if unmeasured:
                return unmeasured[0]
            if not neighbours:
                return None
            best = max(neighbours, key=score_of)
            if score_of(best) <= score_of(current) * (1 + HILL_GAIN):
                return None
            current = best


class Tpe:
    """Optuna's Tree-structured Parzen Estimator over the knobs as categorical choices: it
    models which values give high scores and samples there, so a large space is covered in
    far fewer trials than the grid. Optuna is imported here only (the `profile` extra)."""

    name = "optuna"
    _REPEATS = 50  # asks in a row that only return measured configs: the space is covered

    def __init__(self, space: Space, start: Config, seed: int) -> None:
        try:
            import optuna
        except ImportError:
            raise ToolError(
                "--strategy optuna needs Optuna: pip install 'inscale[profile]'"
            ) from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._optuna: Any = optuna
        self._space = space
        self._start = start
        self._distributions: dict[str, Any] = {
            knob: optuna.distributions.CategoricalDistribution(space.values[knob]) for knob in KNOBS
        }
        self._study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed)
        )
        self._told = 0

    def propose(self, history: History) -> Config | None:
        if not history:
            return self._start
        for config, score in history[self._told :]:
            self._study.add_trial(
                self._optuna.trial.create_trial(
                    params=dict(config), distributions=self._distributions, value=score
                )
            )
        self._told = len(history)
        seen = [config for config, _ in history]
        if len(seen) >= self._space.size:
            return None
        for _ in range(self._REPEATS):
            trial = self._study.ask(self._distributions)
            config = {knob: float(trial.params[knob]) for knob in KNOBS}
            # Asked and not run: a pending trial would bias the sampler's next ask.
            self._study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
            if config not in seen:
                return config
        return next((c for c in self._space.grid() if c not in seen), None)


def choose(name: str, space: Space, start: Config, seed: int) -> Strategy:
    if name == "auto":
        name = "grid" if space.size <= GRID_MAX else "optuna"
        if name == "optuna":
            try:
                import optuna  # noqa: F401
            except ImportError:
                name = "hill"  # without the extra, a large space still gets searched
    if name == "grid":
        return Grid(space, start)
    if name == "hill":
        return HillClimb(space, start)
    if name == "optuna":
        return Tpe(space, start, seed)
    raise ToolError(f"unknown strategy {name!r}; the strategies are {', '.join(STRATEGIES)}")
