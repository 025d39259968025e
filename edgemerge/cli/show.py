"""`edgemerge show`: draw the merge decisions of a merged model over an image."""

from __future__ import annotations

from pathlib import Path

import click

from edgemerge.cli import main
from edgemerge.cli.options import resolution_option


@main.command()
@click.option("--model", "-m", required=True, help="Zoo model name (see `edgemerge models`).")
@click.option("--variant", "-v", required=True, help="Merge variant.")
@click.option("--image", "-i", required=True, type=click.Path(), help="Input image.")
@click.option("--checkpoint", "-c", type=click.Path(), default=None, help="Weights (default: random weights).")
@resolution_option("Model input HxW, default: the model's.")
@click.option("--site", type=int, default=None, help="Draw only this merge site (index) to --out.")
@click.option("--all-sites", is_flag=True, help="Every merging block, not only the first of each stage.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of random weights.")
@click.option("--out", "-o", default="merges.png", show_default=True, type=click.Path(),
              help="PNG for site 0; site k goes to <stem>_site<k>.png. Each shows the image at its own size "
                   "with a caption strip (site, legend) below it.")
@click.option("--no-caption", is_flag=True, help="No caption strip: each PNG exactly the image's size (to overlay).")
def show(model, variant, image, checkpoint, resolution, site, all_sites, seed, out, no_caption) -> None:
    """Draw which tokens merged over IMAGE, one PNG per merge site: one colour per merged group
    (touching groups never share one), unmerged tokens clear in a thin grey border."""
    from edgemerge.contracts.images import MIN_IMAGE_SIDE, check_mode, read_image
    from edgemerge.models.registry import get_config
    from edgemerge.show.merges import show_merges

    # the image decodes, is a regular file (a FIFO would block, /dev/zero never ends) and is at
    # least a patch on each side; the checkpoint is a file or a directory: all before the model is built
    check_mode(read_image(image, min_side=max(MIN_IMAGE_SIDE, get_config(model).patch_size)), image)
    if checkpoint is not None:
        from edgemerge.models.checkpoint import check_checkpoint_path

        check_checkpoint_path(checkpoint)
    written = show_merges(model, variant, image, out, checkpoint=checkpoint, resolution=resolution,
                          site=site, seed=seed, all_sites=all_sites, caption=not no_caption)
    if checkpoint is None:  # after the run, so that bad input stays a one-line error
        click.echo(f"note: no --checkpoint: {model} has RANDOM weights (seed {seed}); the merges show the "
                   "mechanism, not what a trained model does", err=True)
    for path, s in written:  # absolute: the default lands in the current directory, say which
        click.echo(f"{Path(path).resolve()}: {s.name}")
