"""Takes a config and a Dataset, gives a run folder: the models and their layers, what they
learn from (targets: labels, a teacher, mixup), training with callbacks (fit), evaluation,
and the sparsified, pruned and structurally pruned variants of a run.
"""
