"""Pathfinder generator, dataset and the hGRU Pathfinder model."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rv_plugins.datasets.pathfinder import (PathfinderConfig, PathfinderDataset, pathfinder_sample,
                                            save_sample_grid)
from rv_plugins.models.pathfinder_hgru import PathfinderHGRU
from rv_plugins.solvers.fixed_point import MODES


pytestmark = pytest.mark.usefixtures("one_thread")


def test_deterministic_by_seed_and_index():
    cfg = PathfinderConfig(image_size=64, length=14)
    first, again = pathfinder_sample(cfg, 3, 7), pathfinder_sample(cfg, 3, 7)
    np.testing.assert_array_equal(first.img, again.img)
    np.testing.assert_array_equal(first.mask, again.mask)
    for other in (pathfinder_sample(cfg, 3, 8), pathfinder_sample(cfg, 4, 7)):
        assert not np.array_equal(first.img, other.img)


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("length", [14, 20, 25])
def test_every_paper_length_renders_at_every_size(size, length):
    sample = pathfinder_sample(PathfinderConfig(image_size=size, length=length), 0, length)
    assert sample.img.shape == sample.mask.shape == (size, size)
    assert sample.img.dtype == sample.mask.dtype == np.uint8
    assert set(np.unique(sample.mask)) == {0, 1}
    assert 0 < sample.mask.sum() < (sample.img > 0).sum()  # distractors add pixels
    assert bool((sample.img[sample.mask == 1] > 0).all())  # the target is drawn where labelled


def test_mask_touches_the_marker_and_grows_with_length():
    for index in range(5):
        short = pathfinder_sample(PathfinderConfig(image_size=64, length=6), 1, index)
        long = pathfinder_sample(PathfinderConfig(image_size=64, length=18), 1, index)
        for sample in (short, long):
            row, col = sample.marker
            assert sample.mask[row, col] == 1 and sample.img[row, col] == 255
            # the marker disk (radius 1.5) is all target
            assert sample.mask[row - 1:row + 2, col - 1:col + 2].all()
        assert long.mask.sum() > short.mask.sum()


def test_dataset_items_and_channels():
    cfg = PathfinderConfig(image_size=32, length=6, num_distractors=1, clutter_dashes=3)
    grey, rgb = PathfinderDataset(4, cfg, seed=5), PathfinderDataset(4, cfg, seed=5, channels=3)
    item, item_rgb = grey[2], rgb[2]
    assert item["img"].shape == (1, 32, 32) and item["img"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.long
    assert 0.0 <= float(item["img"].min()) and float(item["img"].max()) == 1.0
    assert item_rgb["img"].shape == (3, 32, 32)
    torch.testing.assert_close(item_rgb["img"][1], item["img"][0])
    assert len(grey) == 4
    with pytest.raises(IndexError):
        grey[4]
    with pytest.raises(ValueError, match="channels"):
        PathfinderDataset(4, cfg, channels=2)


def test_save_sample_grid(tmp_path):
    path = tmp_path / "grid.png"
    save_sample_grid(str(path), sizes=(32,), lengths=(6,))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("mode", MODES)
def test_model_training_step_every_mode(mode):
    torch.manual_seed(0)
    data = PathfinderDataset(2, PathfinderConfig(image_size=16, length=4, num_distractors=1))
    img = torch.stack([data[i]["img"] for i in range(2)])
    mask = torch.stack([data[i]["mask"] for i in range(2)])
    model = PathfinderHGRU(channels=9, kernel_size=5, mode=mode, steps=3, lcp_lambda=0.1)
    logits, info = model(img)
    assert logits.shape == (2, 2, 16, 16)
    loss = F.cross_entropy(logits, mask)
    if mode in ("cbptt", "crbp"):
        assert info.lcp is not None and info.lcp > 0
        loss = loss + info.weighted_lcp
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.cell.w_inh.grad.abs().sum() > 0 and model.input_layer.conv.weight.grad.abs().sum() > 0
    if mode in ("rbp", "crbp"):
        assert info.neumann_terms is not None
    model.eval()
    with torch.no_grad():
        logits, info = model(img, steps=6)
    assert info.steps == 6 and torch.isfinite(logits).all()


def test_train_pathfinder_tool_trains_saves_and_reevaluates(tmp_path, capsys):
    """A tiny run of tools/train_pathfinder.py (mmengine's runner on the Pathfinder config); --load
    re-evaluates the saved model at more steps with the saved settings (the same IoU at the trained
    step count: evaluation is deterministic). The report is the only thing on stdout."""
    import json
    from tool_loader import load_tool
    tool = load_tool("train_pathfinder")
    ckpt = str(tmp_path / "tiny.pth")
    trained = tool.main(["--mode", "crbp", "--image-size", "16", "--length", "2",
                         "--eval-lengths", "2,3", "--num-distractors", "1", "--iters", "3",
                         "--batch-size", "2", "--channels", "4", "--kernel-size", "3", "--steps", "2",
                         "--lr-schedule", "cosine", "--eval-samples", "4", "--eval-every", "2",
                         "--save", ckpt, "--out", str(tmp_path / "tiny.json")])
    assert json.loads(capsys.readouterr().out) == trained
    with open(tmp_path / "tiny.json") as handle:
        assert json.load(handle) == trained
    assert [(r["length"], r["steps"]) for r in trained["eval"]] == [(2, 2), (3, 2)]
    assert all(0.0 <= r["iou"] <= 1.0 and 0.0 < r["all_bright_iou"] <= 1.0 for r in trained["eval"])
    assert trained["final_lcp"] is not None and trained["mean_neumann_terms"] is not None
    reloaded = tool.main(["--load", ckpt, "--eval-steps", "2,5", "--eval-samples", "4"])
    assert reloaded["mode"] == "crbp" and reloaded["kernel_size"] == 3 and reloaded["iters"] == 3
    assert [(r["length"], r["steps"]) for r in reloaded["eval"]] == [(2, 2), (3, 2), (2, 5), (3, 5)]
    assert reloaded["eval"][:2] == trained["eval"]


def _documented_train_pathfinder_commands():
    """The ``tools/train_pathfinder.py`` commands of docs/pathfinder.md (continuation lines joined,
    comments cut), as argument lists."""
    import os
    import shlex
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                           "pathfinder.md")) as handle:
        text = handle.read().replace("\\\n", " ")
    return [shlex.split(line.split("tools/train_pathfinder.py", 1)[1].split("#")[0])
            for line in text.splitlines() if "python tools/train_pathfinder.py" in line]


def test_train_pathfinder_runs_the_config_recipe():
    """tools/train_pathfinder.py is configs/pathfinder/hgru_crbp_pathfinder32.py plus the differences its
    docstring lists, nothing else: with the command docs/pathfinder.md gives for the published table
    the two configs differ only there (so a change of the config's recipe, of the documented command or
    of the script's mapping of flags fails here)."""
    import os
    from tool_loader import load_tool
    from rv_plugins.openmmlab import runner as mr
    tool = load_tool("train_pathfinder")
    commands = _documented_train_pathfinder_commands()
    assert len(commands) >= 3, "docs/pathfinder.md lost its train_pathfinder.py commands"
    for argv in commands:  # every documented command still parses (same flags)
        tool.parse_args(argv)
    recipe = commands[0]
    assert "--iters" in recipe and "--load" not in recipe
    script = tool.build_config(tool.parse_args(recipe)).to_dict()
    config = mr.load_config(os.path.join(os.path.dirname(tool.BASE_CONFIG), "hgru_crbp_pathfinder32.py")).to_dict()
    config["train_dataloader"]["sampler"]["shuffle"] = False       # images in order
    config["model"]["class_weight"] = [1.0, 1.0]                   # [1, --target-weight]
    config.update(val_dataloader=None, val_cfg=None, val_evaluator=None)   # --eval-every probes instead
    config["default_hooks"]["logger"]["interval"] = 250            # --iters // 10
    config["default_hooks"]["checkpoint"] = None                   # only with --work-dir
    script.pop("launcher")
    assert script == config
    options = tool.cfg_options(tool.parse_args(recipe + ["--lr-schedule", "constant", "--work-dir", "w"]))
    assert options["param_scheduler"] == [] and "default_hooks.checkpoint" not in options


def test_step_logits_follow_the_solver_states():
    """The per-step read-outs (used by tools/analysis/hgru_steps.py) end where forward() ends."""
    torch.manual_seed(0)
    model = PathfinderHGRU(channels=4, kernel_size=3, steps=3, mode="crbp", input_scale=3.0).eval()
    img = (torch.rand(2, 1, 12, 12) > 0.7).float()
    per_step = model.step_logits(img, 5)
    assert len(per_step) == 5 and per_step[0].shape == (2, 2, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(per_step[2], model(img)[0])
        torch.testing.assert_close(per_step[4], model(img, steps=5)[0])
    assert not torch.allclose(per_step[0], per_step[2])


def test_pathfinder_table_merges_training_and_reevaluation_reports():
    from tool_loader import load_tool
    tool = load_tool("pathfinder_table")
    model = dict(mode="crbp", steps=8, image_size=32, train_length=4, iters=10, seed=0)
    trained = dict(model, train_time_s=12.5, train_peak_rss_increase_mib=100.0, final_lcp=0.0,
                   final_fixed_point_residual=0.01,
                   eval=[dict(length=4, steps=8, iou=0.9, all_bright_iou=0.45),
                         dict(length=6, steps=8, iou=0.7, all_bright_iou=0.41)])
    late = dict(model, loaded_from="x.pth",
                eval=[dict(length=4, steps=32, iou=0.85, all_bright_iou=0.45)])
    other = dict(model, mode="bptt", train_time_s=9.0, eval=[dict(length=4, iou=0.5,
                                                                  all_bright_iou=0.45)])
    rows = tool.merge_reports([trained, late, other])
    assert len(rows) == 2
    text = tool.table(rows, late_factor=4).splitlines()
    assert text[2].startswith("| bptt | 8 | - | 0.5 | - |")  # a report without per-result steps
    assert text[3] == "| crbp | 8 | sum x 1 | 0.9 | 0.7 | 0.85 | - | 100 | 12.5 | 0 | 0.01 |"
    assert text[4].startswith("| every bright pixel = target | | | 0.45 | 0.41 |")
    # the same model trained with another penalty is another row
    rescaled = dict(trained, lcp_reduction="mean", lcp_weight=10.0)
    rows = tool.merge_reports([trained, rescaled])
    assert sorted(key[-1] for key in rows) == ["mean x 10", "sum x 1"]


def test_pathfinder_tables_are_the_ones_the_committed_reports_give():
    """The tables are regenerated from the committed reports, not typed: the first runs (LCP summed,
    weight 1; docs/pathfinder_results/*_N*.json) in docs/pathfinder.md, and the current table
    (the LCP modes re-run with the authors' mean x 10 in docs/pathfinder_results/mean10/, beside the
    unchanged BPTT/RBP runs) in docs/crbp.md and docs/pathfinder.md."""
    import glob
    import os
    from tool_loader import load_tool
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results = os.path.join(repo, "docs", "pathfinder_results")
    first = sorted(glob.glob(os.path.join(results, "*_N*.json")))
    current = (sorted(glob.glob(os.path.join(results, "bptt_N*.json")))
               + sorted(glob.glob(os.path.join(results, "rbp_N*.json")))
               + sorted(glob.glob(os.path.join(results, "mean10", "*_N*.json"))))
    assert first and len(current) > len(first) // 2, "docs/pathfinder_results/ lacks reports"
    tool = load_tool("pathfinder_table")
    first_text, current_text = tool.main(first), tool.main(current)
    for doc, texts in ((os.path.join("docs", "crbp.md"), [current_text]),
                       (os.path.join("docs", "pathfinder.md"), [first_text, current_text])):
        with open(os.path.join(repo, doc)) as handle:
            content = handle.read()
        for text in texts:
            assert text in content, f"{doc}: a Pathfinder table differs from the reports"
