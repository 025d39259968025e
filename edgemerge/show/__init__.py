"""`edgemerge show`: the merged token groups over an image, one colour per group.

Subscribes to the merge sites' events (`edgemerge.merge.core.observe`), asks the model's family
adapter which sites to draw, and draws them (`merges`). Imports contracts, models and merge; never
another command package.
"""
