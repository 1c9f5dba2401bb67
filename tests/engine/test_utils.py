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


def _swap_in_a_symlink(folder, victim):
    """What an attacker with write access to the folder would do mid-write: replace the
    temporary file's name with a symlink to `victim`."""
    (tmp,) = [n for n in os.listdir(folder) if n.endswith(".tmp")]
    os.remove(os.path.join(folder, tmp))
    os.symlink(victim, os.path.join(folder, tmp))


def test_writing_through_the_descriptor_never_follows_a_symlink_swapped_in(tmp_path):
    """fileobj=True: the data, fsync and mode go through mkstemp's descriptor, so a symlink put
    at the temporary name meanwhile is neither written through nor chmodded nor renamed onto
    the target."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(victim, 0o600)
    target = tmp_path / "run.json"
    target.write_text("old")

    def write(f):
        _swap_in_a_symlink(str(tmp_path), str(victim))
        f.write(b"new")

    with pytest.raises(WriteError, match="its temporary file .* was replaced while it was "
                                         "being written"):
        atomic_write(str(target), write, fileobj=True)
    assert victim.read_text() == "precious" and stat.S_IMODE(os.stat(victim).st_mode) == 0o600
    assert target.read_text() == "old" and not target.is_symlink()
    assert sorted(os.listdir(tmp_path)) == ["run.json", "victim"]
    atomic_write(str(target), lambda f: f.write(b"new"), fileobj=True)  # undisturbed: written
    assert target.read_text() == "new"


def test_a_symlink_swapped_in_after_a_write_by_name_is_not_chmodded_or_renamed(tmp_path):
    """A writer that needs a name (MXNet's) writes by name; the fsync and mode then go through
    the name reopened with O_NOFOLLOW, which refuses a symlink (os.chmod would have changed
    the victim's mode)."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.chmod(victim, 0o600)
    target = tmp_path / "final.params"

    def write(tmp):
        with open(tmp, "w") as f:
            f.write("new")
        _swap_in_a_symlink(str(tmp_path), str(victim))

    with pytest.raises(WriteError, match="was replaced while it was being written"):
        atomic_write(str(target), write)
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600 and victim.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["victim"]
