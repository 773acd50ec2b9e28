"""One loaded model version: TorchScript module, signature, converter, and how it runs a
batch (forward, output checks, split per request).

Loaded by the repository's loader thread; after that immutable (its converter learns the
inputs' layout once). ``run`` and ``forward`` are called only on the inference thread,
under ``torch.inference_mode``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from leaf import metrics, torchscript
from leaf.admission import Layout
from leaf.converter import Converter
from leaf.device import Placement
from leaf.errors import ModelFailed
from leaf.export import MODEL_FILE, Signature, SignatureError, check_calling_convention, read_signature
from wire.codec import DecodeLimits


log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """A version could not be loaded; it is reported and never replaces a loaded one."""


@dataclass(frozen=True, slots=True)
class FileStamp:
    """Identity of a model file on disk: a change means the version must be (re)loaded."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> "FileStamp":
        st = os.stat(path)
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True, slots=True, eq=False)
class LoadedVersion:
    """A model version ready to serve. Compared by identity (it keys the batch queues)."""

    model: str
    version: str
    path: Path
    stamp: FileStamp
    signature: Signature
    converter: Converter
    module: torch.jit.ScriptModule = field(repr=False)
    placement: Placement
    series: metrics.VersionSeries = field(init=False, repr=False)
    """This version's metric series, looked up once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "series", metrics.VersionSeries.of(self.model, self.version))

    def forward(self, inputs: Mapping[str, torch.Tensor], rows: int) -> dict[str, np.ndarray]:
        """Run the model on ``rows`` rows of ``inputs`` (on its device: ``Placement.gather``);
        one float32 CPU array ``[rows]`` per output name.

        Raises ``ModelFailed`` (naming the model) when the model raises or its output breaks
        the calling convention.
        """
        where = f"model {self.model!r} version {self.version!r}"
        try:
            with torch.inference_mode():
                result = self.module(dict(inputs))
        except Exception as exc:  # the model's own code: any failure is the model's
            raise ModelFailed(f"{where} raised: {_first_line(exc)}") from exc
        return split_outputs(result, self.signature.output_names, rows, where)

    def _non_finite(self) -> ModelFailed:
        return ModelFailed(f"model {self.model!r} version {self.version!r} produced non-finite scores")

    def run(
        self, inputs: Mapping[str, torch.Tensor], counts: Sequence[int], layout: Layout
    ) -> list[dict[str, np.ndarray] | ModelFailed]:
        """Run a batch of requests (``counts`` rows each, concatenated in ``inputs``) in one
        forward and split the outputs back per request; a request whose scores are not all
        finite gets a ``ModelFailed``. Raises what ``forward`` raises for the whole batch.
        The first successful forward teaches the converter the inputs' ``layout``."""
        rows = sum(counts)
        series = self.series
        wall = time.perf_counter()
        cpu = time.thread_time()
        try:
            outputs = self.forward(inputs, rows)
        finally:
            series.forward_cpu.inc(time.thread_time() - cpu)
            elapsed = time.perf_counter() - wall
            series.forward_seconds.observe(elapsed)
            series.forward_stage.observe(elapsed)
        if self.converter.learn(layout):
            log.info(
                "%s/%s: inputs its signature leaves open learned from its first forward: %s",
                self.model, self.version, self.converter.describe_expected(),
            )
        metrics.SCORE.observe_many(series.score_labels, outputs[self.signature.output_names[0]])
        if all(np.isfinite(column).all() for column in outputs.values()):
            if len(counts) == 1:
                return [outputs]
            finite_rows = None
        else:
            if len(counts) == 1:
                return [self._non_finite()]
            finite_rows = np.ones(rows, dtype=bool)
            for column in outputs.values():
                finite_rows &= np.isfinite(column)
        results: list[dict[str, np.ndarray] | ModelFailed] = []
        start = 0
        for count in counts:
            end = start + count
            if finite_rows is None or finite_rows[start:end].all():
                results.append({name: column[start:end] for name, column in outputs.items()})
            else:
                results.append(self._non_finite())
            start = end
        return results


def split_outputs(
    result: object, output_names: tuple[str, ...], rows: int, where: str
) -> dict[str, np.ndarray]:
    """Normalise a forward result to ``{output_name: float32[rows]}`` (checks the convention)."""
    columns: dict[str, torch.Tensor] = {}
    if isinstance(result, torch.Tensor):
        if result.dim() == 1 and len(output_names) == 1:
            columns[output_names[0]] = result
        elif result.dim() == 2 and result.shape[1] == len(output_names):
            for i, name in enumerate(output_names):
                columns[name] = result[:, i]
        else:
            raise ModelFailed(
                f"{where} returned shape {list(result.shape)}, expected [{rows}, {len(output_names)}]"
            )
    elif isinstance(result, dict):
        for name in output_names:
            value = result.get(name)
            if not isinstance(value, torch.Tensor):
                raise ModelFailed(f"{where} returned no tensor for output {name!r}")
            if value.dim() == 2 and value.shape[1] == 1:
                value = value[:, 0]
            columns[name] = value
    else:
        raise ModelFailed(f"{where} returned {type(result).__name__}, expected Tensor or Dict")
    out: dict[str, np.ndarray] = {}
    for name, column in columns.items():
        if column.dim() != 1 or column.shape[0] != rows:
            raise ModelFailed(
                f"{where} output {name!r} has shape {list(column.shape)}, expected [{rows}]"
            )
        out[name] = column.detach().to("cpu", torch.float32).numpy()
    return out


def load_version(
    model: str,
    version: str,
    version_dir: Path,
    placement: Placement,
    limits: DecodeLimits,
    max_candidates: int,
) -> LoadedVersion:
    """Load ``version_dir/model.pt``; raises ``ModelLoadError`` with the reason."""
    path = version_dir / MODEL_FILE
    where = f"{model}/{version}"
    try:
        stamp = FileStamp.of(path)
        signature = read_signature(version_dir)
        module = torchscript.load(str(path), placement.device)
        check_calling_convention(module, where)
    except (SignatureError, OSError) as exc:
        raise ModelLoadError(f"{where}: {exc}") from exc
    except Exception as exc:  # torch.jit.load raises RuntimeError and friends on bad archives
        raise ModelLoadError(f"{where}: cannot load {path.name}: {_first_line(exc)}") from exc
    module.eval()
    return LoadedVersion(
        model=model,
        version=version,
        path=path,
        stamp=stamp,
        signature=signature,
        converter=Converter(signature, limits, max_candidates),
        module=module,
        placement=placement,
    )


def _first_line(exc: BaseException) -> str:
    """A one-line reason. TorchScript errors put the model's own exception on the last line
    ("builtins.RuntimeError: ...") after an interpreter traceback."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if isinstance(exc, torch.jit.Error) else lines[0]
    return line[:300]
