"""The shared core every stage stands on: settings (config), the run folder and its records
(records, schemas), the machine (hardware) and a model's input contract (contract). Imports
no other stage.
"""
