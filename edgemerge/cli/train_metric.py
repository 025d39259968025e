"""`edgemerge train-metric`: learn the merge metric of a plan's sites on a folder of images."""

from __future__ import annotations

import time

import click

from edgemerge.cli import console as make_console, main
from edgemerge.cli.options import resolution_option


def _finite(ctx, param, value):
    """--lr / --holdout: a number, never nan or inf (click's ranges let nan through)."""
    import math

    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


@main.command("train-metric")
@click.option("--model", "-m", required=True,
              help="A vit-*/deit-* (variant dtem), segformer-* (a *-lm variant) or segmenter-vit-* (algm-lm) model.")
@click.option("--variant", "-v", default=None,
              help="A variant with a learned metric.  [default: the family's: dtem for vit-*/deit-*, fast-pa-lm "
                   "for segformer-*, algm-lm for segmenter-vit-*]")
@click.option("--checkpoint", "-c", required=True, type=click.Path(), help="The frozen backbone's weights.")
@click.option("--images", "-i", required=True, type=click.Path(), help="Folder of training images (no labels needed).")
@click.option("--eval-images", type=click.Path(), default=None,
              help="Folder of images to judge the metric on (none of them a training image). Default: a seeded "
                   "--holdout split of --images, not trained on.")
@click.option("--holdout", type=float, default=0.2, show_default=True, callback=_finite,
              help="Without --eval-images: the fraction of --images held out for judging (seeded by --seed).")
@click.option("--labels", type=click.Path(), default=None,
              help="Segformer: label maps named like the images (lossless, class ids 0..K-1 and 255 = ignore): "
                   "adds cross-entropy to the distillation.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Run folder: checkpoint.pth, train_record.json, "
              "train_state.pth (rerun with the same options to resume).")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Optimizer steps (at most 1000000), default: --epochs over the images.")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Passes over the training images when --steps is not given (at most 1000000 steps in all).")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Images per optimizer step.")
@click.option("--lr", type=float, default=1e-4, show_default=True, callback=_finite,
              help="Peak learning rate (> 0, at most 1); AdamW, cosine to 1e-6 (DTEM's recipe).")
@resolution_option("Input HxW, default: the model's.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the held-out split and of the batch order (a resumed run sees the same batches).")
def train_metric(model: str, variant: str | None, checkpoint: str, images: str, eval_images: str | None,
                 holdout: float, labels: str | None, out: str, steps: int | None, epochs: int, batch: int, lr: float,
                 resolution: tuple[int, int] | None, seed: int) -> None:
    """Train DTEM's merge metric with the backbone frozen (distillation against the unmerged model)."""
    from edgemerge.train.metric import TrainOptions, default_variant, train_metric as run

    variant = variant or default_variant(model)  # an unknown model: one line from the registry
    opts = TrainOptions(model=model, variant=variant, checkpoint=checkpoint, images=images, labels=labels, out=out,
                        eval_images=eval_images, holdout=holdout, steps=steps, epochs=epochs, batch=batch, lr=lr,
                        resolution=resolution, seed=seed)
    with _StepProgress() as progress:
        record = run(opts, progress=progress, note=lambda msg: click.echo(f"edgemerge: {msg}", err=True))
    b, a = record["eval_before"], record["eval_after"]
    click.echo(f"wrote {out}/checkpoint.pth and train_record.json ({record['steps']} steps, "
               f"{record['train_seconds']:.0f} s)")
    click.echo(f"  trained on {record['train_images']} images of {images}; judged on {record['eval_images']} images "
               f"it did not train on ({record['eval_source']}); file lists in train_record.json")
    click.echo(f"  KL to the unmerged model on the judged images, before -> after training: deployed (hard "
               f"merging) {b['hard_kl']:.5f} -> {a['hard_kl']:.5f}, relaxed (soft, trained) {b['soft_kl']:.5f} -> "
               f"{a['soft_kl']:.5f}")
    click.echo(f"  export it: edgemerge export --model {model} --variant {variant} --checkpoint {out}/checkpoint.pth")


class _StepProgress:
    """progress(step, total, loss) on stderr, started at the first step (so that a refusal is the
    only line): a live bar on a terminal; otherwise plain `edgemerge: training ...` lines at the
    first and last step, every tenth of the run and at least every LINE_SECONDS."""

    LINE_SECONDS = 30.0

    def __init__(self):
        self.console = make_console(stderr=True)
        self.bar = None
        self.last_line = 0.0
        self.last_tenth = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False

    def __call__(self, step: int, total: int, loss: float) -> None:
        if self.console.is_terminal:
            if self.bar is None:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.bar = Progress(TextColumn("training metric"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=self.console)
                self.bar.__enter__()
                self.task = self.bar.add_task("train", total=total, loss="-")
            self.bar.update(self.task, completed=step, total=total, loss=f"{loss:.4f}")
            return
        now = time.monotonic()
        tenth = step * 10 // total
        if step in (1, total) or tenth != self.last_tenth or now - self.last_line >= self.LINE_SECONDS:
            click.echo(f"edgemerge: training metric: step {step}/{total}, loss {loss:.4f}", err=True)
            self.last_line, self.last_tenth = now, tenth
