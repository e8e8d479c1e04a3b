"""Training callbacks: objects the trainer calls every ``every`` steps as ``callback(step, ema_model)`` on every
process (scoresde.training.trainer.collective_callback)."""
from scoresde.evaluation import plot_samples
from scoresde.pipeline import Pipeline
from scoresde.training import distributed
from solvers.fitting import fallback


class TrainingPictures:
    """train.sample_every: at those steps the same prior points (the "pictures" stream: 64 for images, else up to
    sampling.num and at most 1000) sampled with the run's solver (a grid still to be fitted on its plain fallback
    grid, so no picture fits) into samples_step{N}.png; every process samples
    its share, the main process draws the picture."""

    def __init__(self, every, sde, data, context):
        self.every, self.sde, self.data, self.context = every, sde, data, context
        self.num = 64 if len(data.shape) == 3 else min(context.sampling.num, 1000)

    def __call__(self, step, ema_model):
        c = self.context
        x = Pipeline(self.sde, ema_model, self.data, c.device).sample(
            self.num, fallback(c.solver), batch=c.sampling.batch, generator=c.seeds.generator("pictures", c.device))
        if distributed.is_main_process():
            plot_samples(x.cpu().numpy(), c.out / f"samples_step{step}.png", title=f"step {step}\n{c.solver!r}",
                         value_range=self.data.value_range)
