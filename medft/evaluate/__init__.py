"""Evaluation: inference, metrics per case, summaries with confidence intervals, reports."""
