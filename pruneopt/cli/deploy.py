"""``pruneopt export`` (verified ONNX, TensorRT engines) and ``pruneopt bench`` (side-by-side runtimes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from export.bench import BenchModel, describe_model, run_bench
from export.inputs import load_calibration
from export.metadata import default_mean_std, read_metadata
from export.onnx import export_onnx, load_model
from export.tensorrt import BatchProfile, EngineConfig, build_engine, import_tensorrt

from ..checkpoint import save_subnet
from ..common.params import parse_int_list, parse_shape
from ..errors import PruneoptError
from ..model_formats import load_model_folder
from ..models import ModelSpec, get_arch, list_archs
from ..pretrained import spec_of
from .export_inputs import InputChoice, choose_input


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise PruneoptError(f"{what} must be comma-separated numbers like 0.485,0.456,0.406, got {text!r}") from None


@click.command("export")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--arch", default=None, metavar="NAME",
              help="Export the unpruned reference network with random weights instead of PATH "
                   f"({', '.join(list_archs())}).")
@click.option("--num-classes", type=int, default=None, help="With --arch: classifier outputs.")
@click.option("--last-stride", type=click.IntRange(1, 2), default=None, help="With --arch: last-stage stride.")
@click.option("--features-only", is_flag=True, help="With --arch: no classifier; export an embedding.")
@click.option("--onnx", "want_onnx", is_flag=True, help="Export ONNX (the default when --trt is not given).")
@click.option("--trt", "want_trt", is_flag=True, help="Also build a TensorRT engine (needs pruneopt[trt] and a GPU).")
@click.option("--fp16", is_flag=True, help="TensorRT: FP16 engine (builder flag on TensorRT 10, strongly typed FP16 "
                                           "ONNX on TensorRT 11).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ONNX file to write. Default: PATH/model.onnx, or ARCH.onnx with --arch.")
@click.option("--engine", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Engine file. Default: the ONNX path with .engine (-fp16.engine with --fp16).")
@click.option("--input", "input_", metavar="CxHxW", default=None,
              help="Input size, e.g. 3x256x128 for re-ID. Default: the folder's preprocess.json, else the "
                   "architecture's.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset.")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), default="auto", show_default=True,
              help="auto: dynamo, falling back to the legacy TorchScript exporter with a warning.")
@click.option("--slim/--no-slim", default=True, show_default=True,
              help="Optimise the graph with onnxscript's optimizer (constant folding, BN folding, dead nodes).")
@click.option("--normalize", is_flag=True, help="Append L2 normalisation to an embedding (features-only) model.")
@click.option("--mean", default=None, help="Per-channel mean stored in the metadata. Default: the folder's "
                                            "preprocess.json, else ImageNet's.")
@click.option("--std", default=None, help="Per-channel std stored in the metadata. Default: the folder's "
                                           "preprocess.json, else ImageNet's.")
@click.option("--override-preprocess", is_flag=True,
              help="Let --input, --mean and --std differ from what the folder's preprocess.json records.")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Real inputs for verification: a folder of jpg/png (resized) or a .npy. Default: generated images.")
@click.option("--verify-batches", default="1,7,64", show_default=True, help="Batch sizes to verify at.")
@click.option("--tolerance", type=float, default=1e-4, show_default=True,
              help="Largest allowed max|onnx - torch| / max|torch|.")
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime vs PyTorch verification.")
@click.option("--max-batch", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Upper bound of the dynamic batch axis given to the dynamo exporter; stored in the metadata.")
@click.option("--trt-min-batch", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--trt-opt-batch", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--trt-max-batch", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workspace-mb", type=click.IntRange(min=1), default=1024, show_default=True,
              help="TensorRT builder workspace limit.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TensorRT timing-cache file, read and updated. Default: timing.cache next to the engine.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def export_cmd(**options: Any) -> None:
    """Export a model folder to verified ONNX, and optionally a TensorRT engine: a subnetwork (a run's winner/, or
    any spec.json + weights folder), or, with reidserve, a re-ID model folder or `reidserve train` run folder
    (exported whole: backbone, GeM, BN neck, L2). The input size, mean/std and colour come from the folder's
    preprocess.json. PATH may also be an exported .onnx, to build its engine with --trt.

    \b
    pruneopt export runs/x/winner --onnx --out winner.onnx
    pruneopt export runs/t1 --out t1.onnx                # a reidserve train run
    pruneopt export --arch resnet50 --features-only --last-stride 1 --normalize --input 3x256x128 --out r50.onnx
    pruneopt export winner.onnx --trt --fp16 --trt-max-batch 128
    """
    o = ExportOptions(**options)
    if o.fp16 and not o.want_trt:
        raise PruneoptError("--fp16 applies to TensorRT engines: add --trt")
    onnx_given = o.path is not None and o.path.suffix == ".onnx"
    if onnx_given and (o.want_onnx or o.arch):
        raise PruneoptError(f"{o.path} is already an ONNX file: pass --trt to build its engine")
    if onnx_given and not o.want_trt:
        raise PruneoptError(f"{o.path} is already an ONNX file: pass --trt to build its engine, or give a subnetwork "
                            "folder to export")
    result: dict[str, Any] = {}
    if o.want_trt:
        import_tensorrt()  # fail before a long export when TensorRT is missing
    if onnx_given:
        assert o.path is not None
        onnx_path, meta = o.path, read_metadata(o.path)
    else:
        onnx_path, meta = _export_onnx(o, result)
    result["metadata"] = meta.to_props()
    if o.want_trt:
        _build_engine(o, onnx_path, result)
    if o.as_json:
        click.echo(json.dumps(result))


@dataclass(frozen=True)
class ExportOptions:
    """The options of ``pruneopt export``."""

    path: Path | None
    arch: str | None
    num_classes: int | None
    last_stride: int | None
    features_only: bool
    want_onnx: bool
    want_trt: bool
    fp16: bool
    out: Path | None
    engine: Path | None
    input_: str | None
    override_preprocess: bool
    opset: int
    exporter: str
    slim: bool
    normalize: bool
    mean: str | None
    std: str | None
    calib: Path | None
    verify_batches: str
    tolerance: float
    no_verify: bool
    max_batch: int
    trt_min_batch: int
    trt_opt_batch: int
    trt_max_batch: int
    workspace_mb: int
    timing_cache: Path | None
    as_json: bool


def _export_onnx(o: ExportOptions, result: dict[str, Any]) -> tuple[Path, Any]:
    """Export (and verify) the model the options name; its facts go into ``result``. Returns the path and the
    metadata written."""
    given = parse_shape(o.input_) if o.input_ else None
    m, s = _floats(o.mean, "--mean"), _floats(o.std, "--std")
    if (m is None) != (s is None):
        raise PruneoptError("give both --mean and --std, or neither")
    if o.arch is not None or o.path is None:
        model = load_model(o.path, o.arch, in_chans=given[0] if given and o.arch else None,
                           num_classes=o.num_classes, last_stride=o.last_stride, features_only=o.features_only)
        spec = spec_of(model)
        shape = given or (spec.in_chans, *get_arch(spec.arch).default_input[1:])
        mean, std = (m, s) if m is not None and s is not None else default_mean_std(shape[0])
        choice = InputChoice(shape, mean, std, normalize=o.normalize)
        fmt = None
    else:
        if any(v is not None for v in (o.num_classes, o.last_stride)) or o.features_only:
            raise PruneoptError("--num-classes, --last-stride and --features-only come from the spec file; do not "
                                "pass them with a model folder")
        loaded = load_model_folder(o.path)
        model, fmt = loaded.model, loaded.format
        choice = choose_input(loaded, given, m, s, normalize=o.normalize, override=o.override_preprocess)
        for line in choice.notes:
            click.echo(f"pruneopt export: {line}", err=True)
    spec, shape = spec_of(model), choice.shape
    onnx_path = o.out or (Path(o.path) / "model.onnx" if o.path is not None and Path(o.path).is_dir()
                          else Path(f"{o.arch or spec.arch}.onnx"))
    real = load_calibration(o.calib, shape, choice.mean, choice.std) if o.calib is not None else None
    res = export_onnx(model, onnx_path, shape, opset=o.opset, exporter=o.exporter, slim=o.slim,
                      normalize=choice.normalize, mean=choice.mean, std=choice.std, verify=not o.no_verify,
                      batches=parse_int_list(o.verify_batches), tolerance=o.tolerance, calib=real,
                      max_batch=o.max_batch, pixel_scale=choice.pixel_scale,
                      extra={"model_format": fmt} if fmt else None)
    meta = res.metadata
    result.update(onnx=str(res.path), exporter=res.exporter, fallback_reason=res.fallback_reason,
                  seconds=round(res.seconds, 2), verification=res.verification.to_dict() if res.verification else None,
                  model_format=fmt, preprocess_source=choice.source)
    if not o.as_json:
        click.echo(f"{spec.arch} ({spec.hash()}) -> {res.path}: {res.exporter} exporter"
                   + (f" (fallback: {res.fallback_reason})" if res.fallback_reason else "")
                   + f", opset {meta.opset}, input {'x'.join(map(str, shape))}, output {meta.output_kind}"
                   f"[{meta.output_dim}]{' L2-normalised' if meta.normalized else ''}, {res.seconds:.1f} s"
                   + (f" ({fmt} model folder, preprocessing {choice.source})" if fmt else "")
                   + (" (random weights: --arch exports the untrained reference network)" if o.arch else ""))
        if res.verification:
            for line in res.verification.lines():
                click.echo("  " + line)
            click.echo(f"  verified: worst relative error {res.verification.worst.rel:.2e} <= {o.tolerance:g}")
    return onnx_path, meta


def _build_engine(o: ExportOptions, onnx_path: Path, result: dict[str, Any]) -> None:
    """Build the TensorRT engine of ``onnx_path``; its facts go into ``result``."""
    engine_path = o.engine or onnx_path.with_name(onnx_path.stem + ("-fp16" if o.fp16 else "") + ".engine")
    cfg = EngineConfig(BatchProfile(o.trt_min_batch, o.trt_opt_batch, o.trt_max_batch), fp16=o.fp16,
                       workspace_mb=o.workspace_mb, timing_cache=o.timing_cache or engine_path.parent / "timing.cache")
    built = build_engine(onnx_path, engine_path, cfg, log=lambda msg: click.echo(msg, err=True))
    result.update(engine=str(built.path), engine_sidecar=built.sidecar)
    if not o.as_json:
        side = built.sidecar
        click.echo(f"TensorRT {side['tensorrt_version']} engine -> {built.path} ({side['precision']}"
                   f"{', ' + built.fp16_mode if built.fp16_mode else ''}, batch {o.trt_min_batch}/{o.trt_opt_batch}/"
                   f"{o.trt_max_batch}, {side['engine_bytes'] / 2**20:.1f} MiB)")


@click.command("bench")
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("--arch", default=None, metavar="NAME",
              help="Add the unpruned reference network (random weights) as the first model, with the options "
                   "(classes, last stride, features-only) of the first given subnetwork of that architecture.")
@click.option("--runtimes", default="torch,ort-cpu", show_default=True,
              help="Comma-separated: torch, torch-cpu, torch-cuda, ort-cpu, ort-cuda, ort-trt, trt.")
@click.option("--batch", "batches", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--input", "input_", metavar="CxHxW", default=None, help="Input size, e.g. 3x256x128.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="Untimed runs first.")
@click.option("--iters", type=click.IntRange(min=1), default=20, show_default=True, help="Timed rounds.")
@click.option("--seconds", type=float, default=None, help="Instead of --iters: seconds per runner per batch size.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads for torch and ONNX Runtime. Default: all cores.")
@click.option("--spin", is_flag=True, help="Let idle threads spin-wait (ONNX Runtime's default, and torch's without "
                                          "OMP_WAIT_POLICY=PASSIVE); off here, see the module docs of export.bench.")
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure peak memory per runtime and batch in a fresh subprocess.")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "legacy"]), default="auto", show_default=True,
              help="Exporter for models given as folders.")
@click.option("--fp16", is_flag=True, help="FP16 for the TensorRT runtimes (ort-trt, trt).")
@click.option("--normalize", is_flag=True, help="L2-normalise embeddings of features-only folders.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep exported ONNX / engines here (default: a temporary folder, removed afterwards).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write all results as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a throughput / latency plot (PNG).")
def bench_cmd(models, arch, runtimes, batches, input_, warmup, iters, seconds, threads, spin, memory, exporter,  # noqa: ANN001
              fp16, normalize, work_dir, json_out, plot) -> None:
    """Benchmark models side by side on several runtimes: latency (median, p90, p99), throughput and peak memory
    per batch size, interleaved round by round. With two or more models, speedups are relative to the first.

    MODEL is a subnetwork folder (spec.json + weights), an .onnx from `pruneopt export`, or a TensorRT .engine.

    \b
    pruneopt bench --arch resnet50 runs/x/winner --input 3x256x128 --runtimes torch,ort-cpu --batch 1,32
    """
    _rerun_with_passive_omp(spin)
    if not models and arch is None:
        raise PruneoptError("give at least one MODEL (subnetwork folder, .onnx or .engine), or --arch NAME")
    shape = parse_shape(input_) if input_ else None
    bms: list[BenchModel] = []
    tmp_ref = None
    try:
        if arch is not None:
            a = get_arch(arch)
            options = _parent_options(models, a.name)
            options.setdefault("in_chans", shape[0] if shape else a.default_input[0])
            tmp_ref = Path(tempfile.mkdtemp(prefix="pruneopt-ref-"))
            folder = save_subnet(load_model(None, arch, **options), tmp_ref / arch)
            bms.append(describe_model(folder, label=arch))
        for m in models:
            if not m.exists():
                raise PruneoptError(f"{m} does not exist (give a subnetwork folder, an .onnx or an .engine)")
            bm = describe_model(m)
            bm.normalize = bm.normalize or normalize
            bms.append(bm)
        result = run_bench(bms, [r.strip() for r in runtimes.split(",") if r.strip()], parse_int_list(batches),
                           input_shape=shape, warmup=warmup, iters=iters, seconds=seconds, threads=threads,
                           spin=spin, memory=memory, exporter=exporter, fp16=fp16, work_dir=work_dir,
                           log=lambda msg: click.echo(msg, err=True))
    finally:
        if tmp_ref is not None:
            shutil.rmtree(tmp_ref, ignore_errors=True)
    meta = result.meta
    budget = f"{seconds:g} s per runner" if seconds else f"{iters} rounds"
    load = (f"; load average {meta['load_avg_before']:.2f} -> {meta['load_avg_after']:.2f}"
            if meta.get("load_avg_before") is not None else "")
    click.echo(f"input {'x'.join(map(str, meta['input_shape']))}, {meta['threads']} threads on {meta['machine']}, "
               f"interleaved, {budget} after {warmup} warm-up{load}")
    click.echo(result.markdown())
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        click.echo(f"results -> {json_out}", err=True)
    if plot is not None:
        click.echo(f"plot -> {result.plot(plot)}", err=True)
    if not any(c.times_s for c in result.cells):
        raise PruneoptError("nothing was measured: " + "; ".join(f"{s['runtime']}: {s['reason']}"
                                                                 for s in result.skipped[:3]))


def _rerun_with_passive_omp(spin: bool) -> None:
    """Re-run this ``pruneopt bench`` command line with ``OMP_WAIT_POLICY=PASSIVE`` (read by OpenMP only when
    torch loads), so that torch's idle threads do not spin-wait while another runtime is timed. Only when started
    as the ``pruneopt`` program, the variable is unset and ``--spin`` is not given."""
    if spin or "OMP_WAIT_POLICY" in os.environ or Path(sys.argv[0]).name != "pruneopt" or "bench" not in sys.argv:
        return
    click.echo("pruneopt bench: re-running with OMP_WAIT_POLICY=PASSIVE (set it yourself to skip this)", err=True)
    code = subprocess.call([sys.executable, "-c", "import sys; sys.argv[0] = 'pruneopt'; "
                            "from pruneopt.cli import main; main()", *sys.argv[1:]],
                           env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    sys.exit(code)


def _parent_options(models: tuple[Path, ...], arch: str) -> dict:
    """The options (channels, classes, last stride, features-only) of the first subnetwork of ``arch`` given,
    so that ``--arch`` builds the unpruned parent of the subnetworks being compared."""
    for m in models:
        folder = m.parent if m.suffix == ".json" else m
        if (folder / "spec.json").is_file():
            spec = ModelSpec.load(folder)
            if spec.arch == arch:
                return {"in_chans": spec.in_chans, "num_classes": spec.num_classes, "last_stride": spec.last_stride,
                        "features_only": spec.features_only}
    return {}
