"""``pdenas compare RUN``: the PDE families of a run side by side.

Per family: trials finished, stopped and failed (diverged counted apart), best and median
validation accuracy, the best accuracy within an equal cost budget (the run's median cost),
the family's share of the Pareto front and its hypervolume contribution; the importance of the
step size h, depth and width per family (fANOVA); plots; and, with ``--retrain-top K --seeds S``,
a fair comparison that retrains each family's top K architectures with S seeds at the full
budget and reports mean ± std; and, with ``--verdict``, which family is best and how sure that
is (paired retraining, intervals, P(best), Holm-adjusted paired differences, one sentence,
``verdict.json``). Everything is printed and written to the output folder as CSV, PNG and one
Markdown report, whose top says what is estimated.

The module map: ``_families`` (the family table), ``_importance`` (h, depth and width
importances), ``_retrain`` (retraining the top architectures with several seeds), ``_report``
(display formatting, plots, ``report.md``), ``_estimand`` (the estimand and the expected best
accuracy of n trials), ``_stats`` (bootstrap, P(best), Holm, expected maximum), ``_verdict``
(candidates, paired retraining, the sequential rule, the sentence), ``_verdict_report`` (the
verdict printed and written), ``_command`` (``compare_run``: one run's families),
``_runs`` (``compare_runs``: several runs side by side, ``pdenas compare RUN RUN ...``).
"""

from __future__ import annotations

from pdenas.compare._command import Comparison, compare_run
from pdenas.compare._families import family_table, format_family_table
from pdenas.compare._importance import (
    IMPORTANCE_PARAMS,
    MIN_IMPORTANCE_TRIALS,
    family_importances,
    format_importances,
)
from pdenas.compare._report import markdown_table, write_report
from pdenas.compare._retrain import RETRAIN_SEED, format_retrain, retrain_summary, retrain_top
from pdenas.compare._runs import compare_runs
from pdenas.compare._verdict import Candidate, Verdict, VerdictOptions, run_verdict

__all__ = [
    "Candidate",
    "Comparison",
    "Verdict",
    "VerdictOptions",
    "IMPORTANCE_PARAMS",
    "MIN_IMPORTANCE_TRIALS",
    "RETRAIN_SEED",
    "family_importances",
    "family_table",
    "format_family_table",
    "format_importances",
    "format_retrain",
    "markdown_table",
    "retrain_summary",
    "retrain_top",
    "compare_run",
    "compare_runs",
    "run_verdict",
    "write_report",
]
