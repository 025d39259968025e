"""Does edgemerge's ALGM merge the same tokens as the authors' code (tue-mps/algm-segmenter)?

Reads the authors' two merge functions from a fetched copy of their repository at run time
(`algm/algm/local_merge.py::conditional_pooling` + `merge_wavg`, `algm/algm/global_merge.py::
turbo_matching`; nothing of theirs is copied into this repository) and runs them beside
edgemerge's ALGM merge hook (`patch.MergingBlock.reduce_tokens`, adaptive counts, i.e. the paper's
mode) on structured inputs: a smooth random field over a 16x16 patch grid (plus a few flat
regions) with noise, CLS first. For the local step, the global step, and the two in sequence (with
a permutation-equivariant token mixer between them, as the ViT blocks between layers 1 and 5 are),
it compares the merged token sets: every output token as the group of original positions it holds.
"same order" also requires the output sequences to list the groups in the same order, which is what
the global step's alternating split depends on. The last column reorders edgemerge's sequence
after the local step into the layout it had before issue #23 ([kept tokens in index order, merged
windows in window order]) to show what that order did to the global step.

    python benchmarks/algm_equivalence.py /path/to/algm-segmenter [--rev HEAD] [--trials 6]

The path is a checkout or a git directory (bare or not; `--rev` picks the commit). The authors'
code needs `einops`; it calls `.cuda()` on one constant, which this script makes the identity so
that everything runs on the CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgemerge.merge.patch import GlobalSite, MergingBlock, WindowSite  # noqa: E402
from edgemerge.models.tokens import TokenState  # noqa: E402

FILES = {"local": "algm/algm/local_merge.py", "global": "algm/algm/global_merge.py"}


def read_source(repo: Path, rel: str, rev: str) -> str:
    """The file `rel` of the authors' repository: from the work tree if there is one, else git."""
    for candidate in (repo / rel, repo / rel.split("/", 1)[1]):
        if candidate.is_file():
            return candidate.read_text()
    proc = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{rel}"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cannot read {rel} from {repo} at {rev}: {proc.stderr.strip()}")
    return proc.stdout


def load_authors(repo: Path, rev: str) -> SimpleNamespace:
    mods = {}
    for key, rel in FILES.items():
        mod = types.ModuleType(f"algm_{key}")
        mod.__file__ = f"{repo}/{rel}"
        try:
            exec(compile(read_source(repo, rel, rev), mod.__file__, "exec"), mod.__dict__)
        except ModuleNotFoundError as e:
            raise SystemExit(f"the authors' code needs {e.name}: pip install {e.name}") from e
        mods[key] = mod
    return SimpleNamespace(conditional_pooling=mods["local"].conditional_pooling,
                           merge_wavg=mods["local"].merge_wavg, merge_source=mods["local"].merge_source,
                           turbo_matching=mods["global"].turbo_matching)


# --- inputs ------------------------------------------------------------------------------------

def structured_tokens(B: int, grid: int, C: int, noise: float, seed: int) -> torch.Tensor:
    """[B, 1 + grid^2, C]: CLS, then a smooth field (low spatial frequencies) with a few flat
    rectangles (regions of one colour, where whole windows are near-identical), plus noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")
    out = []
    for _ in range(B):
        field = torch.zeros(grid, grid, C)
        for _ in range(4):  # four random low-frequency waves per channel
            f = torch.rand(2, C, generator=g) * 0.5
            phase = torch.rand(C, generator=g) * 6.283
            field += torch.cos(yy[..., None] * f[0] + xx[..., None] * f[1] + phase) * torch.randn(C, generator=g)
        for _ in range(3):  # flat regions
            y0, x0 = (int(v) for v in torch.randint(0, grid - 4, (2,), generator=g))
            h, w = (int(v) for v in torch.randint(3, 8, (2,), generator=g))
            field[y0:y0 + h, x0:x0 + w] = torch.randn(C, generator=g) * 2
        field += noise * torch.randn(grid, grid, C, generator=g)
        cls = torch.randn(1, C, generator=g)
        out.append(torch.cat([cls, field.reshape(grid * grid, C)]))
    return torch.stack(out)


def mixer(C: int, seed: int):
    """A permutation-equivariant stand-in for the blocks between the two sites: self-attention
    (no position) + a token-wise MLP, both residual. Both sides run the same function."""
    g = torch.Generator().manual_seed(seed)
    wq, wk, w1, w2 = (torch.randn(C, C, generator=g) / C ** 0.5 for _ in range(4))

    def f(x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax((x @ wq) @ (x @ wk).transpose(1, 2) / C ** 0.5, dim=-1)
        x = x + 0.5 * (a @ x)
        return x + 0.5 * torch.tanh(x @ w1) @ w2

    return f


# --- the two sides -----------------------------------------------------------------------------

class Authors:
    def __init__(self, fns: SimpleNamespace, threshold: float, layer: int):
        self.fns, self.threshold, self.layer = fns, threshold, layer
        self.source = None  # [B, N', N0] membership, as their merge_source tracks it
        self.size = None

    def local(self, x):
        merge = self.fns.conditional_pooling(x, self.threshold, (2, 2))
        self.source = self.fns.merge_source(merge, x, self.source)
        x, self.size = self.fns.merge_wavg(merge, x, self.size)
        return x

    def global_(self, x):
        src = self.source if self.source is not None else torch.eye(x.shape[1])[None].expand(x.shape[0], -1, -1)
        merge = self.fns.turbo_matching(x, self.layer, src, class_token=True, distill_token=False)
        self.source = self.fns.merge_source(merge, x, self.source)
        x, self.size = self.fns.merge_wavg(merge, x, self.size)
        return x

    def groups(self, n0: int) -> list[list[frozenset[int]]]:
        if self.source is None:
            return [[frozenset([i]) for i in range(n0)]]
        return [[frozenset(torch.nonzero(row > 0).flatten().tolist()) for row in item] for item in self.source]


class Ours:
    def __init__(self, grid: int, threshold: float, layer: int):
        self.local_site = WindowSite((grid, grid), 0.0, threshold, True, 1)
        self.global_site = GlobalSite(0.0, layer, True, 1)
        self.state = TokenState()

    def _run(self, site, x):
        blk = SimpleNamespace(em_site=site)  # the hook reads only em_site (and an optional metric)
        x, self.state = MergingBlock.reduce_tokens(blk, x, self.state, None, None)
        return x

    def local(self, x):
        return self._run(self.local_site, x)

    def global_(self, x):
        return self._run(self.global_site, x)

    def reorder_old_layout(self, x):
        """Permute the sequence after the local step into the pre-#23 layout (kept tokens in index
        order, then merged windows in window order), for the comparison column."""
        src = self.state.source  # [B, N0] original position -> current index
        B, n = x.shape[:2]
        perms = []
        for b in range(B):
            members = {}
            for pos, cur in enumerate(src[b].tolist()):
                members.setdefault(cur, []).append(pos)
            kept = sorted((m[0], cur) for cur, m in members.items() if len(m) == 1)
            merged = sorted((m[0], cur) for cur, m in members.items() if len(m) > 1)  # window order
            perms.append([cur for _, cur in kept + merged])
        perm = torch.tensor(perms)
        inverse = torch.empty_like(perm).scatter_(1, perm, torch.arange(n).expand(B, n))
        self.state = TokenState(self.state.size.gather(1, perm[..., None]), inverse.gather(1, src))
        return x.gather(1, perm[..., None].expand(-1, -1, x.shape[-1]))

    def groups(self, n0: int) -> list[list[frozenset[int]]]:
        out = []
        for item in self.state.source.tolist():
            g: dict[int, set[int]] = {}
            for pos, cur in enumerate(item):
                g.setdefault(cur, set()).add(pos)
            out.append([frozenset(g[j]) for j in range(len(g))])
        return out


def compare(a: list[list[frozenset[int]]], b: list[list[frozenset[int]]]) -> tuple[bool, bool]:
    """(same sets, same sets in the same order), over every batch item."""
    same_sets = all(set(x) == set(y) for x, y in zip(a, b))
    return same_sets, a == b


def merged_count(groups: list[list[frozenset[int]]], n0: int) -> int:
    return n0 - min(len(g) for g in groups)


def run_case(fns, B, grid, C, noise, seed, threshold, layer):
    x0 = structured_tokens(B, grid, C, noise, seed)
    n0 = x0.shape[1]
    f = mixer(C, seed + 1000)
    row = {"noise": noise, "seed": seed, "B": B}
    # local step alone
    au, us = Authors(fns, threshold, layer), Ours(grid, threshold, layer)
    xa, xo = au.local(x0), us.local(x0)
    ga, go = au.groups(n0), us.groups(n0)
    row["k"] = (merged_count(ga, n0) // 3, merged_count(go, n0) // 3)
    row["local"] = compare(ga, go)
    row["local_dx"] = float((xa - xo).abs().max()) if xa.shape == xo.shape else float("nan")
    # global step alone, on the unmerged tokens
    au_g, us_g = Authors(fns, threshold, layer), Ours(grid, threshold, layer)
    au_g.global_(f(x0)), us_g.global_(f(x0))
    ga, go = au_g.groups(n0), us_g.groups(n0)
    row["r_alone"] = (merged_count(ga, n0), merged_count(go, n0))
    row["global"] = compare(ga, go)
    # both steps, blocks in between
    xa2, xo2 = au.global_(f(xa)), us.global_(f(xo))
    ga, go = au.groups(n0), us.groups(n0)
    row["r_both"] = (merged_count(ga, n0) - 3 * row["k"][0], merged_count(go, n0) - 3 * row["k"][1])
    row["both"] = compare(ga, go)
    row["both_dx"] = float((xa2 - xo2).abs().max()) if xa2.shape == xo2.shape else float("nan")
    # both steps, with edgemerge's sequence put in the pre-#23 layout after the local step
    old = Ours(grid, threshold, layer)
    xl = old.reorder_old_layout(old.local(x0))
    old.global_(f(xl))
    go = old.groups(n0)
    row["old"] = compare(ga, go)
    row["r_old"] = merged_count(go, n0) - 3 * row["k"][1]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", type=Path, help="a checkout or git directory of tue-mps/algm-segmenter")
    ap.add_argument("--rev", default="HEAD", help="commit to read when REPO is a git directory")
    ap.add_argument("--trials", type=int, default=3, help="seeds per noise level")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--layer", type=int, default=5, help="the global step's layer number (divides the std)")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.3, 0.6])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()

    fns = load_authors(args.repo, args.rev)
    torch.Tensor.cuda = lambda self, *a, **k: self  # their one `.cuda()` constant, on the CPU
    yes = lambda t: "yes" if t else "NO"  # noqa: E731
    head = (f"{'B':>2} {'noise':>5} {'seed':>4} | {'k au/em':>8} {'local sets':>10} {'order':>5} {'max|dx|':>8} | "
            f"{'r au/em':>8} {'global sets':>11} | {'r au/em':>8} {'both sets':>9} {'order':>5} {'max|dx|':>8} | "
            f"{'old layout: r, sets':>19}")
    print(f"ALGM: authors ({args.repo} @ {args.rev}) vs edgemerge; {args.grid}x{args.grid} grid + CLS, C={args.dim}, "
          f"threshold {args.threshold}, global layer {args.layer}, adaptive counts on both sides")
    print(head)
    print("-" * len(head))
    fails = 0
    for B in args.batches:
        for noise in args.noise:
            for seed in range(args.trials):
                r = run_case(fns, B, args.grid, args.dim, noise, seed, args.threshold, args.layer)
                ok = r["local"][0] and r["global"][0] and r["both"][0] and r["local"][1] and r["both"][1]
                fails += not ok
                print(f"{B:>2} {noise:>5.2f} {seed:>4} | {r['k'][0]:>3}/{r['k'][1]:<4} {yes(r['local'][0]):>10} "
                      f"{yes(r['local'][1]):>5} {r['local_dx']:>8.1e} | {r['r_alone'][0]:>3}/{r['r_alone'][1]:<4} "
                      f"{yes(r['global'][0]):>11} | {r['r_both'][0]:>3}/{r['r_both'][1]:<4} {yes(r['both'][0]):>9} "
                      f"{yes(r['both'][1]):>5} {r['both_dx']:>8.1e} | {r['r_old']:>9} {yes(r['old'][0]):>9}")
    print(f"\n{'all cases agree' if not fails else f'{fails} case(s) differ'} (k: windows merged by the local step; "
          "r: sources merged by the global step; sets: the same groups of original positions; order: in the same "
          "sequence order; max|dx|: largest difference of the merged tokens; old layout: edgemerge's global r and "
          "merged sets before #23, against the authors')")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
