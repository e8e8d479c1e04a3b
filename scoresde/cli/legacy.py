"""Spellings of the command line from before tasks and evaluations were config groups, translated to today's
with one notice line on stderr, or refused in one line that names the new spelling.

    likelihood=true | ode     +eval=ode       (the documented shorthand: adds the ODE likelihood)
    likelihood=elbo           +eval=elbo
    likelihood=false          ++eval.ode=false ++eval.elbo=false
    eval.fid=true             +eval=fid
    eval.fid_num=N            eval.fid.num=N    (fid_every, fid_cache likewise; fid_weights: eval.fid.features.weights;
                                                 fid_features.KEY: eval.fid.features.KEY)
    eval.classifier=true      +eval=classifier eval.classifier.required=true
    eval.classifier=auto      +eval=classifier
    eval.NAME=false           ++eval.NAME=false (an evaluation off, whether or not it was listed)
    eval=[a,b] +eval=c        eval=[a,b,c]      (today's spelling too: Hydra drops an addition beside a list)
    inpaint.KEY=VALUE         task.KEY=VALUE
"""
import re
import sys

from sde.errors import ConfigError

SHORTHAND = {"true": ["+eval=ode"], "ode": ["+eval=ode"], "elbo": ["+eval=elbo"],
             "false": ["++eval.ode=false", "++eval.elbo=false"]}
FID_KEYS = {"fid_num": "eval.fid.num", "fid_every": "eval.fid.every", "fid_cache": "eval.fid.cache",
            "fid_weights": "eval.fid.features.weights"}


def translate_one(arg, evaluations):
    """(today's spelling of one argument as a list, whether it was an old spelling)."""
    m = re.fullmatch(r"([+~]*)([\w.]+)=(.*)", arg)
    if not m:
        return [arg], False
    prefix, key, value = m.groups()
    low = value.strip().lower()
    if key == "likelihood" and not prefix:
        if low not in SHORTHAND:
            if "," in value:
                raise ConfigError(f"likelihood={value} cannot be swept: sweep over the evaluations instead, "
                                  "e.g. 'eval=[quality],[quality,ode]'", "likelihood")
            raise ConfigError(f"likelihood={value!r} is unknown: choose one of false, true (the ODE likelihood), elbo",
                              "likelihood")
        return SHORTHAND[low], False
    if key.startswith("eval.fid_features."):
        return [f"{prefix}eval.fid.features.{key[len('eval.fid_features.'):]}={value}"], True
    if prefix:
        return [arg], False
    if key == "eval.fid" and low in ("true", "false"):
        return (["+eval=fid"] if low == "true" else ["++eval.fid=false"]), True
    if key.startswith("eval.") and key[5:] in FID_KEYS:
        return [f"{FID_KEYS[key[5:]]}={value}"], True
    if key == "eval.classifier" and low in ("true", "auto"):
        return ["+eval=classifier"] + (["eval.classifier.required=true"] if low == "true" else []), True
    if key.startswith("eval.") and key[5:] in evaluations and low == "false":
        return [f"++{key}=false"], False
    if key.startswith("inpaint."):
        return [f"task.{key[len('inpaint.'):]}={value}"], True
    return [arg], False


def translate(argv, evaluations, notice=True):
    """``argv`` in today's spellings (``evaluations``: the names in conf/eval/); the old spellings it held are
    named in one notice line on stderr."""
    out, old = [], []
    for arg in argv:
        new, was_old = translate_one(arg, evaluations)
        out += new
        if was_old:
            old.append(f"{arg} -> {' '.join(new)}")
    out = fold_additions(out)
    if old and notice:
        print(f"note: old spellings translated: {'; '.join(old)}", file=sys.stderr)
    return out


def fold_additions(argv):
    """``+eval=NAME`` beside a list ``eval=[...]`` joins the list (Hydra would drop it: a list choice replaces the
    group's whole default, additions included)."""
    lists = [i for i, a in enumerate(argv) if re.fullmatch(r"eval=\[[^\]]*\]", a)]
    if not lists:
        return argv
    added = [a for a in argv if re.fullmatch(r"\+eval=\[?[\w,\s]*\]?", a)]
    names = [n for n in re.split(r"[\[\],\s]+", argv[lists[-1]][5:]) if n]
    for a in added:
        names += [n for n in re.split(r"[\[\],\s]+", a[6:]) if n and n not in names]
    folded = f"eval=[{','.join(names)}]"
    return [folded if i == lists[-1] else a for i, a in enumerate(argv) if a not in added]
