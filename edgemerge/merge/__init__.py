"""Token merging in PyTorch: the reference ops (`ops`), ToMe-shaped matching that returns
merge/unmerge closures and publishes every decision to observers (`core`), merge plans as data
(`plan`), the model patch (`patch`), static counts and FLOPs read off the patched model (`counts`,
`flops`), ALGM calibration (`calibrate`), soft (trainable) merging (`soft`), and the PyTorch
reference a bundle is built from and judged against (`reference`).

Imports torch, contracts and models; never trt or a command package.
"""
