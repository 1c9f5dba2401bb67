"""requirements/tensorboard.txt, the optional TensorBoard viewer, installs beside the pinned
stack without changing it (pip would otherwise upgrade or downgrade a shared package such as
protobuf, which tensorboardX writes the runs' events with), and scripts/setup_env.sh installs it
when asked (DEEPLAB_TENSORBOARD=1), also into an environment made earlier."""
import glob
import importlib.metadata
import os
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import ROOT

REQUIREMENTS = os.path.join(ROOT, "requirements")
TENSORBOARD = os.path.join(REQUIREMENTS, "tensorboard.txt")
# tensorboard 2.16.2's Requires-Dist, as its wheel's METADATA lists them: what pip checks our
# pins against. The installed package's own metadata is used instead when it is installed.
TENSORBOARD_VERSION = "2.16.2"
TENSORBOARD_REQUIRES = [
    "absl-py >=0.4", "grpcio >=1.48.2", "markdown >=2.6.8", "numpy >=1.12.0",
    "protobuf !=4.24.0,>=3.19.6", "setuptools >=41.0.0", "six >1.9",
    "tensorboard-data-server <0.8.0,>=0.7.0", "werkzeug >=1.0.1"]
# Present in every virtual environment, not pinned by us.
UNPINNED = {"setuptools"}


def pins(path):
    """{canonical name: version} of a requirements file's NAME==VERSION lines."""
    out = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            req = Requirement(line)
            spec = [s for s in req.specifier if s.operator == "=="]
            if spec:
                out[canonicalize_name(req.name)] = spec[0].version
    return out


def stack_pins():
    """{name: {version: [files]}} over every requirements file but tensorboard.txt."""
    out = {}
    for path in sorted(glob.glob(os.path.join(REQUIREMENTS, "*.txt"))):
        if path != TENSORBOARD:
            for name, version in pins(path).items():
                out.setdefault(name, {}).setdefault(version, []).append(
                    os.path.basename(path))
    return out


def test_tensorboard_pins_do_not_contradict_the_stacks():
    stack, extra = stack_pins(), pins(TENSORBOARD)
    clashes = {name: (version, stack[name]) for name, version in extra.items()
               if name in stack and set(stack[name]) != {version}}
    assert not clashes, "requirements/tensorboard.txt repins %s" % clashes


def test_tensorboards_own_requirements_are_met_by_the_pins():
    extra = pins(TENSORBOARD)
    assert extra["tensorboard"] == TENSORBOARD_VERSION, \
        "record the new version's Requires-Dist in TENSORBOARD_REQUIRES"
    try:
        requires = importlib.metadata.requires("tensorboard") or []
    except importlib.metadata.PackageNotFoundError:
        requires = TENSORBOARD_REQUIRES
    pinned = {name: next(iter(versions)) for name, versions in stack_pins().items()}
    pinned.update(extra)
    for text in requires:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in UNPINNED:
            continue
        assert name in pinned, "tensorboard needs %s, pinned nowhere" % req
        assert req.specifier.contains(pinned[name], prereleases=True), \
            "tensorboard needs %s; requirements pin %s==%s" % (req, name, pinned[name])
    # protobuf is the one the stack shares with it: tensorboardX writes the events with it.
    assert "protobuf" in stack_pins() and "protobuf" not in extra


def test_setup_env_installs_tensorboard_when_asked():
    """Static: DEEPLAB_TENSORBOARD=1 installs requirements/tensorboard.txt, both when the
    environment is made and into one made earlier (the stamp file exists)."""
    text = open(os.path.join(ROOT, "scripts", "setup_env.sh")).read()
    assert re.search(r'^tensorboard=\$\{DEEPLAB_TENSORBOARD:-0\}$', text, re.M)
    body = re.search(r"^install_tensorboard\(\) \{\n(.*?)^\}$", text, re.M | re.S).group(1)
    assert '[ "$tensorboard" = 1 ]' in body
    assert re.search(r'pip\b.*\binstall\b\s*\\?\s*-r "\$root/requirements/tensorboard\.txt"',
                     body, re.S)
    stamp = re.search(r'^if \[ -f "\$stamp" \]; then\n(.*?)^fi$', text, re.M | re.S).group(1)
    assert re.search(r"^\s*install_tensorboard\b", stamp, re.M) and "exit 0" in stamp
    after = text[text.index('"$root/requirements/$variant.txt"'):]
    assert re.search(r"^install_tensorboard$", after, re.M)  # after the stack is installed
    assert "DEEPLAB_TENSORBOARD" in open(os.path.join(ROOT, "docs", "install.md")).read()
