"""Evaluation: the CoIN scorers (:mod:`dymoe.eval.scorers`) and accuracy-matrix metrics (:mod:`dymoe.eval.metrics`)."""
