"""What every other package shares, and the one owner of each: the bundle's manifest
(`manifest`), the comparison and its limits (`compare`), the op spec of the `edgemerge` ONNX domain
(`opspec`), the ONNX graph helpers (`graphs`), the model identity written into model.onnx
(`identity`), atomic writes and output checks (`files`), image and label reading (`images`),
progress lines (`progress`) and the one exception type (`errors`).

Imports: the standard library, numpy, onnx and Pillow (the latter two only in the modules that read
graphs and images); never torch, never another edgemerge package. `errors`, `files`, `manifest`
and `opspec` stay standard-library-only: the device tool runs them on a bare JetPack python3.
"""
