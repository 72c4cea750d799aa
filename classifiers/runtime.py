"""Inference runtimes for the classifier g, behind boed's ``Classifier`` protocol.

A scan decision classifies (candidates x completions) partial views (2,890 at the ``cpu`` preset),
so the runtime of the network is most of its cost. :func:`with_runtime` wraps a
:class:`~classifiers.partial.PartialClassifier` so that ``predict`` runs on another runtime and
gives the same probabilities (up to float rounding), with the eager model as the reference:

* ``eager``: the PartialClassifier itself (PyTorch, channels-last, ``inference_mode``);
* ``compile``: ``torch.compile`` of the same module (inductor; dynamic batch size, so one
  compilation serves every chunk); the first call compiles (tens of seconds on a CPU);
* ``onnx``: the module exported to ONNX (the TorchScript-based exporter of torch 2.13, which
  needs only the ``onnx`` package and exports in a fraction of the time of the ``torch.export``
  one) and run by ONNX Runtime's CPU provider with its graph optimisations (BatchNorm folding,
  fused convolutions, the NCHWc layout), on as many threads as torch uses, without busy-waiting
  threads (on a shared machine spinning threads cost more than they save; measured in
  ``benchmarks/suite.py``). Install with ``pip install 'boed-xray[onnx]'``.

``precision="bf16"`` runs the eager or compiled module under ``torch.autocast`` in bfloat16 (for
GPUs; the temperature and the sigmoid stay in float32); the decisions it leads to are checked
against float32 by ``tests/classifiers/test_runtime.py`` (marked ``gpu``).

Shapes: ``observed``, ``mask`` ``(B, 1, S, S)`` float32; ``predict`` returns ``(B, L)``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import torch

from classifiers.errors import ClassifierError
from classifiers.partial import PartialClassifier

RUNTIMES: tuple[str, ...] = ("eager", "compile", "onnx")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


class RuntimeClassifier:
    """``PartialClassifier`` whose ``predict`` runs ``forward`` (logits of one chunk) instead.

    Everything else (``labels``, ``image_size``, ``name``, ``sha256``, ``meta``, ``device``,
    ``features``, ``check_labels``...) is the wrapped classifier's.
    """

    def __init__(
        self,
        base: PartialClassifier,
        forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        runtime: str,
        precision: str = "fp32",
    ):
        self.base = base
        self.forward = forward
        self.runtime = runtime
        self.precision = precision

    def __getattr__(self, name: str):
        if name == "base":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def __repr__(self) -> str:
        return f"RuntimeClassifier({self.base!r}, runtime={self.runtime!r}, precision={self.precision!r})"

    def logits(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Untempered logits ``(B, L)`` float32 on the input's device."""
        self.base.check_inputs(observed, mask)
        with torch.inference_mode():
            out = [self.forward(x, m).float() for x, m in self.base._chunks(observed, mask)]
            if not out:
                return torch.empty(0, len(self.labels), device=observed.device)
            return torch.cat(out).to(observed.device)

    def predict(self, observed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, L)`` = ``sigmoid(logits / temperature)``, on the input's device."""
        return torch.sigmoid(self.logits(observed, mask) / self.base.temperature)

    __call__ = predict


def _autocast(module: Callable, device: torch.device) -> Callable:
    def forward(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return module(x, m)

    return forward


def onnx_session(base: PartialClassifier, threads: int | None = None):
    """An ONNX Runtime session of ``base.model`` (inputs ``observed``, ``mask``; output ``logits``).

    Raises:
        ClassifierError: onnxruntime or onnx not installed (one line naming ``--runtime onnx``), or
            a classifier on a device other than the CPU.
    """
    if base.device.type != "cpu":
        raise ClassifierError(
            f"--runtime onnx runs on the CPU only (the classifier is on {base.device}); "
            "use --runtime eager or compile on a GPU"
        )
    try:
        import onnx  # noqa: F401 - the exporter needs it
        import onnxruntime as ort
    except ImportError as exc:
        raise ClassifierError(
            f"--runtime onnx needs onnxruntime and onnx ({exc.name} is not installed): "
            "pip install 'boed-xray[onnx]', or use --runtime eager"
        ) from None
    model = base.model
    size = base.image_size
    example = (torch.zeros(2, 1, size, size), torch.zeros(2, 1, size, size))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            model,
            example,
            buffer,
            dynamo=False,
            input_names=["observed", "mask"],
            output_names=["logits"],
            dynamic_axes={"observed": {0: "batch"}, "mask": {0: "batch"}, "logits": {0: "batch"}},
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def with_runtime(
    classifier: PartialClassifier, runtime: str = "eager", precision: str = "fp32"
) -> PartialClassifier | RuntimeClassifier:
    """``classifier`` with ``predict`` on ``runtime`` (see the module docstring).

    ``eager`` with ``fp32`` returns ``classifier`` itself (the reference), whatever classifier it is,
    so callers pass the user's ``--runtime`` through without a case of their own.

    Raises:
        ClassifierError: an unknown runtime or precision, ``bf16`` with ``onnx``, or a runtime
            whose package is missing (one line naming the option).
    """
    if runtime not in RUNTIMES:
        raise ClassifierError(f"unknown --runtime {runtime!r}; valid runtimes: {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ClassifierError(f"unknown --precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if isinstance(classifier, RuntimeClassifier):
        classifier = classifier.base
    if runtime == "eager" and precision == "fp32":
        return classifier
    if not isinstance(classifier, PartialClassifier):
        raise ClassifierError(
            f"--runtime {runtime} needs an AVP-CNN classifier, got {type(classifier).__name__}"
        )
    device = classifier.device
    if runtime == "onnx":
        if precision != "fp32":
            raise ClassifierError("--precision bf16 is for --runtime eager or compile, not onnx")
        session = onnx_session(classifier)

        def forward(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            feeds = {"observed": x.contiguous().cpu().numpy(), "mask": m.contiguous().cpu().numpy()}
            return torch.from_numpy(session.run(None, feeds)[0])

        return RuntimeClassifier(classifier, forward, runtime, precision)
    module: Callable = classifier.model
    if runtime == "compile":
        module = torch.compile(classifier.model, dynamic=True)
    elif precision == "fp32":
        return classifier
    forward = _autocast(module, device) if precision == "bf16" else module
    return RuntimeClassifier(classifier, forward, runtime, precision)


# -- a fixed set of decisions, to check that a runtime chooses what the eager model chooses ------


def decision_set(
    n_decisions: int = 20,
    *,
    size: int = 64,
    patch: int = 16,
    grid: int = 9,
    n_completions: int = 6,
    seed: int = 0,
):
    """``n_decisions`` seeded scan decisions on phantoms, each with its completions.

    Decision ``d``: phantom ``d`` observed through 1-3 random grid patches; its completions are
    other phantoms with the observed pixels pasted (plausible, varied views; no sampler needed).

    Returns:
        ``(candidates, [(observed (1, 1, S, S), mask (1, 1, S, S), Completions (N, 1, 1, S, S))])``.
    """
    from boed.protocols import Completions
    from boed.scanner import CandidateGrid
    from datasets.phantoms import generate_phantoms

    candidates = CandidateGrid.from_grid(size, patch, grid)
    images = generate_phantoms(n_decisions * (n_completions + 1), size=size, seed=seed).images
    g = torch.Generator().manual_seed(seed)
    out = []
    for d in range(n_decisions):
        picks = torch.randperm(len(candidates), generator=g)[: 1 + d % 3]
        mask = candidates.masks[picks].amax(0, keepdim=True)  # (1, 1, S, S)
        image = images[d : d + 1]
        others = images[n_decisions + d * n_completions : n_decisions + (d + 1) * n_completions]
        completions = image * mask + others * (1 - mask)  # (N, 1, S, S)
        out.append((image * mask, mask, Completions(completions[:, None])))
    return candidates, out


def location_agreement(reference, other, candidates, decisions, target: str = "any") -> dict[str, float]:
    """Fraction of ``decisions`` where ``other`` chooses the location ``reference`` chooses.

    Both classifiers score every candidate by the exact EIG (:func:`boed.eig.expected_information_gain`)
    of the same completions. Returns ``{"agreement", "decisions", "max_abs_eig_difference"}``.
    """
    from boed.eig import expected_information_gain

    same, worst = 0, 0.0
    for observed, mask, completions in decisions:
        a = expected_information_gain(reference, observed, mask, completions, candidates, target).eig
        b = expected_information_gain(other, observed, mask, completions, candidates, target).eig
        same += int(torch.argmax(a)) == int(torch.argmax(b.to(a.device)))
        worst = max(worst, float((a - b.to(a.device)).abs().max()))
    return {"agreement": same / len(decisions), "decisions": len(decisions), "max_abs_eig_difference": worst}
