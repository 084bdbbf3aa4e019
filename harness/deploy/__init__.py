"""Takes a run, gives a bundle for a device: Linux (linux: the model, its manifest and the
standalone predict.py and device_bench.py of harness.edge) or a microcontroller (mcu:
TensorFlow Lite Micro), from what both share (bundle: errors, staging, the shipped file,
manifest and archive); times a bundle on the user's own device over ssh (device); and
estimates what boards it cannot reach would take (boards: Cortex-M, calibrated on MLPerf
Tiny; npu: Ethos-U, by Arm's Vela).
"""
