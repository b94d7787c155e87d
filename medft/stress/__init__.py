"""Stress tests: how a model's Dice falls as its inputs are perturbed (``medft stress``)."""
