"""N workers train and evaluate what one worker does (tiny model, synthetic data, CPU).

`deeplab train` runs for a few steps with global batch 6 on 1, 2 and 3 workers; the saved
parameters must agree. Per array, max |a - b| <= rel * max |a| + 1e-7, with these measured worst
cases (float32; summation order differs with the number of workers):
- synchronized BN under Horovod, 5 steps: 1e-5 of an array's scale (1 vs 2 and 1 vs 3
  workers). Differences grow with training from scratch (1.5e-3 after 10 steps on a 1x1 image-
  pooling branch, whose BN sees 6 values), so few steps are compared; tolerance 2e-4.
- frozen BN (Horovod and parameter server), 4 steps: 4e-7; tolerance 5e-6.
- synchronized BN with its statistics straight over MPI (`deeplab launch horovod --mpi`,
  dist.sync_bn_transport auto), groups all, node (one machine: all) and k (k = the number of
  workers): the same tolerance as under Horovod.
Evaluation must give the very same confusion matrix on any number of workers.
"""
import json

import numpy as np
import pytest

from conftest import assert_params_close, horovod, horovod_mpi, ps

COMMON = ["train.iterations=5", "data.synthetic.train_size=24", "data.synthetic.val_size=7",
          "data.num_workers=0", "train.batch_size=6", "train.log_every=1",
          "train.checkpoint_every=1000"]


def train(dl, workdir, launcher=(), overrides=(), no_eval=True):
    args = list(launcher) + ["train", dl.TINY, "--workdir", workdir] + dl.sets(
        *COMMON, *overrides) + (["--no-eval"] if no_eval else [])
    return dl.deeplab(*args, timeout=240)


def test_synchronized_bn_training_is_the_same_on_1_2_and_3_workers(tmp_path, dl):
    for n in (1, 2, 3):
        # Loader processes on 2 workers: forked next to Horovod, and not changing the batches.
        loaders = ["data.num_workers=2"] if n == 2 else []
        out = train(dl, tmp_path / str(n), horovod(n), loaders).stdout
        assert "training on %d worker(s) (dist.backend horovod), global batch 6, synchronized BN"\
            % n in out
    for n in (2, 3):
        assert_params_close(tmp_path / "1" / "final.params", tmp_path / str(n) / "final.params",
                            rel=2e-4)


@pytest.mark.parametrize("runs", [[(2, "all"), (3, "all")], [(3, "node"), (2, "2")]],
                         ids=["all", "node-k"])
def test_synchronized_bn_over_mpi_is_the_same_on_1_2_and_3_workers(tmp_path, dl, runs):
    out = train(dl, tmp_path / "1", horovod(1)).stdout  # the reference: one Horovod worker
    assert "synchronized BN; BN statistics over horovod" in out
    for n, group in runs:
        workdir = tmp_path / ("%d-%s" % (n, group))
        loaders = ["data.num_workers=2"] if n == 2 else []
        out = train(dl, workdir, horovod_mpi(n),
                    [*loaders, "dist.sync_bn_group=%s" % group]).stdout
        bn = "synchronized" if group == "all" else "synchronized (groups: %s)" % group
        assert "training on %d worker(s) (dist.backend horovod), global batch 6, %s BN; " \
            "BN statistics over mpi" % (n, bn) in out, out[-3000:]
        with open(workdir / "run.json") as f:
            info = json.load(f)
        assert info["sync_bn_transport"] == "mpi" and info["world_size"] == n, info
        assert_params_close(tmp_path / "1" / "final.params", workdir / "final.params",
                            rel=2e-4)


def test_frozen_bn_training_under_horovod_is_the_same_as_one_process(tmp_path, dl):
    out = train(dl, tmp_path / "local", overrides=["train.freeze_bn=true"]).stdout
    assert "training on 1 worker(s) (dist.backend local), global batch 6, frozen BN" in out
    for n in (2, 3):
        out = train(dl, tmp_path / str(n), horovod(n), ["train.freeze_bn=true"]).stdout
        assert "training on %d worker(s) (dist.backend horovod), global batch 6, frozen BN" \
            % n in out
        assert_params_close(tmp_path / "local" / "final.params",
                            tmp_path / str(n) / "final.params", rel=5e-6)


@pytest.mark.parametrize("servers", [1, 2])
def test_parameter_server_training_is_the_same_as_one_process(tmp_path, dl, servers):
    frozen = ["train.freeze_bn=true", "train.iterations=4"]
    local = train(dl, tmp_path / "local", overrides=frozen).stdout
    assert "training on 1 worker(s) (dist.backend local), global batch 6, frozen BN" in local
    out = train(dl, tmp_path / "ps", ps(2, servers), frozen).stdout
    assert "training on 2 worker(s) (dist.backend ps), global batch 6, frozen BN" in out
    assert_params_close(tmp_path / "local" / "final.params", tmp_path / "ps" / "final.params",
                        rel=5e-6)


def test_evaluation_gathers_one_confusion_matrix_on_rank_0(tmp_path, dl):
    train(dl, tmp_path / "run", overrides=["train.iterations=6"])
    params = tmp_path / "run" / "final.params"
    results, launched = {}, {}
    for name, launcher, backend, workers in [
            ("local", [], "local", 1), ("hvd2", horovod(2), "horovod", 2),
            ("hvd3", horovod(3), "horovod", 3), ("mpi2", horovod_mpi(2), "horovod", 2),
            ("mpi3", horovod_mpi(3), "horovod", 3), ("ps2", ps(2, 1), "ps", 2)]:
        out = tmp_path / ("%s.json" % name)
        # 7 images: shards of 4+3 and 3+2+2.
        dl.deeplab(*launcher, "eval", dl.TINY, "--checkpoint", params, "--out", out,
                   *dl.sets("data.synthetic.val_size=7", "data.num_workers=0"), timeout=240)
        with open(out) as f:
            results[name] = json.load(f)
        launched[name] = backend, workers
    ref = results["local"]
    assert ref["num_images"] == 7
    assert np.array(ref["confusion_matrix"]).sum() > 0
    for name, res in results.items():
        # Evaluated by the backend and the number of workers launched (one process evaluating
        # alone would compute the same matrix).
        assert (res["run"]["backend"], res["run"]["world_size"]) == launched[name], name
        assert res["num_images"] == 7, name
        assert res["confusion_matrix"] == ref["confusion_matrix"], name
        assert res["mIoU"] == ref["mIoU"] and res["pixAcc"] == ref["pixAcc"], name
        # Each worker's distinct input shapes: its shard's image sizes (one scale).
        shapes = res["input_shapes_per_worker"]
        assert len(shapes) == {"local": 1, "hvd2": 2, "hvd3": 3, "mpi2": 2, "mpi3": 3,
                               "ps2": 2}[name]
        assert min(shapes) >= 1 and ref["input_shapes_per_worker"][0] <= sum(shapes) <= 7
