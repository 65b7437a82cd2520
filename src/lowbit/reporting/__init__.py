"""The measured report: every scheme on the user's model, as Markdown, HTML and JSON."""

from lowbit.reporting.build import DEFAULT_SCHEMES, GROUPS, report
from lowbit.reporting.result import Report

__all__ = ["report", "Report", "DEFAULT_SCHEMES", "GROUPS"]
