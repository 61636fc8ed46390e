"""The one list of the package's backbones (timm-style ``register`` + ``create``).

A backbone class joins it with a decorator in its own model file::

    @register_backbone("visiongru", test_arch=dict(embed_dims=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
                       strides=(4, 8, 16, 32), arch_names={"tiny": "ti", "base": "b"})
    class VisionGRU(HierarchicalBackbone):
        arch_zoo = ARCH_SETTINGS        # canonical arch name -> arch dict
        arch_aliases = ARCH_ALIASES     # alias -> canonical name

Everything else reads the registry: the OpenMMLab adapters (:func:`rv_plugins.openmmlab.backbones.register_all`),
the Detectron2 backbones and their config nodes (``rv_plugins.detectron2``), the benchmark and analysis
tools (:func:`model_names`, :func:`create_backbone`) and the contract test suite
(``tests/test_backbone_contract.py``, one parametrization over :func:`list_backbones`).

Names: a *family* is the lower-case class name (``"visiongru"``, ``"sequencer2d"``); a *model name* is
``family-arch`` with the arch's public short name (``"visiongru-ti"``, ``"sequencer2d-s"``), the names
the tools and the docs use.
"""
import dataclasses
import importlib
import inspect
import pkgutil
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

__all__ = ["BackboneEntry", "BackboneRegistry", "BACKBONES", "register_backbone", "get_backbone",
           "list_backbones", "model_names", "create_backbone", "create_test_backbone"]

# Modules of this package that hold no model; every other module of rv_plugins/backbones/ is a model file,
# imported on first use of the registry (so that ``from rv_plugins.backbones.registry import list_backbones``
# alone sees every model, and a new model file needs no line elsewhere).
NOT_MODEL_FILES = ("base", "registry")


def builtin_modules() -> List[str]:
    """The model files of ``rv_plugins/backbones/``: ``["rv_plugins.backbones.sequencer2d", ...]``."""
    package = importlib.import_module("rv_plugins.backbones")
    return sorted(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                  if m.name not in NOT_MODEL_FILES and not m.name.startswith("_"))


@dataclasses.dataclass(frozen=True, eq=False)
class BackboneEntry:
    """One registered backbone family.

    Attributes:
        name: the family name, lower case (``"visiongru"``).
        cls: the plain-PyTorch class (a :class:`~rv_plugins.backbones.base.HierarchicalBackbone`).
        archs: canonical arch names of ``cls.arch_zoo``, in table order (``("tiny", "base")``).
        arch_aliases: alias -> canonical arch name (``cls.arch_aliases``).
        arch_names: canonical arch name -> its public short name in model names (``{"tiny": "ti"}``;
            the canonical name where none is given).
        test_arch: a tiny arch (name or dict) for tests: a forward and backward in well under a second.
        test_kwargs: further constructor arguments of the tiny test model.
        strides: stage strides (input pixels per output pixel) of every registered arch, e.g.
            ``(4, 8, 16, 32)``; an instance's ``strides`` must equal them (the contract suite checks).
    """
    name: str
    cls: type
    archs: Tuple[str, ...]
    arch_aliases: Mapping[str, str]
    test_arch: Union[str, Mapping[str, Any]]
    test_kwargs: Mapping[str, Any]
    strides: Tuple[int, ...]
    arch_names: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def class_name(self) -> str:
        """The name the toolkits register the class under (``"VisionGRU"``)."""
        return self.cls.__name__

    def model_names(self) -> List[str]:
        """``family-arch`` names of the canonical archs (``["visiongru-ti", "visiongru-b"]``)."""
        return [f"{self.name}-{self.arch_names.get(a, a)}" for a in self.archs]

    def create(self, **kwargs) -> Any:
        """``cls(**kwargs)``."""
        return self.cls(**kwargs)

    def create_test(self, **kwargs) -> Any:
        """The tiny test model: ``cls(arch=test_arch, **test_kwargs, **kwargs)`` (``kwargs`` win)."""
        return self.cls(**{"arch": _copy_arch(self.test_arch), **dict(self.test_kwargs), **kwargs})

    def constructor_defaults(self) -> Dict[str, Any]:
        """``{parameter: default}`` of ``cls.__init__`` (parameters without a default left out): the one
        source of the defaults the toolkit adapters expose (e.g. Detectron2's ``MODEL.<FAMILY>`` node)."""
        params = inspect.signature(self.cls.__init__).parameters
        return {n: p.default for n, p in params.items()
                if n != "self" and p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _copy_arch(arch):
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in arch.items()} \
        if isinstance(arch, Mapping) else arch


class BackboneRegistry:
    """Family name -> :class:`BackboneEntry`. The package's backbones live in :data:`BACKBONES` (every model
    file of ``rv_plugins/backbones/``); a test or a downstream project can make its own
    (``BackboneRegistry()``) to try a backbone without touching the package's list."""

    def __init__(self, builtins: Union[Sequence[str], Callable[[], Sequence[str]]] = ()):
        """``builtins``: modules (or a function listing them) imported on first use; they register here."""
        self._entries: Dict[str, BackboneEntry] = {}
        self._builtins = builtins
        self._loaded = False

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: the model modules register through this registry while importing
            for module in (self._builtins() if callable(self._builtins) else self._builtins):
                importlib.import_module(module)

    def register(self, name: str, *, test_arch: Union[str, Mapping[str, Any]], strides: Sequence[int],
                 test_kwargs: Optional[Mapping[str, Any]] = None,
                 arch_names: Optional[Mapping[str, str]] = None) -> Callable[[Type], Type]:
        """Class decorator adding ``cls`` as family ``name`` (see :class:`BackboneEntry` for the fields).

        ``cls.arch_zoo`` (canonical name -> arch dict) and ``cls.arch_aliases`` give the archs. Registering
        another class under a taken name raises; registering the same class again (a module reload) replaces
        the entry.
        """
        if not isinstance(name, str) or not name or name != name.lower() or "-" in name:
            raise ValueError(f"register_backbone: name {name!r} must be a non-empty lower-case family name "
                             "without '-' (model names are 'family-arch'), e.g. 'visiongru'")
        strides = tuple(int(s) for s in strides)
        if not strides or min(strides) < 1:
            raise ValueError(f"register_backbone({name!r}): strides must list each stage's stride (>= 1), "
                             f"got {strides}")

        def decorator(cls: Type) -> Type:
            zoo = getattr(cls, "arch_zoo", None)
            if not isinstance(zoo, Mapping) or not zoo:
                raise TypeError(f"register_backbone({name!r}): {cls.__name__} needs a class attribute arch_zoo "
                                "(canonical arch name -> arch dict), e.g. arch_zoo = ARCH_SETTINGS")
            aliases = dict(getattr(cls, "arch_aliases", {}) or {})
            names = dict(arch_names or {})
            unknown = sorted(set(aliases.values()) - set(zoo)) + sorted(set(names) - set(zoo))
            if unknown:
                raise ValueError(f"register_backbone({name!r}): {unknown} name archs that {cls.__name__}.arch_zoo "
                                 f"does not have ({sorted(zoo)})")
            old = self._entries.get(name)
            if old is not None and (old.cls.__module__, old.cls.__qualname__) != (cls.__module__, cls.__qualname__):
                raise ValueError(f"register_backbone: {name!r} is already registered by "
                                 f"{old.cls.__module__}.{old.cls.__qualname__}; choose another name")
            self._entries[name] = BackboneEntry(
                name=name, cls=cls, archs=tuple(zoo), arch_aliases=MappingProxyType(aliases),
                test_arch=_copy_arch(test_arch), test_kwargs=MappingProxyType(dict(test_kwargs or {})),
                strides=strides, arch_names=MappingProxyType(names))
            return cls

        return decorator

    def unregister(self, name: str) -> None:
        """Remove family ``name`` (tests that register a temporary backbone)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> BackboneEntry:
        """The entry of a family (``"visiongru"``; the class name, any case, works too)."""
        self._load_builtins()
        key = name.lower() if isinstance(name, str) else name
        if key not in self._entries:
            raise KeyError(f"unknown backbone {name!r}; registered: {self.list()} (model names: "
                           f"{self.model_names()})")
        return self._entries[key]

    def list(self) -> List[str]:
        """Registered family names, sorted."""
        self._load_builtins()
        return sorted(self._entries)

    def entries(self) -> List[BackboneEntry]:
        return [self._entries[n] for n in self.list()]

    def model_names(self) -> List[str]:
        """Every ``family-arch`` model name (``visiongru-ti``, ..., ``sequencer2d-l``)."""
        return [m for e in self.entries() for m in e.model_names()]

    def split(self, name: str) -> Tuple[BackboneEntry, Optional[str]]:
        """``"visiongru"`` -> (entry, None); ``"visiongru-ti"`` -> (entry, ``"ti"``)."""
        self._load_builtins()
        key = name.lower()
        if key in self._entries:
            return self._entries[key], None
        family, _, arch = key.partition("-")
        if family in self._entries and arch:
            return self._entries[family], arch
        raise KeyError(f"unknown backbone {name!r}; use a family {self.list()} (arch=...) or a model name "
                       f"{self.model_names()}")

    def create(self, name: str, **kwargs) -> Any:
        """Build a backbone from a family (``create("visiongru", arch="tiny")``) or a model name
        (``create("visiongru-ti", out_indices=(0, 1, 2, 3))``); ``kwargs`` go to the constructor."""
        entry, arch = self.split(name)
        if arch is not None:
            if "arch" in kwargs:
                raise ValueError(f"create_backbone({name!r}) names the arch already; drop arch={kwargs['arch']!r} "
                                 f"or use the family name {entry.name!r}")
            kwargs["arch"] = arch
        return entry.create(**kwargs)

    def create_test(self, family: str, **kwargs) -> Any:
        """The family's tiny test model (see :meth:`BackboneEntry.create_test`)."""
        return self.get(family).create_test(**kwargs)


BACKBONES = BackboneRegistry(builtins=builtin_modules)


def register_backbone(name: str, *, test_arch, strides: Sequence[int], test_kwargs: Optional[Mapping] = None,
                      arch_names: Optional[Mapping[str, str]] = None):
    """Class decorator: add a backbone family to :data:`BACKBONES` (see :meth:`BackboneRegistry.register`)."""
    return BACKBONES.register(name, test_arch=test_arch, strides=strides, test_kwargs=test_kwargs,
                              arch_names=arch_names)


def get_backbone(name: str) -> BackboneEntry:
    """The :class:`BackboneEntry` of a family (``"visiongru"``) or class name (``"VisionGRU"``)."""
    return BACKBONES.get(name)


def list_backbones() -> List[str]:
    """Registered families, sorted: ``["sequencer2d", "visiongru"]``."""
    return BACKBONES.list()


def model_names() -> List[str]:
    """Every ``family-arch`` name: ``["sequencer2d-s", "sequencer2d-m", "sequencer2d-l", "visiongru-ti",
    "visiongru-b"]``."""
    return BACKBONES.model_names()


def create_backbone(name: str, **kwargs):
    """Build a family (``"visiongru"``, ``arch=`` in ``kwargs``) or a model name (``"visiongru-ti"``)."""
    return BACKBONES.create(name, **kwargs)


def create_test_backbone(family: str, **kwargs):
    """The family's tiny test model (``kwargs`` override its test arguments)."""
    return BACKBONES.create_test(family, **kwargs)
