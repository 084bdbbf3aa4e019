"""Takes a config and a search space, gives a tuning folder and its best runs: KerasTuner
searches (tune), local or chief + workers, within a device budget (budget).
"""
