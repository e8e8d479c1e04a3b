"""Where the configs live: inside the installed package, or the checkout's top-level conf/."""
from pathlib import Path


def config_dir():
    """The folder of Hydra configs: scoresde/conf when installed from a wheel, else the checkout's conf/."""
    here = Path(__file__).resolve().parent
    return here / "conf" if (here / "conf").is_dir() else here.parent / "conf"
