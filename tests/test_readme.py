"""The README's commands: every ``python run.py ...`` line passes the command line's checks (its spellings are
today's or translated), and each that finishes in seconds runs, in this process, with tiny sizes appended."""
import re
import shlex
from pathlib import Path

import pytest

from scoresde.cli.args import check_group_choices, check_override_keys
from scoresde.cli.legacy import translate
from scoresde.cli.main import evaluation_names
from scoresde.paths import config_dir
from test_run import run_job

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train.steps=5", "train.batch_size=64", "train.progress=false"]
SAMPLE = ["sample.num=100", "sample.max_range=0", "solver.steps=10"]
ODE = ["eval.num=20", "eval.ode.method=rk4", "eval.ode.steps=4", "eval.ode.max_error=0"]
IMAGES = ["model.net.channels=8", "model.net.num_res_blocks=1", "model.net.attention_resolutions=[]",
          "train.batch_size=8", "sample.num=16", "eval.classifier=false"]
NOT_HERE = ("ckpt=", "data.path=", "-m", "--help", "+eval=fid", "data.dim=64")  # a file, a sweep, help, weights


def readme_commands():
    """Each ``python run.py`` line of the README's bash blocks (continuations joined, comments cut) as argv."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("python run.py"):
                commands.append(shlex.split(line)[2:])
    return commands


CARD = [["sde=vp", "solver=pc"], ["solver=ode", "likelihood=true"]]
COMMANDS = readme_commands()
COMMANDS += [c for c in CARD if c not in COMMANDS]


def test_the_readme_shows_the_cards_commands():
    text = (ROOT / "README.md").read_text()
    assert all(f"python run.py {' '.join(c)}" in text for c in CARD)


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c) or "(default)" for c in COMMANDS])
def test_every_readme_command_passes_the_command_line_checks(argv):
    argv = translate(argv, evaluation_names(), notice=False)
    check_group_choices(argv, config_dir())
    check_override_keys([a for a in argv if a not in ("-m", "--help")], config_dir())


def quick(argv):
    return not any(a.startswith(NOT_HERE) or a in NOT_HERE for a in argv) and not any(
        "cifar" in a for a in argv)


RUNNABLE = [c for c in COMMANDS if quick(c)]


def sized(argv):
    """The command with tiny sizes appended: a few training steps and samples, a coarse likelihood, a tiny
    network for images; only keys of the groups the command picks."""
    cfg = " ".join(argv)
    extra = ([] if "model=oracle" in cfg else TRAIN) + SAMPLE
    if "solver=ode" in cfg:
        extra.append("solver.method=rk4")
    if re.search(r"likelihood=(true|ode)|eval=ode|experiment=digits", cfg) or re.search(r"eval=\[.*ode", cfg):
        extra += ODE
    if "elbo" in cfg:
        extra += ["eval.num=20", "eval.elbo.draws=8"]
    if "task=" in cfg:
        extra += ["task.num=4", "task.completions=2"]
    if "digits" in cfg:
        extra += IMAGES
    return argv + extra


@pytest.mark.slow
@pytest.mark.parametrize("argv", RUNNABLE, ids=[" ".join(c) or "(default)" for c in RUNNABLE])
def test_each_quick_readme_command_runs(argv, tmp_path):
    metrics = run_job(tmp_path, *sized(argv))
    assert (tmp_path / "metrics.json").exists() and metrics


def options_table():
    """(key, the README's default) for each option of the README's options table that names config keys: a row
    `key`, `.other`, ... | d1, d2, ... gives one pair per key (a leading dot continues the first key's group)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("### Options"):].split("\n\n", 2)[1]
    pairs = []
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        keys = re.findall(r"`([a-z_.]+)`", cells[0])
        if not keys or "=" in cells[0] or not re.fullmatch(r"`[a-z_.]+`(, `[a-z_.]+`)*", cells[0]):
            continue
        group = keys[0].rsplit(".", 1)[0]
        keys = [group + k if k.startswith(".") else k for k in keys]
        defaults = [d.strip().strip("`") for d in cells[1].split(", ")]
        if len(defaults) == len(keys):
            pairs += list(zip(keys, defaults))
    return pairs


def test_the_options_table_states_the_config_defaults():
    """Every default the README's options table states is the composed config's value of that key."""
    import yaml
    from omegaconf import OmegaConf

    from scoresde.cli.main import compose

    cfg, _ = compose([])
    pairs = options_table()
    wrong, checked = [], 0
    for key, stated in pairs:
        actual = OmegaConf.select(cfg, key, default="<missing>")
        if actual == "<missing>" or OmegaConf.is_config(actual):
            continue
        if isinstance(actual, (int, float)) and not isinstance(actual, bool):
            try:
                same = float(stated) == float(actual)
            except ValueError:
                same = False
        else:
            same = yaml.safe_load(stated) == actual
        checked += 1
        if not same:
            wrong.append(f"{key}: README {stated!r}, config {actual!r}")
    assert checked > 30 and not wrong, (checked, wrong)
