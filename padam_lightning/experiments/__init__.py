"""Experiments of the paper as one command each: sweeps (padam-sweep) and reports (padam-report)."""
