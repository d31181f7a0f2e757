"""MOU terms as code: the policy model, its loader and validator, the evaluator and explanations.

Pure: no I/O beyond parsing text handed in, no settings, no database; ``now`` is a parameter.
"""
