"""`edgemerge export`: a merged model to a self-checked bundle (model.onnx with static merge
counts, manifest.json, reference.npz, build_on_device.sh and the plugin sources).

Owns the ONNX export (`exporter`, the op functions in `functions`, fp16 conversion in `fp16`) and
the bundle with its self-check (`bundle`). Imports contracts, device, models, merge (the PyTorch
reference and the family adapters) and trt (the device script); never validate, bench, show, train
or tune.
"""
