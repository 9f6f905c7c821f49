"""The report: the paper's tables and figures from a sweep's results, next to the paper's numbers.

    results = load_folder("results/quick")            # or load_mlflow(uri, experiment)
    report = build_report(results, "results/quick/report")
    report.html                                          # self-contained page with embedded PNGs

Pieces: ``paper`` (the paper's numbers), ``load`` (results -> one DataFrame), ``tables``
(Tables 1 and 2), ``figures`` (Figures 1a-2b, the memorization figures, the cluster timeline),
``timeline`` (the cluster timeline's data, from the epochs' placements), ``render`` (files).
"""

from rethink_dist.report.load import ReportError, Results, find_parent_run, load_folder, load_mlflow, log_to_parent_run
from rethink_dist.report.render import Report, build_report

__all__ = ["Report", "ReportError", "Results", "build_report", "find_parent_run", "load_folder", "load_mlflow",
           "log_to_parent_run"]
