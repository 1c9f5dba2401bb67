"""`deeplab plot`: several runs drawn against each other, a results file's confusion matrix,
and bad inputs in one line."""
import json

import matplotlib.image
import numpy as np
import pytest

from deeplab import cli
from deeplab.record import RunRecord

# matplotlib's first two default colours (tab:blue, tab:orange), as RGB in [0, 1]
C0, C1 = np.array([0x1f, 0x77, 0xb4]) / 255, np.array([0xff, 0x7f, 0x0e]) / 255


def fake_run(workdir, iterations, lr):
    """A run directory whose metrics.jsonl is written by the run's own recorder."""
    workdir.mkdir()
    record = RunRecord(str(workdir), main=True)
    for it in range(4, iterations + 1, 4):
        record.write({"kind": "train", "iter": it, "loss": 1.0 / it, "lr": lr * (1 - it / 40),
                      "mIoU": it / 50})
    record.write({"kind": "val", "iter": iterations, "pixAcc": 0.9, "mIoU": 0.5,
                  "num_images": 4})
    record.close()
    return workdir


def has_colour(png, rgb, tol=0.02):
    img = matplotlib.image.imread(str(png))[..., :3]
    return bool((np.abs(img - rgb).max(axis=-1) < tol).any())


def test_several_runs_are_drawn_against_each_other(tmp_path, capsys):
    a, b = fake_run(tmp_path / "lr01", 20, 0.1), fake_run(tmp_path / "lr02", 32, 0.2)
    out = tmp_path / "compare.png"
    assert cli.main(["plot", "--workdir", str(a), "--workdir", str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lr01: 5 training intervals, 1 evaluations" in printed
    assert "lr02: 8 training intervals, 1 evaluations" in printed
    assert has_colour(out, C0) and has_colour(out, C1)
    one = tmp_path / "one.png"
    assert cli.main(["plot", "--workdir", str(a), "--out", str(one)]) == 0
    assert has_colour(one, C0) and not has_colour(one, C1)


def test_several_runs_need_out_and_a_missing_run_is_named(tmp_path, capsys):
    a = fake_run(tmp_path / "a", 8, 0.1)
    assert cli.main(["plot", "--workdir", str(a), "--workdir", str(a)]) == 2
    assert "give --out" in capsys.readouterr().err
    assert cli.main(["plot", "--workdir", str(a), "--workdir", str(tmp_path / "typo"),
                     "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "typo" in err and "metrics.jsonl does not exist" in err
    assert not (tmp_path / "x.png").exists()


def test_the_old_positional_dir_still_works_with_a_deprecation_note(tmp_path, capsys):
    a = fake_run(tmp_path / "a", 8, 0.1)
    assert cli.main(["plot", str(a)]) == 0
    assert "deprecated; write --workdir %s" % a in capsys.readouterr().err
    assert (a / "curves.png").is_file()


def test_confusion_matrix_of_a_results_file(tmp_path, capsys):
    res = {"class_names": ["background", "square", "circle"], "mIoU": 0.6, "pixAcc": 0.8,
           "confusion_matrix": [[50, 0, 0], [0, 30, 10], [5, 0, 0]]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(res))
    assert cli.main(["plot", "--confusion", str(path)]) == 0
    assert "(3 classes)" in capsys.readouterr().out
    png = tmp_path / "confusion.png"
    # Row shares: background's and square->square's cells are dark (1.0, 0.75), circle's
    # diagonal is empty (0): the darkest colour of the map is drawn.
    from matplotlib import cm

    assert has_colour(png, np.array(cm.get_cmap("Blues")(1.0)[:3]))
    img = matplotlib.image.imread(str(png))
    assert img.shape[0] >= 400 and img.shape[1] >= 400


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not a results file"),
    ('{"class_names": ["a", "b"], "confusion_matrix": [[1, 2]]}', "is not 2 x 2"),
])
def test_a_bad_results_file_is_one_line(tmp_path, capsys, content, words):
    path = tmp_path / "r.json"
    path.write_text(content)
    assert cli.main(["plot", "--confusion", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deeplab plot: error: %s" % path) and words in err
    assert err.count("\n") == 0
