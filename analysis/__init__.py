"""Scaling-law analysis of moe-vs-dense runs: records -> tables -> fitted laws -> comparisons.

Never imports torch: runs and their analysis meet only in the run records (record.json).
"""
