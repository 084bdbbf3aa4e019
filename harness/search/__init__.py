"""Takes a config and a search space, gives a tuning folder and its best runs: learning-rate
sweeps (sweep), the space and its KerasTuner HyperModel (space), searches local or chief +
workers (tune, with KerasTuner's private touches fenced in kerastuner), within a device
budget (budget).
"""
