"""The backbone contract: every registered backbone (``rv_plugins.backbones.list_backbones()``), built with
its tiny test arch, passes the same checks (timm's ``tests/test_models.py`` pattern). A backbone added
to the registry is picked up here without editing this file.

``ToyConv`` below is the proof that a new backbone needs only its own file and one registry entry
(``docs/adding_a_backbone.md``): a 25-line conv backbone, registered in a private registry so that the
package's list stays unchanged, runs every check, including the mm and Detectron2 builds.

Model-specific behaviour (paper parameter counts, scan directions, timm equivalence, chunked inference,
...) stays in tests/test_visiongru*.py and tests/test_sequencer2d.py.
"""
import ast
import glob
import inspect
import io
import itertools
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

from rv_plugins.backbones import (BACKBONES, BackboneRegistry, HierarchicalBackbone, create_backbone, get_backbone,
                                  list_backbones, model_names, register_backbone)
from rv_plugins.layers.blocks import run_blocks
from rv_plugins.layers.drop_path import DropPath
from rv_plugins.utils.checkpoint import load_pretrained, resize_pos_embed

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------------------ the toy
TOY_REGISTRY = BackboneRegistry()


class ToyBlock(nn.Module):
    def __init__(self, dim: int, drop_path: float):
        super().__init__()
        self.conv, self.bn, self.drop_path = nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), DropPath(drop_path)

    def forward(self, x):
        return x + self.drop_path(torch.relu(self.bn(self.conv(x))))


class ToyStage(nn.Sequential):
    with_cp = False

    def forward(self, x):
        return run_blocks(self, x, self.with_cp)


@TOY_REGISTRY.register("toyconv", test_arch="tiny", strides=(4, 8))
class ToyConv(HierarchicalBackbone):
    """Two stages of residual conv blocks (BatchNorm: ``norm_eval`` matters); channels-first maps;
    strides 4, 8 (every conv 3x3 stride 2 padding 1: ``ceil(n / 2)`` at any size)."""
    arch_zoo = {"tiny": dict(embed_dims=[4, 8], depths=[1, 2])}

    def __init__(self, arch="tiny", in_channels=3, out_indices=(1,), frozen_stages=-1, norm_eval=False,
                 drop_path_rate=0.0, with_cp=False, num_classes=0, init_cfg=None):
        super().__init__()
        self._init_arch(arch)
        self.in_channels, self.init_cfg = in_channels, init_cfg
        self._setup_conventions(out_indices, frozen_stages, norm_eval)
        c0 = self.embed_dims[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, 2, 1), nn.ReLU(), nn.Conv2d(c0, c0, 3, 2, 1))
        dpr = self.drop_path_schedule(drop_path_rate, self.depths)
        self.stages = nn.ModuleList(
            ToyStage(nn.Conv2d(self.embed_dims[i - 1], c, 3, 2, 1) if i else nn.Identity(),
                     *[ToyBlock(c, p) for p in dpr[i]]) for i, c in enumerate(self.embed_dims))
        for stage in self.stages:
            stage.with_cp = with_cp
        self.head = nn.Linear(self.embed_dims[-1], num_classes) if num_classes > 0 else None
        self.init_weights()
        self._freeze_stages()

    def init_weights(self):
        self._apply_init_cfg()

    def _stage_strides(self):
        return [4 * 2 ** i for i in range(self.num_stages)]


TOY = TOY_REGISTRY.get("toyconv")
ENTRIES = [get_backbone(name) for name in list_backbones()] + [TOY]
IDS = [e.name for e in ENTRIES]
parametrize_entries = pytest.mark.parametrize("entry", ENTRIES, ids=IDS)


def all_stages(entry):
    return tuple(range(len(entry.strides)))


def build(entry, **kwargs):
    torch.manual_seed(0)
    return entry.create_test(**kwargs)


def expected_shapes(model, batch, h, w, indices):
    info = model.feature_info
    return [(batch, info[i]["num_chs"], math.ceil(h / info[i]["reduction"]), math.ceil(w / info[i]["reduction"]))
            for i in indices]


def norm_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))]


# ------------------------------------------------------------------------------------------ registry
def registrations_in_model_files():
    """``{family: model file}`` for every ``@register_backbone("family", ...)`` class decorator found in the
    source of ``rv_plugins/backbones/*.py`` (read with ``ast``, nothing imported)."""
    folder = os.path.dirname(inspect.getfile(HierarchicalBackbone))
    found = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.py"))):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            for deco in getattr(node, "decorator_list", []) if isinstance(node, ast.ClassDef) else []:
                if (isinstance(deco, ast.Call) and ast.unparse(deco.func) in ("register_backbone", "BACKBONES.register")
                        and deco.args and isinstance(deco.args[0], ast.Constant)):
                    found[deco.args[0].value] = os.path.basename(path)
    return found


def test_registry_lists_the_package_models():
    """The registry lists exactly the backbones registered in the model files present, each from its own
    file, with one model name per canonical arch."""
    found = registrations_in_model_files()
    assert found, "no @register_backbone found in rv_plugins/backbones/*.py"
    assert list_backbones() == sorted(found)
    for name in list_backbones():
        entry = get_backbone(name)
        assert os.path.basename(inspect.getfile(entry.cls)) == found[name], name
        assert list(entry.archs) == list(entry.cls.arch_zoo)
    assert model_names() == [m for name in list_backbones() for m in get_backbone(name).model_names()]
    assert len(model_names()) == len(set(model_names())) == sum(len(get_backbone(n).archs) for n in list_backbones())
    assert all(m.startswith(f"{m.split('-')[0]}-") and m.split("-")[0] in found for m in model_names())
    assert "toyconv" not in list_backbones()  # the toy lives in its own registry


def test_create_backbone_by_model_name_family_and_class_name():
    with torch.device("meta"):
        assert create_backbone("visiongru-ti").embed_dims == create_backbone("visiongru", arch="tiny").embed_dims
        assert create_backbone("Sequencer2D-M").depths == [4, 3, 14, 3]
    assert get_backbone("VisionGRU").name == "visiongru"
    with pytest.raises(KeyError, match=r"unknown backbone 'vim'.*sequencer2d.*visiongru-ti"):
        create_backbone("vim")
    with pytest.raises(ValueError, match="names the arch already"):
        create_backbone("visiongru-ti", arch="base")
    with pytest.raises(ValueError, match="unknown arch 'xl'"):
        create_backbone("sequencer2d-xl")


def test_registration_errors_name_the_fix():
    reg = BackboneRegistry()
    with pytest.raises(ValueError, match="lower-case family name"):
        reg.register("Toy-Conv", test_arch="tiny", strides=(4,))
    with pytest.raises(TypeError, match="arch_zoo"):
        reg.register("bare", test_arch="tiny", strides=(4,))(type("Bare", (HierarchicalBackbone,), {}))
    reg.register("toyconv", test_arch="tiny", strides=(4, 8))(ToyConv)
    other = type("ToyConv2", (ToyConv,), {})
    with pytest.raises(ValueError, match="already registered"):
        reg.register("toyconv", test_arch="tiny", strides=(4, 8))(other)
    with pytest.raises(ValueError, match="does not have"):
        reg.register("toy2", test_arch="tiny", strides=(4, 8), arch_names={"huge": "h"})(other)
    newcomer = type("ToyConvNewcomer", (ToyConv,), {})
    register_backbone("toynewcomer", test_arch="tiny", strides=(4, 8))(newcomer)  # the package's registry
    try:
        assert "toynewcomer" in list_backbones() and get_backbone("ToyNewcomer").cls is newcomer
        assert "toynewcomer-tiny" in model_names()
    finally:
        BACKBONES.unregister("toynewcomer")
    assert "toynewcomer" not in list_backbones()


@parametrize_entries
def test_every_arch_builds_with_the_registered_strides(entry):
    assert issubclass(entry.cls, HierarchicalBackbone)
    names = list(entry.archs) + list(entry.arch_aliases)
    with torch.device("meta"):
        for arch in names:
            model = entry.create(arch=arch)
            assert model.strides == entry.strides, arch
            canonical = entry.arch_aliases.get(arch, arch)  # an alias builds its canonical arch's table entry
            assert canonical in entry.archs, (arch, canonical)
            for key, value in entry.cls.arch_zoo[canonical].items():
                assert model.arch[key] == (list(value) if isinstance(value, (list, tuple)) else value), (arch, key)
            assert (model.embed_dims, model.depths) == (list(entry.cls.arch_zoo[canonical]["embed_dims"]),
                                                        list(entry.cls.arch_zoo[canonical]["depths"])), arch
            assert len(model.stages) == len(model.depths) == len(entry.strides), arch
    assert len(entry.model_names()) == len(entry.archs)


@parametrize_entries
def test_unknown_arch_names_the_choices(entry):
    with pytest.raises(ValueError, match=rf"{entry.class_name}: unknown arch 'nope'; choose one of .*{entry.archs[0]}"):
        entry.create(arch="nope")
    with pytest.raises(TypeError, match="arch must be a name or"):
        entry.create(arch=3)


# ------------------------------------------------------------------------------------------ the guide
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(REPO, "docs", "adding_a_backbone.md")


def guide_model_file() -> str:
    """The ``python`` code blocks of docs/adding_a_backbone.md, in order: the model file it shows."""
    with open(GUIDE, encoding="utf-8") as f:
        return "\n\n".join(re.findall(r"```python\n(.*?)```", f.read(), flags=re.S))


@pytest.mark.parametrize("toolkits", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_guides_model_file_runs_as_written_and_passes_the_contract(tmp_path, toolkits):
    """The guide's model file, saved as a module and loaded before collection (``-p``), registers its
    family in the package registry of a child pytest, which runs this file's checks on it (``-k family``;
    the mm and Detectron2 builds, which import the toolkits, in the slow variant)."""
    code = guide_model_file()
    family = re.search(r'@register_backbone\(\s*"(\w+)"', code)
    assert family, "docs/adding_a_backbone.md shows no @register_backbone(...) in a ```python block"
    family = family.group(1)
    (tmp_path / "guide_model.py").write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]), OMP_NUM_THREADS="1")
    selection = family if toolkits else f"{family} and not openmmlab and not mmengine and not detectron2"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "guide_model", "-p", "no:cacheprovider",
                           "-k", selection, os.path.join(REPO, "tests", "test_backbone_contract.py")],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"the guide's model fails the contract:\n{tail}"
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 20, f"too few contract checks ran on {family!r}:\n{tail}"


# ------------------------------------------------------------------------------------------ shapes
@parametrize_entries
def test_feature_info_describes_the_outputs(entry):
    model = build(entry, out_indices=all_stages(entry)).eval()
    info = model.feature_info
    assert [f["num_chs"] for f in info] == list(model.embed_dims)
    assert tuple(f["reduction"] for f in info) == model.strides == entry.strides
    assert [f["module"] for f in info] == [f"stages.{i}" for i in all_stages(entry)]
    modules = dict(model.named_modules())
    assert all(f["module"] in modules for f in info)


@parametrize_entries
@pytest.mark.parametrize("hw", [(1, 1), (7, 5), (33, 17), (64, 48)])
def test_any_input_size_gives_ceil_strided_maps(entry, hw):
    model = build(entry, out_indices=all_stages(entry)).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *hw))
    assert [tuple(o.shape) for o in outs] == expected_shapes(model, 2, *hw, all_stages(entry))
    assert all(torch.isfinite(o).all() for o in outs)


@parametrize_entries
def test_inputs_that_fail_say_why(entry):
    model = build(entry).eval()
    name = entry.class_name
    with pytest.raises(ValueError, match=rf"{name} expects images of shape \(B, 3, H, W\).*set in_channels"):
        model(torch.randn(3, 16, 16))
    with pytest.raises(ValueError, match="set in_channels"):
        model(torch.randn(1, 4, 16, 16))
    for hw in [(0, 8), (8, 0)]:
        with pytest.raises(ValueError, match=rf"{name}: the images are {hw[0]}x{hw[1]} pixels; every image needs"):
            model(torch.randn(1, 3, *hw))


def test_a_channels_first_stem_in_a_channels_last_model_says_so():
    model = type("ToyConvChannelsLast", (ToyConv,), {"maps_channels_last": True})()
    with pytest.raises(ValueError, match=r"the stem returned \(1, 4, 8, 8\), channels first.*maps_channels_last"):
        model(torch.randn(1, 3, 32, 32))


@parametrize_entries
def test_every_out_indices_subset(entry):
    stages = all_stages(entry)
    full_model = build(entry, out_indices=stages).eval()
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        full = full_model(x)
    for k in range(1, len(stages) + 1):
        for subset in itertools.permutations(stages, k) if k <= 2 else itertools.combinations(stages, k):
            model = build(entry, out_indices=subset).eval()
            model.load_state_dict(full_model.state_dict())
            ran = []
            for i, stage in enumerate(model.stages):
                stage.register_forward_pre_hook(lambda *_, i=i: ran.append(i))
            with torch.no_grad():
                outs = model(x)
            assert ran == list(range(max(subset) + 1)), subset  # later stages are not run
            assert len(outs) == len(subset)
            for i, out in zip(subset, outs):
                torch.testing.assert_close(out, full[i])
    negative = build(entry, out_indices=(-1,))
    assert negative.out_indices == (len(stages) - 1,)
    with pytest.raises(ValueError, match="out of range"):
        build(entry, out_indices=(len(stages),))


# ------------------------------------------------------------------------------------------ training
@parametrize_entries
def test_gradients_reach_every_parameter(entry):
    model = build(entry, out_indices=all_stages(entry), num_classes=3, drop_path_rate=0.0).train()
    nn.init.normal_(model.head.weight, std=0.1)  # some heads start at zero
    outs = model(torch.randn(2, 3, 36, 44))
    loss = sum(o.square().mean() for o in outs) + model.forward_head(outs).square().sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@parametrize_entries
def test_forward_head(entry):
    model = build(entry, out_indices=all_stages(entry), num_classes=5).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 32, 32))
        assert model.forward_head(outs).shape == (2, 5)
        assert torch.equal(model.forward_head(outs), model.forward_head(outs[-1]))
    last = len(entry.strides) - 1
    with pytest.raises(ValueError, match=rf"{entry.class_name}.forward_head expects the last stage's map .*include {last}"):
        model.forward_head(outs[0] if outs[0].shape[1] != outs[-1].shape[1] else outs[-1][:, :1])
    with pytest.raises(RuntimeError, match=rf"{entry.class_name}.forward_head needs a classifier; build with num_classes > 0"):
        build(entry).forward_head(outs)


@parametrize_entries
@pytest.mark.parametrize("frozen", [-1, 0, 1, "all"])
def test_frozen_stages(entry, frozen):
    n = len(entry.strides)
    frozen = n if frozen == "all" else frozen
    model = build(entry, out_indices=all_stages(entry), frozen_stages=frozen, drop_path_rate=0.5, num_classes=2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        deterministic = model.eval()(x)
    model.train()
    stem_frozen = frozen >= 0
    assert all(p.requires_grad != stem_frozen for p in model.stem.parameters())
    assert all(m.training != stem_frozen for m in model.stem.modules())
    for name in model.pos_embed_names:
        if isinstance(getattr(model, name, None), nn.Parameter):
            assert getattr(model, name).requires_grad != stem_frozen
    for i, stage in enumerate(model.stages):
        assert all(p.requires_grad != (i < frozen) for p in stage.parameters()), i
        assert all(m.training != (i < frozen) for m in stage.modules()), i
    if frozen == n:
        norm = getattr(model, "norm", None)
        assert norm is None or not any(p.requires_grad for p in norm.parameters())
    assert all(p.requires_grad for p in model.head.parameters())  # the classifier is never frozen
    torch.manual_seed(1)
    outs = model(x)
    for i in range(frozen):  # frozen stages run in eval mode (no drop path, no BN update): eval's outputs
        torch.testing.assert_close(outs[i], deterministic[i])
    if frozen < n:
        sum(o.sum() for o in outs).backward()
        assert all(p.grad is None for p in model.stem.parameters()) == stem_frozen
        assert all(p.grad is not None for p in model.stages[max(frozen, 0)].parameters())
    with pytest.raises(ValueError, match=rf"frozen_stages must be in -1..{n}"):
        build(entry, frozen_stages=n + 1)


@parametrize_entries
@pytest.mark.parametrize("norm_eval", [False, True])
def test_norm_eval(entry, norm_eval):
    model = build(entry, norm_eval=norm_eval).train()
    norms = norm_layers(model)
    assert norms and all(m.training != norm_eval for m in norms)
    others = [m for m in model.modules() if m not in norms]
    assert all(m.training for m in others)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(2, 3, 32, 32))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) == norm_eval for k, v in stats.items())  # BN statistics frozen or not


@parametrize_entries
def test_with_cp_gives_equal_outputs_and_gradients(entry):
    x = torch.randn(2, 3, 36, 28)
    results, calls = [], []
    for with_cp in (False, True):
        model = build(entry, out_indices=all_stages(entry), drop_path_rate=0.3, with_cp=with_cp).train()
        count = [0]
        for m in model.modules():
            m.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        torch.manual_seed(5)
        outs = model(x)
        loss = sum(o.square().mean() for o in outs)
        results.append((outs, torch.autograd.grad(loss, list(model.parameters()))))
        calls.append(count[0])
    assert calls[1] > calls[0]  # checkpointing recomputed blocks in the backward
    (o0, g0), (o1, g1) = results
    for a, b in zip(o0, o1):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------ weights
@parametrize_entries
def test_state_dict_round_trip(entry):
    src = build(entry, out_indices=all_stages(entry), num_classes=3)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.1 * torch.randn_like(p))
    buffer = io.BytesIO()
    torch.save(src.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(7)
    dst = entry.create_test(out_indices=all_stages(entry), num_classes=3)
    dst.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    assert list(dst.state_dict()) == list(src.state_dict())
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        for a, b in zip(src.eval()(x), dst.eval()(x)):
            assert torch.equal(a, b)


@parametrize_entries
def test_checkpoint_made_at_224_loads_into_a_model_made_for_512(entry):
    """Positional embeddings (if the model has one for its image size) are resized bicubically, by
    ``load_state_dict`` itself and by the package's loader; every other tensor is size-independent."""
    sized = "img_size" in entry.constructor_defaults()
    src = build(entry, **({"img_size": 224} if sized else {}))
    dst = build(entry, **({"img_size": 512} if sized else {}))
    state = src.state_dict()
    dst.load_state_dict(state, strict=True)
    report = load_pretrained(build(entry, **({"img_size": 512} if sized else {})), state, strict=True)
    resized = [k for k in dst.pos_embed_names if isinstance(getattr(dst, k, None), torch.Tensor)]
    assert report.resized == resized and not report.mismatched
    for key, value in state.items():
        if key in resized:
            assert value.shape != dst.state_dict()[key].shape
            torch.testing.assert_close(dst.state_dict()[key], resize_pos_embed(value, dst.state_dict()[key].shape[2:]))
        else:
            assert torch.equal(dst.state_dict()[key], value), key
    with torch.no_grad():
        (out,) = dst.eval()(torch.randn(1, 3, 40, 40))
    assert torch.isfinite(out).all()


@parametrize_entries
def test_mmengine_load_state_dict_resizes_too(entry):
    """mmengine's loader (``load_checkpoint`` in the toolkits' tools) goes through the same hook."""
    mm_checkpoint = pytest.importorskip("mmengine.runner.checkpoint")
    sized = "img_size" in entry.constructor_defaults()
    src, dst = build(entry, **({"img_size": 224} if sized else {})), build(entry, **({"img_size": 96} if sized else {}))
    state = src.state_dict()
    mm_checkpoint.load_state_dict(dst, state, strict=True)
    for key, value in dst.state_dict().items():
        expected = state[key]
        if key in dst.pos_embed_names and expected.shape != value.shape:
            expected = resize_pos_embed(expected, value.shape[2:])
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in src.state_dict().items()}  # untouched


# ------------------------------------------------------------------------------------------ toolkits
@pytest.fixture(scope="module")
def mm_registries():
    pytest.importorskip("mmseg")
    pytest.importorskip("mmpretrain")
    import rv_plugins.mmpretrain  # noqa: F401
    import rv_plugins.mmseg  # noqa: F401
    from mmengine.registry import Registry
    from mmpretrain.registry import MODELS as PRETRAIN
    from mmseg.registry import MODELS as SEG

    from rv_plugins.openmmlab.backbones import register_all
    toy = Registry("toy backbones")
    assert set(register_all(toy, [TOY])) == {"ToyConv"}
    return {"mmseg": SEG, "mmpretrain": PRETRAIN, "toy": toy}


@parametrize_entries
def test_openmmlab_builds(entry, mm_registries):
    plain = build(entry, out_indices=all_stages(entry)).eval()
    cfg = dict(type=entry.class_name, arch=entry.test_arch, out_indices=all_stages(entry), **entry.test_kwargs)
    x = torch.randn(1, 3, 32, 32)
    for toolkit in (("toy",) if entry is TOY else ("mmseg", "mmpretrain")):
        model = mm_registries[toolkit].build(cfg)
        assert isinstance(model, entry.cls) and type(model).__name__ == entry.class_name
        model.init_weights()
        assert model.is_init
        model.load_state_dict(plain.state_dict(), strict=True)
        with torch.no_grad():
            for a, b in zip(model.eval()(x), plain(x)):
                assert torch.equal(a, b), toolkit


def _detectron2_adapter():
    """Skip when Detectron2 itself is missing; our adapter's own import errors fail the test."""
    pytest.importorskip("detectron2")
    import rv_plugins.detectron2
    return rv_plugins.detectron2


def _d2_cfg(entry, node_extra=()):
    from rv_plugins.detectron2.config import backbone_config_node, get_cfg, node_name
    cfg = get_cfg()
    if entry is TOY:
        setattr(cfg.MODEL, node_name(entry), backbone_config_node(entry))
    node = cfg.MODEL[node_name(entry)]
    arch = entry.test_arch if isinstance(entry.test_arch, dict) else {}
    for key, value in arch.items():  # the tiny arch through the arch-list keys
        node[key.upper()] = list(value)
    if isinstance(entry.test_arch, str):
        node.ARCH = entry.test_arch
    for key, value in dict(entry.test_kwargs, **dict(node_extra)).items():
        node[key.upper()] = value
    cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.NORM = 16, ""
    cfg.MODEL.FPN.IN_FEATURES = list(node.OUT_FEATURES)
    return cfg


@pytest.mark.detectron2
@parametrize_entries
def test_detectron2_config_node_is_the_constructors_defaults(entry):
    _detectron2_adapter()
    from rv_plugins.detectron2.config import ADAPTER_ARGS, backbone_config_node
    node = backbone_config_node(entry)
    params = {n: p.default for n, p in inspect.signature(entry.cls.__init__).parameters.items()
              if n != "self" and p.default is not inspect.Parameter.empty and n not in ADAPTER_ARGS}
    for name, default in params.items():
        assert node[name.upper()] == (list(default) if isinstance(default, tuple) else default), name
    assert node.ARCH == entry.constructor_defaults()["arch"]
    assert node.OUT_FEATURES == [f"res{i + 2}" for i in all_stages(entry)]


@pytest.mark.detectron2
@parametrize_entries
def test_detectron2_fpn_build(entry):
    _detectron2_adapter()
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY

    from rv_plugins.detectron2.backbones import build_backbone_fpn
    cfg = _d2_cfg(entry)
    if entry is TOY:
        fpn = build_backbone_fpn(cfg, ShapeSpec(channels=3), entry)
    else:
        fpn = BACKBONE_REGISTRY.get(f"build_{entry.name}_fpn_backbone")(cfg, ShapeSpec(channels=3))
    body = fpn.bottom_up.body
    assert isinstance(body, entry.cls) and body.out_indices == all_stages(entry)
    plain = build(entry)
    assert list(body.state_dict()) == list(plain.state_dict())
    native = [f["reduction"] for f in body.feature_info]
    assert fpn.bottom_up.resized == [f"res{i + 2}" for i, s in enumerate(native) if s != 2 ** (i + 2)]
    h, w = 64, 96  # Detectron2 pads images to a multiple of the FPN's size_divisibility (32)
    with torch.no_grad():
        feats = fpn.eval()(torch.randn(1, 3, h, w))
    shapes = fpn.output_shape()
    assert list(feats) == list(shapes)
    for key, feat in feats.items():
        s = shapes[key].stride
        assert feat.shape == (1, 16, -(-h // s), -(-w // s)), key


@pytest.mark.detectron2
def test_detectron2_keys_reach_the_constructor():
    _detectron2_adapter()
    from detectron2.layers import ShapeSpec

    from rv_plugins.detectron2.backbones import build_backbone_fpn
    seq = get_backbone("sequencer2d")
    body = build_backbone_fpn(_d2_cfg(seq, dict(rnn_type="gru", rnn_impl="native", norm_eval=True, frozen_stages=1,
                                               out_features=["res4", "res5"], patch_sizes=[4, 2, 2, 2])),
                              ShapeSpec(channels=3), seq).bottom_up.body
    assert (body.rnn_type, body.norm_eval, body.frozen_stages, body.out_indices) == ("gru", True, 1, (2, 3))
    assert body.strides == (4, 8, 16, 32)
    assert body.stages[0].blocks[0].rnn_tokens.impl == "native"
    vgru = get_backbone("visiongru")
    for img_size, grid in [("", None), (None, None), (64, (16, 16))]:  # IMG_SIZE "" = None
        node = dict(img_size=img_size, pos_embed=None, preset="paper", scan_backend="reference")
        body = build_backbone_fpn(_d2_cfg(vgru, node),
                                  ShapeSpec(channels=3), vgru).bottom_up.body
        assert (None if body.pos_embed is None else tuple(body.pos_embed.shape[2:])) == grid
        assert body.stages[0].blocks[0].mixer.gru_fwd.backend == "reference"
    with pytest.raises(ValueError, match=r'MODEL.VISIONGRU.IMG_SIZE=0: give a positive value, or "" for None'):
        build_backbone_fpn(_d2_cfg(vgru, dict(img_size=0, preset="paper")), ShapeSpec(channels=3), vgru)
    with pytest.raises(ValueError, match=r"MODEL.SEQUENCER2D.PATCH_SIZES=\[4, 2\]: give one value per stage \(4\)"):
        build_backbone_fpn(_d2_cfg(seq, dict(patch_sizes=[4, 2])), ShapeSpec(channels=3), seq)
    with pytest.raises(ValueError, match=r"MODEL.SEQUENCER2D.ARCH='xl': Sequencer2D: unknown arch"):
        build_backbone_fpn(_d2_cfg(seq, dict(arch="xl")), ShapeSpec(channels=3), seq)
