"""The device route's own steps, in Python's standard library: what `build_on_device.sh` needs
besides TensorRT, cmake and CUDA.

A stock JetPack 6 shell has `python3` but none of edgemerge's dependencies, so this package owns,
with nothing but the standard library, every step of the device build that is not TensorRT's own:
TensorRT's ONNX parser rule and the graph it is handed (`parser`), the protobuf surgery that graph
needs without `onnx` (`onnxwire`), the engine's layer count against the merge sites (`layers`), the
GPU probe (`gpu`), the build record (`record`) and the command line the script calls (`cli`).
`edgemerge build` imports the same modules, so script and package share one rule, one record
format and one layer count.

Imports: the standard library, this package, and the standard-library modules of
`edgemerge.contracts` (errors, files, manifest). Export writes the package into the bundle as a
zipapp (`zipapp.build`, file `edgemerge_device.py`); tests/device runs it with `python3 -I -S`.
"""
