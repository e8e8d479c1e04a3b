"""A residual MLP for vector (or flattened) data, conditioned on time."""
import math

from torch import nn

from sde.errors import check_choice, check_int, invalid

from .embedding import batch_times, check_labels, label_embedding, time_embedding

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def event_shape(shape):
    """A data shape from an int, a tuple or a Hydra ListConfig, as a tuple of positive ints."""
    try:
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise invalid("shape", shape, "a tuple of positive integers") from None
    if not shape or min(shape) < 1:
        raise invalid("shape", shape, "a tuple of positive integers")
    return shape


def make_activation(name):
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """net(x, t, y) for x of shape (N, *shape): a residual MLP on the flattened x, time (and the class y, with
    ``num_classes``) added into every block.

        c   = act(W_c e(t) + E y)                  e: Fourier or sinusoidal embedding of size embed_dim;
                                                   E: a class embedding (class num_classes = none), zero at start
        h_0 = W_in x
        h_l = h_{l-1} + W_l act(h_{l-1} + P_l c)   l = 1..depth   (P_l: a per-block projection of c)
        out = W_out act(h_depth)                    W_out starts at zero, so the net starts at 0
    """

    def __init__(self, shape, hidden=256, depth=4, embedding="fourier", embed_dim=128, activation="silu",
                 num_classes=None):
        super().__init__()
        self.shape = event_shape(shape)
        dim, hidden, depth = math.prod(self.shape), check_int("hidden", hidden), check_int("depth", depth, 0)
        embed_dim = check_int("embed_dim", embed_dim)
        self.act = make_activation(activation)
        self.embed = time_embedding(embedding, embed_dim)
        self.time = nn.Linear(embed_dim, embed_dim)
        self.label = label_embedding(num_classes, embed_dim)
        self.num_classes = num_classes
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.cond = nn.ModuleList(nn.Linear(embed_dim, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, t, y=None):
        c = self.time(self.embed(batch_times(t, x)))
        y = check_labels(y, self.num_classes, x)
        if self.label is not None:
            c = c + self.label(y, x)
        c = self.act(c)
        h = self.inp(x.reshape(x.shape[0], -1))
        for block, cond in zip(self.blocks, self.cond):
            h = h + block(self.act(h + cond(c)))
        return self.out(self.act(h)).reshape(x.shape)

