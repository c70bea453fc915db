"""Verify: efficacy, specificity, fluency and robustness probes, before and after an edit."""
