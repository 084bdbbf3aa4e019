"""Takes a run, gives a bundle for a device: Linux (linux: the model, its manifest and the
standalone predict.py of harness.edge) or a microcontroller (mcu: TensorFlow Lite Micro),
from what both share (bundle: errors, staging, the shipped file, manifest and archive).
"""
