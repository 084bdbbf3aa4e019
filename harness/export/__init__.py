"""Takes a run, gives files and measurements: exports to ONNX and TFLite, verified (convert);
the runtimes that run them; the microcontroller footprint; bench records (bench) with MLPerf
Tiny's modes (mlperf).
"""
