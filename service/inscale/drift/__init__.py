"""Input and output drift: a model's reference profile, the rows the server samples, and the
scores (population stability index, Kolmogorov-Smirnov on the bins) it exports as metrics."""
