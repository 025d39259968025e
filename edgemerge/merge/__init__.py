"""Token merging: reference ops, ToMe-shaped matching, merge plans and the model patch.

Imports only torch (and the zoo's module classes it patches).
"""

from edgemerge.merge.core import MergeFns, alternating, bipartite_match, grid, window_match
from edgemerge.merge.patch import apply_merging, remove_merging
from edgemerge.merge.counts import resolve
from edgemerge.merge.plan import MergePlan, get_plan

__all__ = ["MergeFns", "alternating", "bipartite_match", "grid", "window_match", "apply_merging",
           "remove_merging", "MergePlan", "get_plan", "resolve"]
