"""Config sections: frozen dataclasses whose fields carry their default, help text and named presets once.

A search's config is the :class:`CommonConfig` section plus the section of its task. Every field is declared with
:func:`setting`, so its default, the help text of its command-line option and its value in each named preset
(``quick``) live in one place; the command line (:mod:`pruneopt.cli.task_options`) and :func:`preset_values` read
them from there::

    @dataclass(frozen=True)
    class MySection:
        steps: int = setting(60, "SGD steps of each candidate's fine-tune", quick=20)

A setting added after a section was first released is declared with ``since="VERSION"``: a stored config holds it
only when it differs from its default (:func:`section_dict`), so the runs made before it existed -- whose stored
configs lack it and which behave as its default -- keep resuming, and their stored configs stay byte-identical.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import PruneoptError
from ..models import get_arch
from ..pretrained import STATE_SUFFIXES
from ..space import Regime

Parser = Callable[[str, str], Any]  # (text, option name) -> value; raises a PruneoptError with a one-line message


def setting(default: Any, help: str, *, metavar: str | None = None, parse: Parser | None = None,
            choices: tuple[str, ...] | None = None, flag: bool = False, cli: bool = True, none: str | None = None,
            since: str | None = None, shown: str | None = None, **presets: Any) -> Any:
    """A section field: its ``default``, the ``help`` of its option (without the default: that is shown from the
    field), how the command line reads it (``parse``, ``choices``, ``flag``; ``cli=False``: library only), how a
    ``None`` default reads in the help (``none``) or how another default does (``shown``), the version that added it
    (``since``: stored only when not at its default) and its value in named presets (``quick=16``)."""
    meta = {"help": help, "metavar": metavar, "parse": parse, "choices": choices, "flag": flag, "cli": cli,
            "none": none, "since": since, "shown": shown, "presets": presets}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Setting:
    """One field of a section, as the command line and the presets see it."""

    name: str
    default: Any
    help: str
    type: Any  # the field's annotation, resolved (e.g. ``int | None``)
    metavar: str | None
    parse: Parser | None
    choices: tuple[str, ...] | None
    flag: bool
    cli: bool
    none: str | None
    presets: dict[str, Any]
    since: str | None = None
    shown: str | None = None

    @property
    def option(self) -> str:
        """The command-line option: ``refined_samples`` -> ``--refined-samples``."""
        return option_name(self.name)

    def show(self, value: Any) -> str:
        """``value`` as the help text shows it (tuples as ``256x128`` for ``HxW``-like metavars, else ``0.25,0.5``)."""
        if value is None:
            return self.none or "none"
        if self.shown is not None and value == self.default:
            return self.shown
        if isinstance(value, tuple):
            sep = "x" if self.metavar and "x" in self.metavar else ","
            return sep.join(str(v) for v in value)
        return str(value)

    def default_text(self) -> str:
        """``[64; quick 16]``: the default and each preset's value."""
        parts = [self.show(self.default)] + [f"{name} {self.show(v)}" for name, v in self.presets.items()]
        return "[" + "; ".join(parts) + "]"


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


@cache
def settings_of(section: type) -> tuple[Setting, ...]:
    """The settings of a section class, in field order."""
    hints = typing.get_type_hints(section)
    out = []
    for f in fields(section):
        if f.default is MISSING or "help" not in f.metadata:
            raise TypeError(f"{section.__name__}.{f.name} must be declared with setting(default, help)")
        m = f.metadata
        out.append(Setting(f.name, f.default, m["help"], hints[f.name], m["metavar"], m["parse"], m["choices"],
                           m["flag"], m["cli"], m["none"], dict(m["presets"]), m["since"], m["shown"]))
    return tuple(out)


def field_names(section: type) -> tuple[str, ...]:
    return tuple(s.name for s in settings_of(section))


def preset_values(section: type, preset: str) -> dict[str, Any]:
    """The values the named ``preset`` gives the fields of ``section`` (fields it leaves alone are absent)."""
    return {s.name: s.presets[preset] for s in settings_of(section) if preset in s.presets}


def section_dict(section: Any) -> dict[str, Any]:
    """A section's values as JSON-able data, in field order (tuples become lists); a setting declared with
    ``since`` is left out while it holds its default."""
    cls: type = type(section)
    later = {s.name: s.default for s in settings_of(cls) if s.since is not None}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(section).items()
            if k not in later or v != later[k]}


# -- command-line parsers of common values ----------------------------------------------------------------------
def parse_regimes(text: str, option: str) -> tuple[float, ...]:
    """``"0.25,0.5"`` -> ``(0.25, 0.5)``."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise PruneoptError(f"{option} must be comma-separated numbers, got {text!r}") from None


def existing_folder(text: str, option: str) -> str:
    """An existing folder, as an absolute path (the config records where the data or parent was)."""
    path = Path(text)
    if not path.is_dir():
        raise PruneoptError(f"{option} {text}: not a folder")
    return str(path.resolve())



def existing_parent(text: str, option: str) -> str:
    """A parent: an existing subnetwork folder or state-dict file (``.pth``, ``.pt``, ``.safetensors``), as an
    absolute path."""
    path = Path(text)
    if path.is_dir() or (path.is_file() and path.suffix.lower() in STATE_SUFFIXES):
        return str(path.resolve())
    if path.is_file():
        raise PruneoptError(f"{option} {text}: a state-dict file must end in {', '.join(STATE_SUFFIXES)}")
    raise PruneoptError(f"{option} {text}: not a folder (nor a {', '.join(STATE_SUFFIXES)} state-dict file)")


SEEDINGS = ("common", "per-candidate")  # --seeding
REFINE_BY = ("global", "stage")  # --refine-by


@dataclass(frozen=True)
class CommonConfig:
    """The settings every search has, whatever its task (see :mod:`pruneopt.search`)."""

    arch: str = setting("resnet20", "Parent architecture (taken from --parent when it is given and this is not)",
                        metavar="NAME")
    task: str = setting("classification", "The search task (the command line lists the registered ones)", cli=False)
    data: str = setting("fashion-mnist", "What the task searches on (see --task)", metavar="NAME|DIR")
    regimes: tuple[float, ...] = setting((0.5,), "Comma-separated FLOPs regimes (fractions of the parent's FLOPs); "
                                         "the first is the primary", metavar="F1,F2,...", parse=parse_regimes)
    band: float = setting(0.01, "Absolute half-width of each regime (the finals land within +-0.005)")
    samples: int = setting(64, "Subnetworks sampled and evaluated per regime in the initial space", quick=16)
    refined_samples: int = setting(64, "Fresh subnetworks per regime in the refined space", quick=16)
    seed: int = setting(0, "Seed of everything: sampling, training, bootstrap")
    r_min: float = setting(0.2, "Smallest keep ratio of a group")
    r_max: float = setting(1.0, "Largest keep ratio of a group")
    round_to: int | None = setting(None, "Round widths to this multiple",
                                   none="architecture default: 1 CIFAR-style, 8 ImageNet-style")
    eps: float | None = setting(None, "Refined space keeps |R - R*| <= eps R*",
                                none="from the bootstrap: the best models' R range")
    top: float = setting(0.1, "Fraction of a population that counts as its best models for R*", cli=False)
    n_boot: int = setting(2000, "Bootstrap resamples of R*", cli=False, quick=500)
    parent: str | None = setting(None, "A trained parent: a subnetwork folder (spec.json + weights.safetensors) or, "
                                 "for classification, a state-dict file (.pth, .pt, .safetensors) in torchvision "
                                 "naming", none="trained in the run, where the task can", metavar="DIR|FILE",
                                 parse=existing_parent)
    latency: bool = setting(False, "Also measure each candidate's ONNX Runtime CPU latency", flag=True)
    seeding: str = setting("common", "Fine-tune seeds of the candidates: common (one seed and one data order for "
                           "every candidate, so scores differ by their specs) or per-candidate (each its own)",
                           choices=SEEDINGS)
    noise_specs: int = setting(3, "Initial candidates (spread from best to worst) re-evaluated with extra seeds to "
                               "measure the noise floor, per regime (0: none)", quick=2)
    noise_seeds: int = setting(3, "Extra fine-tune seeds of each noise-floor candidate (0: none)", quick=2)
    refine_by: str = setting("global", "What the refined space constrains: global (R = FLOPs/params of the whole "
                             "network) or stage (the vector of per-stage R)", choices=REFINE_BY)

    def __post_init__(self) -> None:
        get_arch(self.arch)
        if not self.regimes:
            raise PruneoptError("give at least one regime")
        for r in self.regimes:
            Regime(r, self.band)
        if self.samples < 4 or self.refined_samples < 4:
            raise PruneoptError("--samples must be at least 4 (an EDF of fewer models says nothing)")
        if self.eps is not None and not 0 < self.eps < 1:
            raise PruneoptError(f"--eps must be in (0, 1), got {self.eps}")
        if self.seeding not in SEEDINGS:
            raise PruneoptError(f"--seeding must be one of {', '.join(SEEDINGS)}, got {self.seeding!r}")
        if self.refine_by not in REFINE_BY:
            raise PruneoptError(f"--refine-by must be one of {', '.join(REFINE_BY)}, got {self.refine_by!r}")
        if not 0 <= self.noise_specs <= self.samples or self.noise_seeds < 0:
            raise PruneoptError(f"--noise-specs must be in [0, --samples] and --noise-seeds >= 0, got "
                                f"{self.noise_specs} and {self.noise_seeds}")
