"""Evaluation: confusion matrix and metrics (``metrics``), the evaluation loop over a dataset (``evaluate``)
and its reports: JSON, Markdown and plots (``reports``)."""
