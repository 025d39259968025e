"""The TensorRT backend: the plugins (C++ library loading, `tensorrt.plugin` registration and its
torch implementation), engine builds with their build record checks (`builder`, `record`), the
runtime import (`lib`) and the device script (`device_script`).

Imports without TensorRT (and without torch); a function that needs TensorRT raises
`EdgemergeError` with an install hint when it is called. Imports contracts, device, models and
merge; never a command package.
"""
