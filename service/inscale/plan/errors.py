"""Why `inscale plan` could not answer. Both are `InscaleError`s, so the CLI prints the
message and exits with status 2, as every other command does."""

from inscale.errors import InscaleError


class PlanError(InscaleError):
    """The results file, the base manifests or the options do not allow a plan."""


class InfeasibleSlo(PlanError):
    """No measured level meets the objective: no number of replicas would."""
