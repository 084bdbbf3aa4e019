"""Takes a run, gives a bundle for a device: Linux (linux, with the standalone device/predict.py) or a microcontroller (mcu)."""
