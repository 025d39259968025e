"""`edgemerge tune`: the merge plan that meets the user's target (at most a fidelity drop, or at
least a speed-up) on the user's images and device, found by measuring: a search space derived from
the plan schema (`space`), PyTorch fidelity on the images with the unmerged outputs computed once
(`fidelity`), an Optuna study in a resumable store (`search`), the front exported and timed against
the unmerged model, interleaved, on the chosen backend (`measure`), and the outputs (`report`).

Sits above the command packages (it drives export and bench): imports contracts, models, merge,
export and bench; nothing imports it but the CLI.
"""
