"""The run harness both trainings share: run folder and checkpoints, resume, metrics, the guarded update
(non-finite skip, out-of-memory split and retry, rollback), learning-rate schedules and seeded streams.

Knows nothing of the objective: a recipe (w2v.train.recipe, w2v.finetune.recipe) supplies its loss and
evaluation and composes these parts into its loop.
"""
