"""The study's plumbing (equifast.study) on tiny configurations: data preparation, rotations against an
independent implementation (scipy.ndimage.rotate), augmentation inside the training loop, every model
building and training, and the outputs."""
import argparse
import json

import pytest
import torch

import equifast.study as study
from equifast import groups

pytestmark = pytest.mark.usefixtures("one_thread")


def scipy_rotate(x: torch.Tensor, degrees) -> torch.Tensor:
    """Independent oracle: scipy's bilinear rotation about the centre, zeros outside."""
    nd = pytest.importorskip("scipy.ndimage")
    import numpy as np
    out = [nd.rotate(x[i, 0].double().numpy(), float(degrees[i]), reshape=False, order=1, mode="grid-constant",
                     cval=0.0, prefilter=False) for i in range(x.shape[0])]
    return torch.from_numpy(np.stack(out)).float().unsqueeze(1)


def blobs(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth images (sums of Gaussian blobs inside the central disc), so rotations interpolate well."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    out = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(3):
            cy, cx = (torch.rand(2, generator=gen) - 0.5) * size * 0.5
            out[i, 0] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0)
    return out


def test_prepare_digits_upsamples_pads_and_commutes_with_rot90_and_flip():
    x = torch.rand(5, 1, 8, 8)
    p = study.prepare_digits(x, size=16, digit_size=12)
    assert p.shape == (5, 1, 16, 16)
    assert torch.all(p[..., :2, :] == 0) and torch.all(p[..., -2:, :] == 0) and torch.all(p[..., :, :2] == 0)
    for k in (1, 2, 3):
        torch.testing.assert_close(torch.rot90(p, k, dims=(-2, -1)),
                                   study.prepare_digits(torch.rot90(x, k, dims=(-2, -1)), 16, 12))
    torch.testing.assert_close(p.flip(-1), study.prepare_digits(x.flip(-1), 16, 12))
    with pytest.raises(ValueError, match="--size"):
        study.prepare_digits(x, size=15, digit_size=12)


def test_rotate_matches_scipy_and_the_groups_convention():
    x = torch.rand(4, 1, 16, 16)
    deg = torch.tensor([0.0, 37.5, 123.0, 301.25])
    torch.testing.assert_close(study.rotate(x, deg), scipy_rotate(x, deg), atol=1e-5, rtol=0)
    torch.testing.assert_close(study.rotate(x, torch.full((4,), 90.0)), torch.rot90(x, 1, dims=(-2, -1)),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(study.rotate(x, torch.full((4,), 45.0)), groups.get("C8").act(x, 1),
                               atol=1e-5, rtol=0)


def test_test_sets_are_transformed_by_the_recorded_angles():
    x, y = torch.rand(40, 1, 16, 16), torch.arange(40) % 10
    tests = study.make_test_sets(x, y, seed=3)
    assert set(tests) == set(study.TEST_SETS)
    assert torch.equal(tests["upright"].x, x) and torch.all(tests["upright"].degrees == 0)
    angle = tests["angle"]
    assert angle.degrees.min() >= 0 and angle.degrees.max() < 360 and len(set(angle.degrees.tolist())) == 40
    assert bool(((angle.degrees % 90) > 1).any())
    torch.testing.assert_close(angle.x, scipy_rotate(x, angle.degrees), atol=1e-5, rtol=0)
    k = (tests["rot90"].degrees / 90).long()
    assert set(k.tolist()) == {0, 1, 2, 3}
    assert torch.equal(tests["rot90"].x, torch.stack([torch.rot90(x[i], int(k[i]), (-2, -1)) for i in range(40)]))
    kf = (tests["flip"].degrees / 90).long()
    assert tests["flip"].flipped
    D4 = groups.get("D4")
    assert torch.equal(tests["flip"].x, torch.stack([D4.act(x[i], 4 + int(kf[i])) for i in range(40)]))
    for t in tests.values():
        assert torch.equal(t.y, y)


def test_true_elements_of_each_group():
    deg = torch.tensor([0.0, 44.0, 46.0, 90.0, 180.0, 350.0])
    t = study.TestSet("t", torch.zeros(6, 1, 4, 4), torch.zeros(6, dtype=torch.long), deg, False)
    assert study.true_elements("C4", t).tolist() == [0, 0, 1, 1, 2, 0]
    assert study.true_elements("C8", t).tolist() == [0, 1, 1, 2, 4, 0]
    assert study.true_elements("D4", t).tolist() == [0, 0, 1, 1, 2, 0]
    t.flipped = True
    assert study.true_elements("D4", t).tolist() == [4, 4, 5, 5, 6, 4]
    assert study.true_elements("C4", t) is None


class Recorder(torch.nn.Module):
    """A plain CNN that records the images it is trained on."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
        self.seen = []

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return self.net(x)


def test_rot90_augmentation_rotates_the_training_batches():
    x, y = blobs(6), torch.arange(6)
    model = Recorder()
    study.train_model(model, x, y, steps=4, batch_size=6, lr=1e-3, augment="rot90", seed=0)
    rotations = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])    # [4, 6, 1, 16, 16]
    ks = []
    for batch in model.seen:
        for img in batch:
            match = [(k, j) for k in range(4) for j in range(6) if torch.equal(rotations[k, j], img)]
            assert match, "a training image is not a 90-degree rotation of a training image"
            ks.append(match[0][0])
    assert len(set(ks)) > 1


def test_angle_augmentation_rotates_the_training_batches_by_arbitrary_angles():
    x, y = blobs(4), torch.arange(4)
    model = Recorder()
    study.train_model(model, x, y, steps=2, batch_size=4, lr=1e-3, augment="angle", seed=1)
    grid = torch.arange(0, 360, 0.25)
    candidates = torch.stack([study.rotate(x[j:j + 1].expand(len(grid), -1, -1, -1), grid) for j in range(4)])
    found = []
    for batch in model.seen:
        for img in batch:
            err = (candidates - img).abs().amax(dim=(-3, -2, -1))                  # [4 images, angles]
            j, a = divmod(int(err.argmin()), len(grid))
            assert err.min() < 0.02, "a training image is not a rotation of a training image"
            found.append(float(grid[a]))
    assert any(min(d % 90, 90 - d % 90) > 2 for d in found), found


def test_augment_batch_returns_the_applied_angles():
    x = torch.rand(8, 1, 16, 16)
    gen = torch.Generator().manual_seed(0)
    xr, deg = study.augment_batch(x, "angle", gen)
    torch.testing.assert_close(xr, scipy_rotate(x, deg), atol=1e-5, rtol=0)
    xr, deg = study.augment_batch(x, "rot90", gen)
    assert torch.equal(xr, torch.stack([torch.rot90(x[i], int(deg[i]) // 90, (-2, -1)) for i in range(8)]))
    with pytest.raises(ValueError, match="mode"):
        study.augment_batch(x, "flip", gen)


def test_every_model_builds_trains_a_step_and_evaluates():
    specs = study.model_specs(study.DEFAULT_MODELS, width=4)
    x, y = torch.rand(12, 1, 16, 16), torch.arange(12) % 10
    tests = study.make_test_sets(x[:6], y[:6])
    plain = sum(p.numel() for p in study.build_model(specs[0]).parameters())
    for spec in specs:
        torch.manual_seed(0)
        model = study.build_model(spec)
        before = [p.detach().clone() for p in model.parameters()]
        tr = study.train_model(model, x, y, steps=1, batch_size=8, lr=1e-2, augment=spec.augment, seed=0)
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), spec.name
        assert tr["seconds_per_step"] > 0 and tr["final_loss"] > 0
        ev = study.evaluate(spec, model, tests, eq_images=4)
        assert set(ev["accuracy"]) == set(study.TEST_SETS)
        assert all(0 <= v <= 1 for v in ev["accuracy"].values())
        if spec.group is None:
            assert ev["equivariance_error"] is None and all(v is None for v in ev["number_angle"].values())
        else:
            exact = groups.get(spec.group).exact
            assert (ev["equivariance_error"] < 1e-5) == exact, (spec.name, ev["equivariance_error"])
            assert (ev["number_angle"]["flip"] is None) == spec.group.startswith("C")
            assert ev["invariance_error_90"] < 1e-5     # every group here contains the 90-degree rotation
        if spec.name.endswith("=p"):
            same = sum(p.numel() for p in study.build_model(study.model_specs([spec.group], 4)[0]).parameters())
            mine = sum(p.numel() for p in model.parameters())
            assert abs(mine - plain) < abs(same - plain)


def test_subset_indices_are_stratified_and_nested():
    y = torch.arange(200) % 10
    small, large = study.subset_indices(y, 0.1, seed=4), study.subset_indices(y, 0.5, seed=4)
    assert torch.bincount(y[small]).tolist() == [2] * 10
    assert set(small.tolist()) <= set(large.tolist())
    assert not torch.equal(small, study.subset_indices(y, 0.1, seed=5))


def _parse(argv):
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    return parser.parse_args(argv)


def test_run_writes_results_table_and_plot(tmp_path, capsys):
    out = tmp_path / "study"
    args = _parse(["--models", "cnn,cnn+rot,C4,C8=p", "--fractions", "0.05,0.1", "--seeds", "2", "--steps", "2",
                   "--width", "2", "--test-limit", "20", "--eq-images", "2", "--out", str(out)])
    assert study.run(args) == 0
    printed = capsys.readouterr().out
    assert sum(line.lstrip().startswith("[") for line in printed.splitlines()) == 16    # one line per run
    result = json.loads((out / "results.json").read_text())
    assert len(result["runs"]) == 4 * 2 * 2
    assert set(result["summary"]) == {"cnn", "cnn+rot", "C4", "C8=p"}
    for name, s in result["summary"].items():
        for f in ("0.05", "0.1"):
            acc = s["fractions"][f]["accuracy"]
            assert set(acc) == set(study.TEST_SETS)
            assert all(0 <= v["mean"] <= 1 and v["n"] == 2 for v in acc.values())
    assert result["config"]["command"].startswith("python -m equifast study --models cnn,cnn+rot,C4,C8=p")
    md = (out / "results.md").read_text()
    for name in ("cnn+rot", "C4", "C8=p"):
        assert f"| {name} |" in md
    pytest.importorskip("matplotlib")
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--models", "cnn,resnet"], "unknown model 'resnet'"),
    (["--fractions", "0,0.5"], "fraction"),
    (["--steps", "0"], "--steps"),
    (["--data", "mnist"], "--mnist-dir"),
])
def test_bad_arguments_are_reported(tmp_path, capsys, argv, message):
    assert study.run(_parse(argv + ["--out", str(tmp_path)])) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow   # spawns two fresh Python processes (about 10 s of imports)
def test_jobs_give_the_same_runs_as_one_process(tmp_path):
    base = ["--models", "cnn,C4=p", "--fractions", "0.05", "--seeds", "2", "--steps", "2", "--width", "2",
            "--test-limit", "10", "--eq-images", "2", "--timing-rounds", "1", "--no-progress"]
    results = []
    for jobs in ("1", "2"):
        assert study.run(_parse(base + ["--jobs", jobs, "--out", str(tmp_path / jobs)])) == 0
        results.append(json.loads((tmp_path / jobs / "results.json").read_text()))
    keep = ("model", "seed", "n_train", "accuracy", "number_angle", "final_loss")
    one, two = ([{k: r[k] for k in keep} for r in res["runs"]] for res in results)
    assert one == two and len(one) == 4
    assert results[1]["config"]["jobs"] == 2
