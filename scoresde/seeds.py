"""Every random stream of a run, named, each seeded from the run's seed by a fixed offset, so that a result is
reproducible and adding a stream changes no other."""
import torch

STREAMS = {
    "solver": 0,            # the task's prior draws and solver noise, continued by the likelihood evaluations
    "test_points": 1,       # the held-out points of the likelihood evaluations (and their labels)
    "reference_plot": 2,    # the data points drawn beside the samples in samples.png
    "scale_check": 3,       # the data draw of the scale warning
    "range_check": 4,       # the data draw that sets the largest magnitude of the sample range check
    "quality": 5,           # the fresh data points and projections of the sliced Wasserstein distance
    "classifier": 6,        # the classifier's training draws and its real and noise references
    "inpaint_points": 7,    # the held-out points that task=inpaint or colorize completes
    "inpaint_report": 8,    # the draws of the exact conditional in the inpainting report
    "fid": 9,               # the prior draws and solver noise of the FID samples
    "prdc": 10,             # the data points that the samples' precision, recall, density and coverage compare with
    "protocol": 11,         # the seeds of task=fid_protocol's sample sets (its seed i draws from this stream + i)
    "pictures": 0,          # the prior draws of the training pictures (the same points at every step)
    "fid_reference": 0,     # the training images drawn for FID's reference statistics
}


class Seeds:
    """The seeds of a run's named streams: ``seeds["quality"] == seed + STREAMS["quality"]``."""

    def __init__(self, seed):
        self.seed = int(seed)

    def __getitem__(self, name):
        if name not in STREAMS:
            raise KeyError(f"{name!r} is not a random stream of a run: the streams are {', '.join(STREAMS)}")
        return self.seed + STREAMS[name]

    def generator(self, name, device="cpu"):
        """A torch.Generator on ``device`` seeded for the stream ``name``."""
        return torch.Generator(device).manual_seed(self[name])

    def __repr__(self):
        return f"Seeds({self.seed})"
