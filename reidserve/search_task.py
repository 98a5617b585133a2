"""The search task ``reid``: ``pruneopt search --task reid`` scores candidates by re-ID mAP.

reidserve registers it as a plug-in of pruneopt's search (the entry point ``reid = "reidserve.search_task:TASK"`` of
the group ``pruneopt.search_tasks``); pruneopt itself imports nothing from reidserve.

* **data** -- ``data`` is a re-ID dataset folder (Market-1501 layout); ``val_data`` (default: ``data``) another one
  that scores the candidates;
* **parent** -- must be given (a backbone folder, ``spec.json`` + ``weights.safetensors``, a re-ID model folder
  such as an earlier re-ID search's ``winner/``, or a ``reidserve train`` run folder: what ``reidserve eval --model``
  takes); its backbone is stored in ``parent/`` as a features-only, last-stride-1, RGB subnetwork and FLOPs are
  counted at ``size``;
* **candidates** -- :class:`ReidEvaluator`, for each spec:

  1. thin the parent backbone to the spec, keeping its largest-L1 filters (:func:`pruneopt.thinning.thin`);
  2. recalibrate its batch norm on ``bn_batches`` batches of P x K training images of ``val_data`` (adaptive BN,
     :func:`reidserve.train.recalibrate.recalibrate_bn`), as classification candidates are;
  3. fine-tune it with :func:`reidserve.train.finetune_and_score`: a fresh GeM + BNNeck head, ``finetune_steps``
     TMP steps of P x K images (``reid_batch``) on the training images of ``val_data`` (no labels: pseudo-identities
     from k-reciprocal Jaccard + DBSCAN clustering, ``finetune_rounds`` cluster-and-train rounds; an epoch with
     fewer than P pseudo-identities takes every image as its own), the same budget for every candidate;
  4. score mAP on the query/gallery split of ``val_data``; the candidate's error is ``1 - mAP``;

* **finals** -- the same longer fine-tune (``final_steps`` in ``final_rounds`` rounds, resumable, in
  ``runs/NAME/final/MODEL/run``) on ``data``, then ``1 - mAP`` on its query/gallery as the test error. Without
  ``val_data`` the candidates were selected on the same query/gallery as the final figures; the report says so.
  The winner's fine-tuned model -- backbone, GeM, BNNeck, L2, the model whose mAP the report shows -- is saved as
  a re-ID model folder in ``winner/`` (:func:`reidserve.model.save_reid_model`, with its ``preprocess.json``), so
  ``pruneopt export runs/NAME/winner`` exports exactly what was scored; ``reidserve eval --model``,
  ``reidserve train --backbone`` and a later search's ``--parent`` take it too.

All randomness comes from the candidate's seed, so its error does not depend on the worker, the order or an
interruption (equal thread counts on the same machine).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruneopt.baselines import final_criterion
from pruneopt.checkpoint import load_subnet, save_subnet
from pruneopt.common.params import parse_pair
from pruneopt.errors import PruneoptError
from pruneopt.evaluate import EvalResult, onnx_latency_ms
from pruneopt.models import ModelSpec, Network
from pruneopt.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from pruneopt.seeds import derive_seed
from pruneopt.tasks.base import ConfigView, FinalResult, ParentResult, RunContext, final_rows, fmt
from pruneopt.tasks.sections import existing_folder, setting
from pruneopt.thinning import thin

from .cluster import ClusterConfig, ClusterError
from .data import DatasetError, load_dataset
from .model import HeadConfig, ModelError, ReidModel, backbone_from_subnet, backbone_spec
from .train import TrainError, evaluate_model, finetune_and_score, finetune_config, train_reid
from .train.finetune import SearchTrainer
from .train.images import DecodedImages
from .train.recalibrate import recalibrate_bn

OUTLIER_MODES = ("drop", "singleton")
PARENT_HINT = (
    "--task reid needs --parent: a trained backbone folder (spec.json + weights.safetensors), e.g. made with "
    "`python bench/tmp_train.py pretrain --data DIR --out runs/src --arch resnet18 --size 256x128`, the winner/ of "
    "an earlier search, or a `reidserve train` run folder (or its model/)"
)
NEEDS_DATA = ("--task reid needs --data DIR: a re-ID dataset folder (Market-1501 layout: bounding_box_train/, "
              "bounding_box_test/, query/)")
SAME_QUERY_GALLERY_NOTE = (
    "no separate --val-data: the candidates were scored, and the winner selected, on the same query/gallery "
    "as the final test figures, so the winner's test mAP is optimistically biased"
)


def _hw(text: str, option: str) -> tuple[int, int]:
    return parse_pair(text, option, "HxW, e.g. 256x128", error=PruneoptError)


def _pxk(text: str, option: str) -> tuple[int, int]:
    return parse_pair(text, option, "PxK, e.g. 16x4", error=PruneoptError)


@dataclass(frozen=True)
class ReidSection:
    """The settings of a re-ID search (after the common ones)."""

    finetune_steps: int = setting(100, "unsupervised TMP steps of each candidate's fine-tune", quick=20)
    finetune_lr: float = setting(3.5e-4, "learning rate (Adam) of each candidate's fine-tune and of the finals",
                                 cli=False)
    val_data: str | None = setting(None, "a dataset folder that scores the candidates (fine-tune on its training "
                                   "images, mAP on its query/gallery)", metavar="DIR", parse=existing_folder,
                                   none="--data: then the winner is selected on the final query/gallery, as the "
                                   "report says")
    size: tuple[int, int] = setting((256, 128), "input height x width of the FLOPs count and of every fine-tune",
                                    metavar="HxW", parse=_hw)
    reid_batch: tuple[int, int] = setting((16, 4), "P pseudo-identities x K images per fine-tune batch",
                                          metavar="PxK", parse=_pxk, quick=(8, 4))
    finetune_rounds: int = setting(1, "cluster-and-train rounds of each candidate's fine-tune")
    final_steps: int = setting(400, "TMP steps of the final fine-tune of the winner and the baselines", quick=60)
    final_rounds: int = setting(4, "cluster-and-train rounds of the final fine-tune", quick=2)
    bn_batches: int = setting(4, "batches of P x K training images that recalibrate each candidate's batch norm "
                                 "after thinning (0: none)", quick=2)
    k1: int = setting(30, "clustering: k of the k-reciprocal neighbours")
    k2: int = setting(6, "clustering: neighbours of the local query expansion")
    cluster_eps: float = setting(0.6, "clustering: DBSCAN eps on the Jaccard distance")
    outliers: str = setting("drop", "clustering: drop DBSCAN outliers or keep each as its own identity",
                            choices=OUTLIER_MODES)


_DEFAULTS = ReidSection()


@dataclass(frozen=True)
class ReidSettings:
    """How every candidate of a re-ID search is fine-tuned and scored (JSON-able, sent to every worker); defaults
    are the config section's."""

    parent_dir: str  # the parent backbone (features-only, RGB; a subnetwork folder)
    data: str  # re-ID dataset folder: fine-tune on its training images, score on its query/gallery
    steps: int = _DEFAULTS.finetune_steps
    rounds: int = _DEFAULTS.finetune_rounds
    size: tuple[int, int] = _DEFAULTS.size  # input H x W
    batch: tuple[int, int] = _DEFAULTS.reid_batch  # P identities x K images
    lr: float = _DEFAULTS.finetune_lr
    k1: int = _DEFAULTS.k1
    k2: int = _DEFAULTS.k2
    cluster_eps: float = _DEFAULTS.cluster_eps
    min_samples: int = 4
    outliers: str = _DEFAULTS.outliers
    loss: str = "tmp"
    device: str = "cpu"
    latency: bool = False  # also measure ONNX Runtime CPU latency of the thinned backbone
    latency_batch: int = 32
    bn_batches: int = _DEFAULTS.bn_batches  # batch-norm recalibration batches (P x K images) after thinning

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"], d["batch"] = list(self.size), list(self.batch)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReidSettings:
        return cls(**{**d, "size": tuple(d.get("size", _DEFAULTS.size)),
                      "batch": tuple(d.get("batch", _DEFAULTS.reid_batch))})

    def cluster_config(self) -> ClusterConfig:
        """The clustering of these settings."""
        try:
            return ClusterConfig(k1=self.k1, k2=self.k2, eps=self.cluster_eps, min_samples=self.min_samples,
                                 outliers=self.outliers)  # type: ignore[arg-type]
        except ClusterError as exc:
            raise PruneoptError(f"clustering: {exc}") from None


def finetune_kwargs(settings: ReidSettings, threads: int | None) -> dict[str, Any]:
    """Keyword arguments of :func:`reidserve.train.finetune_and_score` / ``finetune_config`` for ``settings``
    (everything except the network, the data, the steps and the seed)."""
    s = settings
    return {"rounds": s.rounds, "size": tuple(s.size), "batch": tuple(s.batch), "loss": s.loss,
            "cluster": s.cluster_config(), "lr": s.lr, "threads": threads, "device": s.device, "workers": 0}


class ReidEvaluator:
    """Thin -> batch-norm recalibration -> short TMP fine-tune -> ``1 - mAP`` on the query/gallery of
    ``settings.data``."""

    def __init__(self, settings: ReidSettings | dict[str, Any]) -> None:
        self.settings = settings if isinstance(settings, ReidSettings) else ReidSettings.from_dict(settings)
        self.settings.cluster_config()  # bad clustering parameters fail here, not once per candidate
        self.parent = load_subnet(self.settings.parent_dir)
        self._train_images: DecodedImages | None = None

    def thinned(self, spec: ModelSpec, seed: int) -> nn.Module:
        """The parent thinned to ``spec``, its batch norm recalibrated (``bn_batches``, seeded by ``seed``)."""
        s = self.settings
        model = thin(self.parent, spec)
        if s.bn_batches > 0:
            if self._train_images is None:  # decoded once per evaluator (and shared with the fine-tunes)
                self._train_images = DecodedImages(load_dataset(s.data).train, (s.size[0], s.size[1]), cache=True)
            model = recalibrate_bn(model, self._train_images, s.bn_batches, s.batch[0] * s.batch[1],
                                   derive_seed(seed, "bn"))
        return model

    def evaluate(self, spec: ModelSpec, seed: int) -> EvalResult:
        s = self.settings
        t0 = time.perf_counter()
        model = self.thinned(spec, seed)
        # FAISS follows the torch thread count the pool set for this worker (no oversubscription)
        m_ap = finetune_and_score(model, s.data, s.steps, seed, **finetune_kwargs(s, torch.get_num_threads()))
        error = 1.0 - m_ap
        wall = time.perf_counter() - t0
        lat1 = latn = None
        if s.latency:
            lat1, latn = onnx_latency_ms(model.eval(), (1, 3, *s.size), s.latency_batch)
        return EvalResult(error, wall, lat1, latn)


def _section(cfg: ConfigView) -> ReidSection:
    section = cfg.section
    if not isinstance(section, ReidSection):
        raise TypeError(f"not a re-ID search config: {type(section).__name__}")
    return section


class ReidTask:
    """See the module docstring."""

    name = "reid"
    description = ("person re-identification: --data is a re-ID dataset folder (Market-1501 layout) and --parent a "
                   "trained backbone (required; --arch defaults to its architecture). A candidate's error is 1 - mAP "
                   "after a short unsupervised TMP fine-tune (pseudo-labels from k-reciprocal Jaccard + DBSCAN "
                   "clustering) on the training images of --val-data (else --data), on its query/gallery; the "
                   "winner and the baselines get the same longer fine-tune and report test mAP on --data's "
                   "query/gallery. FLOPs are counted at --size; fine-tunes run on --device.")
    metric = "mAP"
    score_name = "mAP"
    error_label = "1 - validation mAP"
    title_suffix = " (person re-ID)"
    section = ReidSection
    runtime_options = frozenset({"device"})

    def validate(self, cfg: ConfigView) -> None:
        c, s = cfg.common, _section(cfg)
        if c.parent is None:
            raise PruneoptError(PARENT_HINT)
        if c.data == "fashion-mnist":
            raise PruneoptError(NEEDS_DATA)
        h, w = s.size
        checks = [
            (h >= 16 and w >= 16, f"--size must be at least 16x16, got {h}x{w}"),
            (s.reid_batch[0] >= 2 and s.reid_batch[1] >= 1,
             f"--reid-batch needs P >= 2 and K >= 1, got {s.reid_batch[0]}x{s.reid_batch[1]}"),
            (1 <= s.finetune_rounds <= s.finetune_steps,
             f"need 1 <= --finetune-rounds <= --finetune-steps, got {s.finetune_rounds} and {s.finetune_steps}"),
            (1 <= s.final_rounds <= s.final_steps,
             f"need 1 <= --final-rounds <= --final-steps, got {s.final_rounds} and {s.final_steps}"),
            (s.k1 >= 1 and s.k2 >= 1, f"--k1 and --k2 must be >= 1, got {s.k1} and {s.k2}"),
            (0 < s.cluster_eps < 1, f"--cluster-eps is a Jaccard distance in (0, 1), got {s.cluster_eps}"),
            (s.outliers in OUTLIER_MODES, f"--outliers must be one of {', '.join(OUTLIER_MODES)}, got {s.outliers!r}"),
            (s.finetune_lr > 0, f"finetune_lr must be > 0, got {s.finetune_lr}"),
            (s.bn_batches >= 0, f"--bn-batches must be >= 0, got {s.bn_batches}"),
        ]
        for ok, message in checks:
            if not ok:
                raise PruneoptError(message)

    def from_command_line(self, values: dict[str, Any]) -> dict[str, Any]:
        """``--data`` must be a folder (stored resolved); without ``--arch``, the parent's architecture."""
        data = values.get("data")
        if data is None or data == "fashion-mnist":
            raise PruneoptError(NEEDS_DATA)
        if not Path(data).is_dir():
            raise PruneoptError(f"--data {data}: not a folder (--task reid needs a re-ID dataset folder)")
        values = {**values, "data": str(Path(data).resolve())}
        if "arch" not in values and values.get("parent") is not None:
            try:
                values["arch"] = backbone_spec(values["parent"]).arch
            except ModelError as exc:
                raise PruneoptError(f"--parent {values['parent']}: {exc}") from None
        return values

    def input_shape(self, cfg: ConfigView) -> tuple[int, int, int]:
        h, w = _section(cfg).size
        return 3, int(h), int(w)

    def preprocess(self, cfg: ConfigView) -> Preprocess:
        """ImageNet-normalised RGB images at ``size``. The parent (``parent/``) is a backbone: exported alone it gives
        an average-pooled, unnormalised embedding; the winner (``winner/``) is a whole re-ID model, whose own record
        says its embedding is L2-normalised (:meth:`reidserve.model.ReidModel.save_folder`)."""
        return Preprocess.for_channels(self.input_shape(cfg), IMAGENET_MEAN, IMAGENET_STD, output="embedding")

    def check_inputs(self, cfg: ConfigView, data_dir: str | None) -> None:
        """Fail early, in one line, when ``data`` or ``val_data`` is not a usable re-ID dataset folder."""
        if data_dir is not None:
            raise PruneoptError("--data-dir is for Fashion-MNIST; with --task reid give the dataset folder as --data")
        for option, path in (("--data", cfg.common.data), ("--val-data", _section(cfg).val_data)):
            if path is not None:
                try:
                    load_dataset(path)
                except DatasetError as exc:
                    raise PruneoptError(f"{option} {path}: {exc}") from None

    def settings(self, cfg: ConfigView, parent_dir: Path, data: str, steps: int, rounds: int, device: str = "cpu",
                 latency: bool = False) -> ReidSettings:
        """The settings of a fine-tune on ``data`` with the config's settings."""
        s = _section(cfg)
        (h, w), (p, k) = s.size, s.reid_batch
        return ReidSettings(parent_dir=str(parent_dir.resolve()), data=str(Path(data).resolve()), steps=steps,
                            rounds=rounds, size=(h, w), batch=(p, k), lr=float(s.finetune_lr),
                            k1=s.k1, k2=s.k2, cluster_eps=s.cluster_eps, outliers=s.outliers, device=device,
                            latency=latency, bn_batches=s.bn_batches)

    def prepare_parent(self, ctx: RunContext, folder: Path) -> ParentResult:
        """The given parent as a backbone, scored as it is (a fresh head, no fine-tune) on both query/galleries."""
        c, s = ctx.cfg.common, _section(ctx.cfg)
        if c.parent is None:  # validate() refused it already
            raise PruneoptError(PARENT_HINT)
        backbone = _load_parent(c.parent, c.arch)
        hw = self.input_shape(ctx.cfg)[1:]
        val = _map(backbone, s.val_data or c.data, hw, ctx.device)
        test = val if s.val_data is None else _map(backbone, c.data, hw, ctx.device)
        record = {"source": str(Path(c.parent).resolve()), "fine_tuned": False,
                  "val_error": 1 - val["mAP"], "test_error": 1 - test["mAP"], "val_map": val["mAP"],
                  "test_map": test["mAP"], "test_rank1": test["rank1"], "spec": backbone.spec.to_dict()}
        return ParentResult(backbone, record, f"parent {c.arch} (as given, no fine-tune): val mAP {val['mAP']:.4f}, "
                                              f"test mAP {test['mAP']:.4f}")

    def worker_settings(self, ctx: RunContext, parent_dir: Path) -> dict[str, Any]:
        c, s = ctx.cfg.common, _section(ctx.cfg)
        return self.settings(ctx.cfg, parent_dir, s.val_data or c.data, s.finetune_steps, s.finetune_rounds,
                             ctx.device, c.latency).to_dict()

    def make_evaluator(self, settings: dict[str, Any]) -> ReidEvaluator:
        return ReidEvaluator(settings)

    def finetune_finals(self, ctx: RunContext, parent_dir: Path, parent: nn.Module,
                        models: dict[str, ModelSpec]) -> Iterator[FinalResult]:
        """Each model: thin, the same resumable TMP fine-tune on ``data`` (``final_steps`` in ``final_rounds``
        rounds, seeded alike), then ``1 - mAP`` on its query/gallery; the model is the fine-tuned re-ID model
        (backbone + head), which the search saves as ``winner/`` for the winner."""
        c, s = ctx.cfg.common, _section(ctx.cfg)
        settings = self.settings(ctx.cfg, parent_dir, c.data, s.final_steps, s.final_rounds, ctx.device)
        for name, spec in models.items():
            fdir = ctx.root / "final" / name
            # where the fine-tune starts: a subnetwork folder (a backbone: exported alone, an unnormalised embedding)
            init = save_subnet(thin(parent, spec, final_criterion(name)), fdir / "init", self.preprocess(ctx.cfg))
            tcfg = finetune_config(settings.data, s.final_steps, derive_seed(c.seed, "final"),
                                   backbone=init.resolve(), **finetune_kwargs(settings, torch.get_num_threads()))
            def log(line: str, name: str = name) -> None:
                ctx.say(f"final {name}: {line}")

            try:  # resumes from fdir/run/checkpoint.pt after an interruption
                res = train_reid(tcfg, fdir / "run", log=log, trainer_cls=SearchTrainer)
            except TrainError as exc:
                raise PruneoptError(f"final fine-tune of {name}: {exc}") from None
            val = (res.last or {}).get("val")
            if val is None:
                raise PruneoptError(f"final fine-tune of {name} produced no query/gallery result")
            yield FinalResult(name, res.model, {
                "val_error": None, "test_error": 1 - float(val["mAP"]), "test_map": float(val["mAP"]),
                "test_rank1": float(val["rank1"]), "steps": s.final_steps,
                "reid_model": f"final/{name}/run/model"})  # relative to the run folder

    def describe_error(self, error: float) -> str:
        return f"mAP {1 - error:.4f}"

    def summary_extra(self, config: dict[str, Any]) -> dict[str, Any]:
        same = config.get("val_data") in (None, config["data"])  # the CLI stores both folders resolved
        return {"selection": {
            "candidates_scored_on": config.get("val_data") or config["data"],
            "finals_scored_on": config["data"],
            "same_query_gallery": same,
            "note": (SAME_QUERY_GALLERY_NOTE if same else
                     "candidates were scored on --val-data; the final figures on --data's query/gallery"),
        }}

    def report_intro(self, summary: dict[str, Any]) -> list[str]:
        cfg, p, sel = summary["config"], summary["parent"], summary["selection"]
        lines = []
        if p:
            lines += [f"Parent ({p['source']}), as given (fresh GeM + BNNeck head, no fine-tune): mAP "
                      f"{fmt(p.get('val_map'))} on the candidates' query/gallery, test mAP {fmt(p.get('test_map'))}.",
                      ""]
        size = "x".join(str(x) for x in cfg["size"])
        lines += [f"Errors are 1 - mAP. Each candidate: {cfg['finetune_steps']} unsupervised TMP steps of "
                  f"{'x'.join(str(x) for x in cfg['reid_batch'])} images at {size} on the training images of "
                  f"{sel['candidates_scored_on']}, scored on its query/gallery. Finals: {cfg['final_steps']} steps "
                  f"in {cfg['final_rounds']} rounds on {sel['finals_scored_on']}, scored on its query/gallery.", ""]
        if sel["same_query_gallery"]:
            lines += [f"**Note:** {sel['note']}.", ""]
        return lines

    def report_finals(self, summary: dict[str, Any]) -> list[str]:
        lines = ["## Winner vs baselines (same final fine-tune)", "",
                 "| model | FLOPs fraction | MACs | params | R | test mAP | test rank-1 |",
                 "|---|---|---|---|---|---|---|"]
        for name, f in final_rows(summary):
            lines.append(f"| {name} | {f['flops_fraction']:.3f} | {f['macs']:,} | {f['params']:,} | "
                         f"{f['ratio']:.1f} | {fmt(f.get('test_map'))} | {fmt(f.get('test_rank1'))} |")
        lines += ["", "The fine-tuned winner -- backbone, GeM, BN neck and L2, the model scored above -- is the "
                  "re-ID model folder `winner/` (`pruneopt export` exports it whole); each final's is in "
                  "`final/MODEL/run/model/`.", ""]
        return lines

    def notes(self, summary: dict[str, Any]) -> list[str]:
        selection = summary.get("selection") or {}
        return [selection["note"]] if selection.get("same_query_gallery") else []


def _load_parent(parent: str, arch: str) -> Network:
    """The given parent as a features-only, last-stride-1, RGB backbone (classifier dropped, grey stem made RGB):
    from a subnetwork folder, a re-ID model folder or a training run folder."""
    src = Path(parent)
    try:
        backbone = backbone_from_subnet(src)
    except ModelError as exc:
        raise PruneoptError(f"--parent {src}: {exc}") from None
    if backbone.spec.arch != arch:
        raise PruneoptError(f"--parent {src} is a {backbone.spec.arch}; this search is for a {arch} "
                            f"(pass --arch {backbone.spec.arch})")
    return backbone.eval()


def _map(backbone: nn.Module, data: str, hw: tuple[int, int], device: str) -> dict[str, float]:
    """Query/gallery figures of ``backbone`` as it is (GeM + a fresh BNNeck, no fine-tune) on ``data``."""
    model = ReidModel(backbone, HeadConfig(input_size=hw)).eval()
    metrics = evaluate_model(model, load_dataset(data), size=hw, device=device)
    assert metrics is not None
    return {"mAP": metrics.mAP, "rank1": metrics.rank1}


TASK = ReidTask()
