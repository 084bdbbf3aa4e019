"""CIFAR-10 in: downloads, imports and validates the archive, caches it, splits it (cifar);
writes tiny archives in the official format for tests (synthetic). Gives a Dataset.
"""
