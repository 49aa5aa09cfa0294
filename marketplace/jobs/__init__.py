"""Evaluation jobs: metrics scored chunk by chunk, and signed reports of their results."""
