"""How close samples are to a known data distribution (a Gaussian mixture, for the oracle)."""
import torch


def mixture_report(mixture, x, labels=None):
    """Component weights, means and stds of samples x, matched to the mixture's components by maximum
    posterior, and the mean exact log-density of the samples beside that of the mixture (−entropy, per dim).

    Samples drawn for classes (``labels``, one per sample) are compared with what they should follow without
    guidance, Σ_c (n_c / N) p(x | c) (the mixture with its class shares set to the labels' shares), and
    ``class_purity`` says which share of them fall in a component of their own class.

    Returns plain floats: weights_tv (total variation of the weights), mean_error (largest per-component
    RMS deviation of the mean, per dimension), std_ratio_error (largest |std / std_true − 1|),
    logp_gap_per_dim (mean log p(samples) − E_p log p, per dimension, estimated from 50k fresh points).
    """
    x = x.detach().double().cpu().reshape(x.shape[0], -1)
    purity = {}
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1)
        purity["class_purity"] = (mixture.classes[mixture.assign(x)] == labels).double().mean().item()
        mixture = mixture.with_class_shares(torch.bincount(labels, minlength=mixture.num_classes).double())
    k, d = len(mixture.weights), mixture.dim
    labels = mixture.assign(x)
    counts = torch.bincount(labels, minlength=k).double()
    weights = counts / counts.sum()
    means = mixture.means.reshape(k, -1)
    mean_err, std_err = 0.0, 0.0
    for j in range(k):
        pts = x[labels == j]
        if len(pts) < 2:
            continue
        mean_err = max(mean_err, ((pts.mean(0) - means[j]).pow(2).mean().sqrt() / mixture.stds[j]).item())
        std = (pts - pts.mean(0)).pow(2).mean().sqrt()
        std_err = max(std_err, abs(std.item() / mixture.stds[j].item() - 1))
    reference = mixture.sample(50_000, torch.Generator().manual_seed(12345), dtype=torch.float64)
    gap = (mixture.log_prob(x).mean() - mixture.log_prob(reference).mean()).item() / d
    return {
        "weights_tv": 0.5 * (weights - mixture.weights).abs().sum().item(),
        "weights": weights.tolist(),
        "mean_error": mean_err,
        "std_ratio_error": std_err,
        "logp_gap_per_dim": gap,
        **purity,
    }


def sliced_wasserstein(x, y, projections=256, generator=None):
    """Sliced 1-Wasserstein distance: the mean over random unit directions θ of W1(θᵀx, θᵀy), each 1-D
    distance from matched quantiles (equal sample sizes). W1 rather than W2: far less dominated by the
    few most extreme points, so its noise floor is lower and steadier."""
    x = x.detach().double().cpu().reshape(x.shape[0], -1)
    y = y.detach().double().cpu().reshape(y.shape[0], -1)
    n = min(len(x), len(y))
    theta = torch.randn(x.shape[1], projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = (x[:n] @ theta).sort(0).values
    py = (y[:n] @ theta).sort(0).values
    return (px - py).abs().mean().item()


def sample_quality(x, data, generator, projections=256, labels=None):
    """For any data set: ``swd``, the sliced Wasserstein distance of the samples to as many fresh data points,
    beside ``swd_floor``, the same between two independent data samples (what a perfect sampler would get);
    where the data's density is known, ``support``, the fraction of samples where it is positive. Samples
    drawn for classes (``labels``) are compared with data points of the same classes in the same numbers."""
    n = len(x)
    draw = (lambda: data.sample(n, generator, dtype=torch.float64)) if labels is None else \
        (lambda: _same_classes(data, torch.as_tensor(labels).reshape(-1), generator))
    a, b = draw(), draw()
    out = {"swd": sliced_wasserstein(x, a, projections, generator),
           "swd_floor": sliced_wasserstein(b, a, projections, generator)}
    if data.has_log_prob:
        out["support"] = torch.isfinite(data.log_prob(x.detach().double().cpu())).double().mean().item()
    return out


def _same_classes(data, labels, generator, rounds=50):
    """Data points with the given labels, in their order, from labelled draws (pools of 2N, at most ``rounds``)."""
    out = torch.empty((len(labels), *data.shape), dtype=torch.float64)
    missing = torch.ones(len(labels), dtype=torch.bool)
    for _ in range(rounds):
        pool, pool_labels = data.sample(2 * len(labels), generator, dtype=torch.float64, labels=True)
        for c in labels[missing].unique():
            want = torch.nonzero(missing & (labels == c)).reshape(-1)
            have = torch.nonzero(pool_labels == c).reshape(-1)[:len(want)]
            out[want[:len(have)]] = pool[have]
            missing[want[:len(have)]] = False
        if not missing.any():
            return out
    raise ValueError(f"the data gave too few points of classes {labels[missing].unique().tolist()} to compare with")


def inpainting_report(mixture, x, known, completions, generator=None):
    """Completions of the points x (N, *shape) whose coordinates ``known`` (mask) were observed, m per point
    in order (N · m, *shape), against the exact conditional of a Gaussian mixture's unknown coordinates
    (GaussianMixture.missing_given_observed):

    - ``inpaint_logp_gap_per_dim``: mean log p(x_u | x_o) of the completions minus that of as many exact
      conditional draws, per unknown coordinate (0 for a perfect sampler, up to sampling noise);
    - ``inpaint_weights_tv``: TV between the components the completions fall in (maximum posterior of the
      completed point) and the components of the exact draws;
    - ``inpaint_known_error``: the largest change to a known coordinate (0: the observation is kept)."""
    n = len(x)
    m = len(completions) // n
    x = x.detach().double().cpu()
    completions = completions.detach().double().cpu()
    rep = x.repeat_interleave(m, 0)
    known = torch.as_tensor(known, dtype=torch.bool).expand(x.shape)
    known_rep = known.repeat_interleave(m, 0) if known.shape[0] == n else known.expand(rep.shape)
    log_prob, _, draw = mixture.missing_given_observed(rep, known_rep)
    exact = draw(generator)
    unknown = (~known_rep).reshape(len(rep), -1).sum(1).double().mean().item()
    k = len(mixture.weights)
    counts = [torch.bincount(mixture.assign(p), minlength=k).double() / len(p) for p in (completions, exact)]
    return {"inpaint_logp_gap_per_dim": ((log_prob(completions) - log_prob(exact)).mean() / unknown).item(),
            "inpaint_weights_tv": 0.5 * (counts[0] - counts[1]).abs().sum().item(),
            "inpaint_known_error": (completions - rep).reshape(len(rep), -1)[known_rep.reshape(len(rep), -1)]
            .abs().max().item()}
