"""`edgemerge train-metric`: a learned merge metric (DTEM's idea) trained with the backbone frozen,
through the family adapter's soft (differentiable) forward.

Imports contracts, models and merge; never another command package.
"""
