"""`edgemerge validate`: an exported artifact (ONNX file or TensorRT engine) against the PyTorch
model, merge decisions included, with a report.

Importable without torch and TensorRT: the reference falls back to the bundle's reference.npz,
and TensorRT is imported only to run an engine. Imports contracts, device, models, merge and trt;
never another command package.
"""
