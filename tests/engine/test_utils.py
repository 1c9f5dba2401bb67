"""deeplab.utils.atomic_write: temporary files created exclusively under unpredictable names
(a planted symlink is never followed), modes from the umask, a full disk as one error."""
import os
import stat

import pytest

from deeplab.errors import WriteError
from deeplab.utils import IncompleteWrite, atomic_write, current_umask, write_text


def test_a_symlink_planted_under_the_old_temporary_name_is_not_followed(tmp_path):
    """The old helper wrote through PATH.tmp-PID, a name anyone could predict, and followed a
    symlink planted there onto its target (issue 23)."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "run.json"
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        os.symlink(victim, "%s.tmp-%d" % (target, pid))
    seen = []

    def write(tmp):
        seen.append(tmp)
        assert not os.path.islink(tmp) and stat.S_IMODE(os.stat(tmp).st_mode) == 0o600
        with open(tmp, "w") as f:
            f.write("new")

    atomic_write(str(target), write)
    atomic_write(str(target), write)
    assert victim.read_text() == "precious"
    assert target.read_text() == "new" and not target.is_symlink()
    assert seen[0] != seen[1] and all(os.path.dirname(t) == str(tmp_path) for t in seen)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        write_text(str(tmp_path / "a"), "x")
        assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o640
        os.umask(0o022)
        write_text(str(tmp_path / "b"), "x")
        assert stat.S_IMODE(os.stat(tmp_path / "b").st_mode) == 0o644
    finally:
        os.umask(old)


def test_a_write_found_incomplete_is_one_error_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "final.params"
    path.write_text("old")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("cut")
        raise IncompleteWrite("%s differs from the arrays written" % tmp)

    with pytest.raises(WriteError, match="cannot write %s: it did not reach the disk whole"
                       % path):
        atomic_write(str(path), write)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["final.params"]
