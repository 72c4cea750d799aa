"""``boed propose``: the next scan location for one observation, with its EIG map as a PNG.

For a person checking one decision: give the image and the mask of what has been seen
(``--image FILE --mask FILE``), or a session from the store (``--session ID``: an acquisition
session, whose observation the store keeps, or a simulated one, whose image is read again from
its run's dataset and whose mask is rebuilt from its logged scans). The command builds the
``boed.acquisition.Controller`` of the run's (or the options') parts, prints the proposed
location, its EIG and Monte Carlo standard error, and writes the EIG map next to the observation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cli.common import console, user_errors

IMAGE_HELP = (
    "The image: a DICOM file (CR/DX), a PNG/JPEG, or a .npy array in [0, 1]; centre-cropped to a "
    "square and resized to the preset's image size. Only the pixels under --mask are used."
)
MASK_HELP = (
    "What has been seen: a PNG/JPEG (non-zero = seen) or a .npy array (1 = seen), of the image's "
    "shape or of the preset's image size."
)


def propose(
    image: Path | None = typer.Option(None, "--image", help=IMAGE_HELP),
    mask: Path | None = typer.Option(None, "--mask", help=MASK_HELP),
    session: int | None = typer.Option(
        None,
        "--session",
        help="A session id of the store: propose its next scan (instead of --image/--mask).",
    ),
    db: str | None = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path (default runs/boed.db)."),
    out: Path = typer.Option(Path("eig.png"), "--out", help="Where to write the EIG map (PNG)."),
    classifier: Path | None = typer.Option(
        None, "--classifier", help="Classifier checkpoint (default: shipped)."
    ),
    sampler: str | None = typer.Option(
        None, "--sampler", help="Sampler name (generative.registry; default aipo)."
    ),
    sampler_checkpoint: Path | None = typer.Option(None, "--sampler-checkpoint", help="Sampler checkpoint."),
    preset: str | None = typer.Option(None, "--preset", help="cpu (default) or paper."),
    target: str | None = typer.Option(None, "--target", help="any (default), all or a label."),
    n_samples: int | None = typer.Option(None, "--n-samples", help="Completions N (preset: 10)."),
    grid: int | None = typer.Option(None, "--grid", help="Candidate grid G x G (preset: 17)."),
    scans_per_step: int | None = typer.Option(None, "--scans-per-step", help="Locations to propose (k)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the sampler draws (default 0)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch (0: torch's default)."),
    runtime: str | None = typer.Option(
        None,
        "--runtime",
        help="Classifier inference runtime: eager (the reference), onnx, compile (default: the "
        "session's run's, else eager); see docs/performance.md.",
    ),
) -> None:
    """Propose the next scan location and write the EIG map as a PNG.

    With --session the run's parts and settings are used unless an option says otherwise.
    """
    with user_errors():
        from boed.config import get_preset
        from boed.errors import BoedError

        if session is None and (image is None or mask is None):
            raise BoedError("give --image FILE and --mask FILE, or --session ID")
        if session is not None and (image is not None or mask is not None):
            raise BoedError("--session takes the observation from the store: leave out --image and --mask")
        _check_out(out)
        from cli.simulate import _device, _set_threads

        _set_threads(threads)
        dev = _device(device)
        stored: dict[str, Any] = {}
        observation = None
        if session is not None:
            stored, observation = _from_session(session, db)
        given = {
            "preset": preset,
            "sampler": sampler,
            "sampler_checkpoint": str(sampler_checkpoint) if sampler_checkpoint else None,
            "classifier_checkpoint": str(classifier) if classifier else None,
            "target": target,
            "n_samples": n_samples,
            "grid": grid,
            "scans_per_step": scans_per_step,
            "seed": seed,
            "runtime": runtime,
        }
        settings = stored | {k: v for k, v in given.items() if v is not None}
        pre = get_preset(settings.get("preset") or "cpu")
        size, patch = pre.image_size, pre.patch_size
        for name, value in (("image_size", size), ("patch_size", patch)):
            if name in stored and stored[name] != value:
                raise BoedError(
                    f"session {session} was made with {name} {stored[name]}, preset {pre.name} has {value}"
                )
        if observation is None:
            observation = _read_observation(image, mask, size)
        observed, seen = observation
        proposal, controller = _propose(settings, pre, observed, seen, dev)
        _print(proposal, controller)
        _figure(out, observed, seen, proposal, controller)
        console.print(f"EIG map: {out}")


def _check_out(out: Path) -> None:
    import tempfile

    from boed.errors import BoedError

    if out.suffix.lower() != ".png":
        raise BoedError(f"--out {out}: the EIG map is written as PNG; give a file name ending in .png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".boed-probe-"):
            pass
    except OSError as exc:
        raise BoedError(f"--out {out}: cannot write there: {exc.strerror or exc}") from None


def _read_2d(path: Path, what: str, size: int | None = None):
    """A 2-D float32 array from a DICOM, PNG/JPEG or .npy file (one-line errors naming it)."""
    import numpy as np

    from boed.errors import BoedError

    if not path.is_file():
        raise BoedError(f"{what} {path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BoedError(f"{what} {path}: not a readable .npy array ({exc})") from None
        if array.ndim not in (2, 3, 4) or array.squeeze().ndim != 2 or array.dtype.kind not in "biuf":
            raise BoedError(f"{what} {path}: expected one 2-D numeric array, got {array.dtype} {array.shape}")
        return np.asarray(array.squeeze(), dtype=np.float32)
    with path.open("rb") as f:
        head = f.read(132)
    if path.suffix.lower() in (".dcm", ".dicom") or head[128:132] == b"DICM":
        from datasets.dicom import read_dicom

        return read_dicom(path).pixels
    from datasets.folder import read_image_file

    return read_image_file(path, size=size)


def _read_observation(image: Path, mask: Path, size: int):
    """``(observed, mask)`` ``(1, 1, S, S)`` from the two files (the mask binarised at 0.5)."""
    import numpy as np
    import torch

    from boed.errors import BoedError
    from datasets.base import to_square

    pixels = _read_2d(image, "--image", size)
    seen = _read_2d(mask, "--mask", size)
    if not np.isfinite(pixels).all() or not np.isfinite(seen).all():
        raise BoedError(f"--image {image} or --mask {mask} has non-finite values")
    if float(pixels.min()) < 0 or float(pixels.max()) > 1:
        raise BoedError(
            f"--image {image}: values must lie in [0, 1], got {pixels.min():.3g} to {pixels.max():.3g}"
        )
    if seen.shape != pixels.shape and seen.shape != (size, size):
        raise BoedError(
            f"--mask {mask} is {seen.shape[0]} x {seen.shape[1]}; it must be the image's size "
            f"({pixels.shape[0]} x {pixels.shape[1]}) or {size} x {size}"
        )
    observed = to_square(pixels, size)[None]
    if seen.shape == (size, size):
        m = torch.as_tensor(seen > 0, dtype=torch.float32)[None, None]
    else:
        m = (to_square((seen > 0).astype(np.float32), size) > 0.5).float()[None]
    return observed * m, m


def _from_session(session_id: int, db: str | None):
    """The run settings and the last observation ``(observed, mask)`` of a stored session."""
    import torch

    from boed.errors import BoedError
    from boed.store import Store

    store = Store.open(db)
    record = store.get_session(session_id)
    run = store.get_run(record.run_id)
    config = dict(run.config)
    keys = ("preset", "sampler", "sampler_checkpoint", "classifier_checkpoint", "target", "n_samples",
            "grid", "image_size", "patch_size", "scans_per_step", "seed", "runtime")  # fmt: skip
    settings = {k: config[k] for k in keys if config.get(k) is not None}
    if run.sampler and run.sampler != "none":
        settings.setdefault("sampler", run.sampler)
    arrays = store.load_arrays(session_id)
    steps = [s for (s, name) in arrays if name == "observed" and (s, "mask") in arrays]
    if steps:  # an acquisition session keeps its observation after every step
        last = max(steps)
        observed = torch.as_tensor(arrays[(last, "observed")], dtype=torch.float32)[None, None]
        mask = torch.as_tensor(arrays[(last, "mask")], dtype=torch.float32)[None, None]
        return settings, (observed * mask, mask)
    if run.kind != "simulation":
        raise BoedError(f"session {session_id} stored no observation to propose from")
    return settings, _simulated_observation(store, run, record)


def _simulated_observation(store, run, record):
    """A simulated session's image read again from its run's dataset, masked by its logged scans."""
    import torch

    from boed.errors import BoedError
    from boed.simulate import SimulationConfig
    from datasets import open_dataset
    from datasets.masks import patch_masks

    config = SimulationConfig.from_dict(run.config)
    dataset = open_dataset(
        config.images,
        split=config.split,
        size=config.image_size,
        n=config.n_images,
        data_root=config.data_root,
        seed=config.seed,
        **config.dataset_options(),
    )
    item = dataset[record.image_index]
    if str(item["idx"]) != record.image_id:
        raise BoedError(
            f"session {record.id}: image {record.image_index} of its run's dataset is now {item['idx']!r}, "
            f"not {record.image_id!r} (the data changed); use --image and --mask"
        )
    steps = store.steps(run.run_id, status=None)
    steps = steps[(steps.session_id == record.id) & steps.row.notna()]
    image = item["img"].float().reshape(1, 1, config.image_size, config.image_size)
    mask = torch.zeros_like(image)
    if len(steps):
        locations = torch.tensor(steps[["row", "col"]].astype(int).to_numpy())
        mask = patch_masks(locations, config.image_size, config.patch_size).float().amax(0)[None]
    return image * mask, mask


def _propose(settings: dict[str, Any], pre, observed, seen, device: str):
    from boed.acquisition import Controller
    from boed.scanner import CandidateGrid
    from classifiers import load_classifier
    from generative.registry import SAMPLERS, build_sampler

    name = settings.get("sampler") or "aipo"
    if name not in SAMPLERS:
        from generative.errors import SamplerError

        raise SamplerError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    clf = load_classifier(settings.get("classifier_checkpoint"), preset=pre.name, device=device)
    from classifiers.runtime import with_runtime

    clf = with_runtime(clf, settings.get("runtime") or "eager")
    smp = build_sampler(name, settings.get("sampler_checkpoint"), preset=pre.name, device=device)
    candidates = CandidateGrid.from_grid(pre.image_size, pre.patch_size, settings.get("grid") or pre.grid)
    controller = Controller(
        smp,
        clf,
        candidates,
        settings.get("target") or "any",
        settings.get("n_samples") or pre.n_samples,
        seed=int(settings.get("seed") or 0),
        scans_per_step=settings.get("scans_per_step") or 1,
    )
    return controller.propose(observed.to(controller.device), seen.to(controller.device)), controller


def _print(proposal, controller) -> None:
    from rich.table import Table

    c = controller
    row, col = proposal.location
    console.print(
        f"next scan: row {row}, col {col} (candidate {proposal.candidate} of {len(c.candidates)}); "
        f"EIG {proposal.best_eig:.4f} ± {float(proposal.stderr[proposal.candidate]):.4f} nats; "
        f"{c.target.title} entropy now {proposal.entropy:.4f} nats",
        highlight=False,
    )
    if len(proposal.locations) > 1:
        steps = ", ".join(
            f"({r}, {q}) joint EIG {e:.4f}"
            for (r, q), e in zip(proposal.locations, proposal.joint_eig, strict=True)
        )
        console.print(f"{len(proposal.locations)} scans this step: {steps}", highlight=False)
    table = Table(title="best candidates", title_justify="left")
    for header in ("rank", "row", "col", "EIG (nats)", "± s.e."):
        table.add_column(header, justify="right")
    order = proposal.eig.argsort(descending=True, stable=True)[:5].tolist()
    for rank, k in enumerate(order, start=1):
        r, q = c.candidates.location(k)
        table.add_row(
            str(rank), str(r), str(q), f"{float(proposal.eig[k]):.4f}", f"{float(proposal.stderr[k]):.4f}"
        )
    console.print(table)


def _figure(out: Path, observed, seen, proposal, controller) -> None:
    """Observation (with the proposed field) beside the EIG map, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    c = controller
    p = c.candidates.patch_size
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow((observed * seen)[0, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    axes[0].imshow(seen[0, 0].cpu().numpy() < 0.5, cmap="Blues", alpha=0.25, vmin=0, vmax=1)
    for j, (row, col) in enumerate(proposal.locations):
        axes[0].add_patch(
            Rectangle((col - 0.5, row - 0.5), p, p, fill=False, color="red" if j == 0 else "orange", lw=2)
        )
    axes[0].set_title("observed; next scan in red")
    values = proposal.eig.float().cpu()
    grid = c.candidates.as_map(values).numpy() if c.candidates.grid else values[None].numpy()
    image = axes[1].imshow(grid, cmap="viridis")
    g = c.candidates.grid or 1
    k = proposal.candidate
    axes[1].plot(k % g if c.candidates.grid else k, k // g if c.candidates.grid else 0, "r+", ms=14, mew=2)
    axes[1].set_title(f"EIG (nats), {c.target.title}")
    fig.colorbar(image, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    """Add ``propose`` to the ``boed`` app."""
    app.command("propose")(propose)
