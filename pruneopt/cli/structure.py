"""``pruneopt count``, ``pruneopt space``, ``pruneopt sample`` and ``pruneopt thin``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..checkpoint import load_subnet, save_subnet
from ..common.files import atomic_write
from ..complexity import Complexity, count, count_module, parse_input
from ..errors import PruneoptError
from ..models import ModelSpec, get_arch, list_archs
from ..preprocess import read_preprocess
from ..pretrained import is_state_file, load_state_dict_parent, spec_of
from ..space import PruningSpace, Regime
from ..thinning import CRITERIA, thin


def _spec_options(f):  # noqa: ANN001, ANN202 - decorator
    f = click.option("--last-stride", type=click.IntRange(1, 2), default=None,
                     help="Stride of the last stage (1 for re-ID). Default: 2, or the spec file's.")(f)
    f = click.option("--num-classes", type=int, default=None,
                     help="Classifier outputs. Default: the architecture's (1000 ImageNet-style, 10 CIFAR-style).")(f)
    f = click.option("--input", "input_", metavar="CxHxW", default=None,
                     help="Input size, e.g. 3x224x224; C sets the input channels. Default: the architecture's.")(f)
    f = click.option("--spec", "spec_path", type=click.Path(dir_okay=True, path_type=Path), default=None,
                     help="A spec.json (or a folder holding one) instead of --arch.")(f)
    f = click.option("--arch", default=None, metavar="NAME",
                     help=f"Architecture: {', '.join(list_archs())}.")(f)
    return f


def resolve_spec(arch: str | None, spec_path: Path | None, input_: str | None, num_classes: int | None,
                 last_stride: int | None) -> tuple[ModelSpec, tuple[int, int, int]]:
    """The spec and input shape the options describe (``--arch`` gives the unpruned reference network)."""
    if (arch is None) == (spec_path is None):
        raise PruneoptError("give exactly one of --arch NAME or --spec FILE")
    if spec_path is not None:
        spec = ModelSpec.load(spec_path)
        shape = parse_input(input_, (spec.in_chans, *get_arch(spec.arch).default_input[1:]))
        if shape[0] != spec.in_chans:
            raise PruneoptError(f"--input has {shape[0]} channels but the spec has in_chans={spec.in_chans}")
        if num_classes is not None or last_stride is not None:
            raise PruneoptError("--num-classes and --last-stride come from the spec file; do not pass them with --spec")
        return spec, shape
    a = get_arch(arch)  # type: ignore[arg-type]
    shape = parse_input(input_, a.default_input)
    if num_classes is not None and num_classes < 1:
        raise PruneoptError(f"--num-classes must be >= 1, got {num_classes}")
    spec = a.default_spec(in_chans=shape[0], num_classes=num_classes, last_stride=last_stride or 2)
    return spec, shape


@click.command("count")
@_spec_options
@click.option("--check", is_flag=True, help="Also count with hooks on the built module; fail if the counts differ.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def count_cmd(arch, spec_path, input_, num_classes, last_stride, check, as_json) -> None:  # noqa: ANN001
    """MACs ("FLOPs"), parameters and activations of a network, counted analytically from its spec.

    \b
    pruneopt count --arch resnet50 --json
    pruneopt count --spec runs/demo/winner --input 1x28x28
    """
    spec, shape = resolve_spec(arch, spec_path, input_, num_classes, last_stride)
    c = count(spec, shape[1:])
    if check:
        h = count_module(get_arch(spec.arch).build(spec), shape)
        if h != c:
            raise PruneoptError(f"analytic count {c} differs from the hook count {h}")
    out = {**c.to_dict(), "arch": spec.arch, "input": list(shape), "spec_hash": spec.hash()}
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"{spec.arch} at {'x'.join(map(str, shape))}: {_human(c)}")


def _human(c: Complexity) -> str:
    return (f"{c.macs / 1e6:,.2f} M MACs, {c.params / 1e6:,.3f} M params, {c.activations / 1e6:,.2f} M activations, "
            f"R = {c.ratio:.1f} MACs/param")


def _space_options(f):  # noqa: ANN001, ANN202
    f = click.option("--round-to", type=int, default=None,
                     help="Round widths to this multiple. Default: 8 ImageNet-style, 1 CIFAR-style.")(f)
    f = click.option("--r-max", type=float, default=1.0, show_default=True, help="Largest keep ratio.")(f)
    f = click.option("--r-min", type=float, default=0.2, show_default=True, help="Smallest keep ratio.")(f)
    return f


@click.command("space")
@_spec_options
@_space_options
@click.option("--json", "as_json", is_flag=True, help="Print the groups as a JSON list.")
def space_cmd(arch, spec_path, input_, num_classes, last_stride, r_min, r_max, round_to, as_json) -> None:  # noqa: ANN001
    """The prunable groups of a network: member layers, channels and keep-ratio range.

    Each block-internal conv is its own group; channels tied by residual additions form one group per stage.
    """
    spec, shape = resolve_spec(arch, spec_path, input_, num_classes, last_stride)
    space = PruningSpace(spec, r_min, r_max, round_to, shape[1:])
    rows = space.table()
    if as_json:
        click.echo(json.dumps(rows))
        return
    from rich.console import Console  # lazy: rich tables only for this command's output
    from rich.table import Table

    lo, hi = space.fraction_range()
    table = Table(title=f"{spec.arch}: {len(rows)} prunable groups, keep ratio {r_min:g}..{r_max:g}, "
                        f"round to {space.round_to}; FLOPs fraction {lo:.3f}..{hi:.3f}")
    for col in ("group", "kind", "channels", "widths", "writers", "readers"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["kind"], str(r["channels"]), f"{r['min_width']}..{r['max_width']}",
                      ", ".join(r["producers"]), ", ".join(r["consumers"]))
    Console(width=160).print(table)


@click.command("sample")
@_spec_options
@_space_options
@click.option("--regime", type=float, required=True, help="Target fraction of the parent's FLOPs, in (0, 1].")
@click.option("--band", type=float, default=0.01, show_default=True, help="Absolute half-width of the regime.")
@click.option("-n", "--num", "n", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Subnetworks to sample.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default=None,
              help="JSON-lines file, one subnetwork a line ('-' for stdout). Default: print a summary only.")
def sample_cmd(arch, spec_path, input_, num_classes, last_stride, r_min, r_max, round_to, regime, band, n, seed,  # noqa: ANN001
               out) -> None:
    """Sample subnetworks with uniform keep ratios inside a FLOPs regime (rejection sampling).

    Each line of --out holds the spec, macs, params, ratio (FLOPs/params), flops_fraction and stage widths.

    \b
    pruneopt sample --arch resnet50 --regime 0.5 --band 0.01 -n 1000 --seed 0 --out samples.jsonl
    """
    spec, shape = resolve_spec(arch, spec_path, input_, num_classes, last_stride)
    space = PruningSpace(spec, r_min, r_max, round_to, shape[1:])
    t0 = time.perf_counter()
    samples = space.sample(n, Regime(regime, band), seed)
    elapsed = time.perf_counter() - t0
    if out is not None:
        lines = (json.dumps(rec) + "\n" for rec in samples.records())
        if str(out) == "-":
            sys.stdout.writelines(lines)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out, "".join(lines))
    ratio = samples.stats.ratio
    parent_m = space.parent_complexity.macs / 1e6
    click.echo(
        f"{len(samples)} subnetworks of {spec.arch} at {Regime(regime, band)} of {parent_m:,.1f} M MACs: "
        f"acceptance {samples.acceptance_rate:.2%} of {samples.drawn:,} draws in {elapsed:.2f} s; "
        f"R {ratio.min():.1f}..{ratio.max():.1f}" + (f" -> {out}" if out is not None and str(out) != "-" else ""),
        err=True,
    )


def read_spec_arg(text: str, line: int | None) -> ModelSpec:
    """``--spec``: a JSON line (a ``pruneopt sample`` record or a bare spec), a spec.json file or a folder holding
    one, or a JSON-lines file (its ``line``-th line; its only line when ``line`` is not given)."""
    source = text.strip()
    if not source.startswith("{"):
        path = Path(text)
        if path.is_dir() or path.suffix == ".json":
            if line is not None:
                raise PruneoptError("--line applies to a JSON-lines --spec file only")
            return ModelSpec.load(path)
        try:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        except OSError as exc:
            raise PruneoptError(f"--spec {text}: cannot read ({exc.strerror or exc})") from None
        if line is None and len(lines) != 1:
            raise PruneoptError(f"--spec {text} holds {len(lines)} lines; pick one with --line N (1 to {len(lines)})")
        index = 1 if line is None else line
        if not 1 <= index <= len(lines):
            raise PruneoptError(f"--line {index}: --spec {text} has {len(lines)} lines")
        source = lines[index - 1]
    elif line is not None:
        raise PruneoptError("--line applies to a JSON-lines --spec file only")
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise PruneoptError(f"--spec: not JSON ({exc.msg} at column {exc.colno})") from None
    return ModelSpec.from_dict(data.get("spec", data) if isinstance(data, dict) else data)


@click.command("thin")
@click.option("--parent", required=True, type=click.Path(exists=True, path_type=Path), metavar="DIR|FILE",
              help="The trained parent: a subnetwork folder (spec.json + weights.safetensors) or a state-dict file "
                   "(.pth, .pt, .safetensors) in torchvision naming.")
@click.option("--arch", default=None, metavar="NAME", help="A state-dict parent's architecture [found from its keys].")
@click.option("--spec", "spec_text", required=True, metavar="FILE|JSONL-LINE",
              help="The subnetwork: a line of `pruneopt sample` output (or a bare spec) as JSON, a spec.json (or its "
                   "folder), or a JSON-lines file (with --line).")
@click.option("--line", type=click.IntRange(min=1), default=None, help="The line of a JSON-lines --spec file.")
@click.option("--criterion", type=click.Choice(list(CRITERIA)), default="l1", show_default=True,
              help="Filter importance: l1 (largest-L1 filters), l2, or bn (batch-norm scale).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The subnetwork folder to write (spec.json, weights.safetensors, and preprocess.json when the "
                   "parent has one).")
def thin_cmd(parent: Path, arch: str | None, spec_text: str, line: int | None, criterion: str, out: Path) -> None:
    """Cut a subnetwork out of a trained parent, keeping each group's most important filters (largest L1 norm).

    For people who drive the sampling themselves: the spec comes from `pruneopt sample`, or any tool that writes
    one. The result is a subnetwork folder, ready to fine-tune, count or export.

    \b
    pruneopt sample --spec runs/demo/parent --input 1x28x28 --regime 0.5 -n 10 --out samples.jsonl
    pruneopt thin --parent runs/demo/parent --spec samples.jsonl --line 3 --out runs/sub3
    pruneopt thin --parent resnet50.pth --spec "$(head -n 1 samples.jsonl)" --out runs/r50-half
    """
    model = load_state_dict_parent(parent, arch) if is_state_file(parent) else load_subnet(parent)
    pspec = spec_of(model)
    if arch is not None and not is_state_file(parent) and get_arch(arch).name != pspec.arch:
        raise PruneoptError(f"--parent {parent} is a {pspec.arch}, not a {arch}")
    spec = read_spec_arg(spec_text, line)
    child = thin(model, spec, criterion)
    preprocess = None if is_state_file(parent) else read_preprocess(parent)
    save_subnet(child, out, preprocess)
    hw = preprocess.input_shape[1:] if preprocess else get_arch(spec.arch).default_input[1:]
    c, p = count(spec, hw), count(pspec, hw)
    click.echo(f"{out}: {spec.arch} subnetwork, {c.macs / 1e6:,.2f} M MACs at {hw[0]}x{hw[1]} ({c.macs / p.macs:.3f} "
               f"of the parent), {c.params:,} params, R = {c.ratio:.1f}; {criterion} filters kept"
               + ("; preprocess.json copied" if preprocess else ""))
