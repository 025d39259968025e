"""`edgemerge bench`: a merged artifact against its baseline, interleaved, on TensorRT, ONNX
Runtime or PyTorch: latency, throughput, the speed-up, power on Jetson.

Importable without torch or TensorRT (only the torch backend and `--unmerged` exports need torch).
Imports contracts, device, models, merge and trt; never another command package (the CLI hands it
the exporter for `--unmerged`).
"""
