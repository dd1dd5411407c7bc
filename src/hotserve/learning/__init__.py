"""Continuous learning: prediction log, feedback store, learner, trainers (docs/learning.md)."""
