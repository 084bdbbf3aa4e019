"""The shared core every stage stands on: settings (config) and the named recipes (presets),
the run folder and its records (records, schemas), the precisions (precisions), the machine
(hardware) and a model's input contract (contract). Imports no other stage.
"""
