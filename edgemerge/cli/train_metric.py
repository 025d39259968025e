"""`edgemerge train-metric`: learn the merge metric of a plan's sites on a folder of images."""

from __future__ import annotations

import click

from edgemerge.cli import main
from edgemerge.cli.options import resolution_option


@main.command("train-metric")
@click.option("--model", "-m", required=True,
              help="A vit-*/deit-* (variant dtem), segformer-* (a *-lm variant) or segmenter-vit-* (algm-lm) model.")
@click.option("--variant", "-v", default="dtem", show_default=True, help="A variant with a learned metric.")
@click.option("--checkpoint", "-c", required=True, type=click.Path(), help="The frozen backbone's weights.")
@click.option("--images", "-i", required=True, type=click.Path(), help="Folder of training images (no labels needed).")
@click.option("--eval-images", type=click.Path(), default=None,
              help="Folder of images to judge the metric on (none of them a training image). Default: a seeded "
                   "--holdout split of --images, not trained on.")
@click.option("--holdout", type=float, default=0.2, show_default=True,
              help="Without --eval-images: the fraction of --images held out for judging (seeded by --seed).")
@click.option("--labels", type=click.Path(), default=None,
              help="Segmentation label maps named like the images: adds cross-entropy to the distillation.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Run folder: checkpoint.pth, train_record.json, "
              "train_state.pth (rerun with the same options to resume).")
@click.option("--steps", type=int, default=None, help="Optimizer steps, default: --epochs over the images.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--batch", type=int, default=8, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True, help="AdamW, cosine to 1e-6 (DTEM's recipe).")
@resolution_option("Input HxW, default: the model's.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_metric(model: str, variant: str, checkpoint: str, images: str, eval_images: str | None, holdout: float,
                 labels: str | None, out: str, steps: int | None, epochs: int, batch: int, lr: float,
                 resolution: tuple[int, int] | None, seed: int) -> None:
    """Train DTEM's merge metric with the backbone frozen (distillation against the unmerged model)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from edgemerge.train.metric import TrainOptions, train_metric as run

    opts = TrainOptions(model=model, variant=variant, checkpoint=checkpoint, images=images, labels=labels, out=out,
                        eval_images=eval_images, holdout=holdout, steps=steps, epochs=epochs, batch=batch, lr=lr,
                        resolution=resolution, seed=seed)
    console = Console(stderr=True)
    with Progress(TextColumn("training metric"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("train", total=None, loss="-")
        record = run(opts, progress=lambda step, total, loss: bar.update(task, completed=step, total=total,
                                                                           loss=f"{loss:.4f}"))
    b, a = record["eval_before"], record["eval_after"]
    click.echo(f"wrote {out}/checkpoint.pth and train_record.json ({record['steps']} steps, "
               f"{record['train_seconds']:.0f} s)")
    click.echo(f"  trained on {record['train_images']} images of {images}; judged on {record['eval_images']} images "
               f"it did not train on ({record['eval_source']}); file lists in train_record.json")
    click.echo(f"  KL to the unmerged model on the judged images, before -> after training: deployed (hard "
               f"merging) {b['hard_kl']:.5f} -> {a['hard_kl']:.5f}, relaxed (soft, trained) {b['soft_kl']:.5f} -> "
               f"{a['soft_kl']:.5f}")
    click.echo(f"  export it: edgemerge export --model {model} --variant {variant} --checkpoint {out}/checkpoint.pth")
