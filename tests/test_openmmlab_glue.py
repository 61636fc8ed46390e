"""The glue's public names and its single implementations: no old private module name is left,
``SolverInfo.log_scalars`` is the one naming scheme of the training logs, and a new procedural mmseg
dataset is a subclass of the shared base (proved with one written here)."""
import numpy as np
import pytest
import torch

from rv_plugins.solvers import FixedPointSolver, SolverInfo


@pytest.mark.parametrize("old", ["rv_plugins._mmengine_runner", "rv_plugins._mmengine_scope", "rv_plugins._toolkits",
                                 "rv_plugins._openmmlab", "rv_plugins.engine.checkpointing"])
def test_no_compatibility_module_is_left(old):
    """Looked up in this package's own folders (an editable install of another checkout could map the
    name elsewhere)."""
    import importlib
    from importlib.machinery import PathFinder
    parent, _, name = old.rpartition(".")
    assert PathFinder.find_spec(old, importlib.import_module(parent).__path__) is None, f"{old} still exists"


def test_solvers_package_exports_its_public_names():
    import rv_plugins.solvers as solvers
    from rv_plugins.solvers import fixed_point
    assert solvers.__all__, "rv_plugins.solvers exports nothing"
    for name in solvers.__all__:
        assert getattr(solvers, name) is getattr(fixed_point, name)


# --------------------------------------------------------------------------- one log-scalar scheme
class _Contraction(torch.nn.Module):
    """F(h, x) = 0.5 tanh(W h) + x on (B, C) states: a contraction, so every mode converges."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(3) * 0.5)

    def forward(self, h, x):
        return 0.5 * torch.tanh(h @ self.weight) + x


@pytest.mark.parametrize("mode", ["bptt", "cbptt", "rbp", "crbp"])
def test_log_scalars_names_prefix_and_phases(mode):
    torch.manual_seed(0)
    x = torch.randn(2, 3)
    h, info = FixedPointSolver(mode, steps=6, neumann_terms=4)(_Contraction(), x, torch.zeros_like(x))
    lcp = mode in ("cbptt", "crbp")
    forward = info.log_scalars(backward=False)
    assert set(forward) == {"fixed_point_residual"} | ({"lcp", "jacobian_colsum_max"} if lcp else set())
    assert all(type(v) is float for v in forward.values())
    assert forward["fixed_point_residual"] == pytest.approx(info.fixed_point_residual)
    assert info.log_scalars(forward=False) == {} == info.backward_scalars()  # no backward yet
    loss = h.sum() + (info.weighted_lcp if info.weighted_lcp is not None else 0)
    loss.backward()
    backward = info.log_scalars("mask_hgru/", forward=False)
    rbp = mode in ("rbp", "crbp")
    assert set(backward) == ({"mask_hgru/neumann_terms", "mask_hgru/neumann_residual",
                              "mask_hgru/rbp_unreliable"} if rbp else set())
    assert info.backward_scalars() == {k[len("mask_hgru/"):]: v for k, v in backward.items()}
    both = info.log_scalars("p/")
    assert set(both) == {"p/" + k for k in forward} | {"p/" + k[len("mask_hgru/"):] for k in backward}
    assert not any("loss" in k for k in both), "a 'loss' key would be added to mmengine's loss"


def test_log_scalars_of_a_hand_made_info():
    info = SolverInfo(mode="crbp", steps=3, fixed_point_residual=0.25, lcp=torch.tensor(2.0, requires_grad=True),
                      jacobian_colsum_max=1.5, neumann_terms=7, neumann_residual=0.01, rbp_unreliable=True)
    assert info.log_scalars("x/") == {"x/fixed_point_residual": 0.25, "x/lcp": 2.0, "x/jacobian_colsum_max": 1.5,
                                      "x/neumann_terms": 7.0, "x/neumann_residual": 0.01, "x/rbp_unreliable": 1.0}


# --------------------------------------------------------------------------- one procedural base (mmseg)
def test_a_new_procedural_dataset_is_a_small_subclass_of_the_base():
    pytest.importorskip("mmseg")
    import rv_plugins.mmseg  # noqa: F401
    from mmseg.registry import DATASETS, TRANSFORMS

    from rv_plugins.mmseg.datasets import LoadProceduralSample, ProceduralSegDataset

    class Stripes(ProceduralSegDataset):
        METAINFO = dict(classes=("a", "b"), palette=[[0, 0, 0], [255, 255, 255]])
        SPEC_KEY = "stripes"

        def sample_spec(self, index):
            return dict(period=2 + index, seed=self.seed)

        def sample_path(self, index):
            return f"stripes/{index}.png"

    class LoadStripes(LoadProceduralSample):
        SPEC_KEY, DATASET = "stripes", "Stripes"

        def render(self, spec):
            mask = (np.arange(8)[None, :].repeat(6, 0) // spec["period"] % 2).astype(np.uint8)
            return np.repeat(mask[..., None] * 255, 3, -1), mask

    ds = Stripes(num_samples=3, seed=4, pipeline=[LoadStripes()])
    assert len(ds) == 3 and ds.get_data_info(1)["stripes"] == dict(period=3, seed=4)
    out = ds[2]
    assert out["img"].shape == (6, 8, 3) and out["gt_seg_map"].shape == (6, 8)
    assert out["img_shape"] == out["ori_shape"] == (6, 8) and out["seg_fields"] == ["gt_seg_map"]
    assert out["img_path"] == "stripes/2.png" and out["seg_map_path"] is None
    with pytest.raises(ValueError, match="Stripes: num_samples must be >= 1"):
        Stripes(num_samples=0)
    with pytest.raises(KeyError, match="LoadStripes needs samples from Stripes"):
        LoadStripes()(dict(img_path="x.png"))

    class NoKey(ProceduralSegDataset):
        pass

    with pytest.raises(TypeError, match="must set SPEC_KEY"):
        NoKey(num_samples=1)
    # the registered ones are built on it, under their old registry names
    for name in ("SyntheticScenesDataset", "PathfinderSegDataset"):
        assert issubclass(DATASETS.get(name), ProceduralSegDataset)
    for name in ("LoadSyntheticScene", "LoadPathfinderSample"):
        assert issubclass(TRANSFORMS.get(name), LoadProceduralSample)


def test_recurrent_segmentor_is_generic_and_keeps_its_old_import_path():
    pytest.importorskip("mmseg")
    import rv_plugins.mmseg  # noqa: F401
    from mmseg.registry import MODELS

    from rv_plugins.mmseg.pathfinder import RecurrentSegmentor as old
    from rv_plugins.mmseg.segmentors import RecurrentSegmentor
    assert old is RecurrentSegmentor is MODELS.get("RecurrentSegmentor")
