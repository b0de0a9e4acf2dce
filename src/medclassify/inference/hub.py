"""A run as a Hugging Face Hub model folder (``save_pretrained``'s layout) and its upload.

The folder holds ``config.json`` (the bundle's description: model, preprocessing, dataset, calibration,
operating point, conformal thresholds, test figures; marked ``"format": "medclassify.hub"``), the
weights as ``model.safetensors`` (no pickled code to load), ``preprocessor_config.json`` (size,
channels, resampling, mean and standard deviation in the Hub's image-processor names) and the run's
model card as ``README.md``, which the Hub shows. :meth:`.Predictor.from_run` loads it back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..defaults import PARITY_TOLERANCE
from ..errors import CheckpointError, ConfigError, OutputError, first_line
from ..io import connection_refused, folder_lock
from ..runs.card import model_card
from ..runs.files import RunDir
from .bundle import ExportResult, bundle_description
from .hub_folder import (
    HUB_CARD,
    HUB_CONFIG,
    HUB_FILES,
    HUB_FOLDER,
    HUB_FORMAT,
    HUB_FORMAT_VERSION,
    HUB_PREPROCESSOR,
    HUB_WEIGHTS,
    INSTALL_HUB,
    is_hub_folder,
    safetensors_module,
)
from .parity import max_logit_difference, parity_pixels
from .predictor import Predictor


def _preprocessor(prep: dict) -> dict:
    return {
        "image_processor_type": "medclassify",
        "do_resize": True,
        "size": {"height": prep["size"], "width": prep["size"]},
        "resample": "bicubic",
        "do_convert_grayscale": prep["channels"] == 1,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": prep["mean"],
        "image_std": prep["std"],
    }


def export_hub(
    run_dir: str | Path,
    out: str | Path | None = None,
    data_dir: str | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportResult:
    """Write ``run_dir``'s bundle as a Hub folder (default ``RUN/hub``), staged beside its place and
    moved into it once its weights, loaded back, give the run's logits within ``tolerance``. An
    earlier export's files are replaced; files it did not write there (a ``.git/`` folder, notes) stay."""
    if not tolerance >= 0:
        raise ConfigError(f"tolerance must be a number >= 0, got {tolerance}", parameters=("tolerance",))
    run = RunDir(run_dir)
    if not run.path.is_dir() or not run.best_path.is_file():
        raise CheckpointError(f"{run.path}: the Hub format exports a finished run folder (its best.pt and model card)")
    out = Path(out) if out is not None else run.path / HUB_FOLDER
    if out.exists() and not (is_hub_folder(out) or (out.is_dir() and not any(out.iterdir()))):
        raise CheckpointError(
            f"{out}: exists and is not a medclassify Hub folder (no '{HUB_FORMAT}' format in its {HUB_CONFIG}); "
            "choose another --out"
        )
    safetensors = safetensors_module()
    with folder_lock(run.path, "export"):
        state = run.bundle()
        reference = Predictor.from_run(run.path, device="cpu", backend="torch", calibrated=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            description = {"format": HUB_FORMAT, "format_version": HUB_FORMAT_VERSION, **bundle_description(state)}
            (staging / HUB_CONFIG).write_text(json.dumps(description, indent=2))
            weights = {k: v.detach().clone().contiguous() for k, v in state["model_state"].items()}
            safetensors.save_file(weights, staging / HUB_WEIGHTS, metadata={"format": "pt"})
            (staging / HUB_PREPROCESSOR).write_text(json.dumps(_preprocessor(state["preprocessing"]), indent=2))
            (staging / HUB_CARD).write_text(model_card(run.path), encoding="utf-8")
            loaded = Predictor.from_run(staging, device="cpu", calibrated=False)
            pixels, parity_data = parity_pixels(run.path, reference, data_dir)
            difference = max_logit_difference(reference.logits, loaded.logits, pixels, reference.normalise)
            if not difference <= tolerance:
                raise CheckpointError(
                    f"{out}: the Hub folder's model differs from best.pt by {difference:.3g}; nothing was written"
                )
            _replace_folder(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    files = sorted(HUB_FILES)
    size = sum((out / name).stat().st_size for name in files)
    return ExportResult(out, "hub", size, difference, len(pixels), parity_data, files)


def _replace_folder(staging: Path, out: Path) -> None:
    """Move the finished files into place, with the permissions new files would get (mkdtemp made
    them private): a new folder is renamed into place whole; in an existing Hub folder each file
    replaces its earlier version atomically, and every other file there is left as it was."""
    umask = os.umask(0)
    os.umask(umask)
    for file in staging.iterdir():
        file.chmod(0o666 & ~umask)
    if not out.exists():
        staging.chmod(0o777 & ~umask)
        staging.rename(out)
        return
    # the description last: until it is replaced, the folder reads as the earlier, complete export
    for name in sorted(HUB_FILES, key=lambda name: name == HUB_CONFIG):
        os.replace(staging / name, out / name)


def check_repo_id(repo: str) -> None:
    """``OWNER/NAME`` with the Hub's characters and length, before any work is done."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"repo {repo}: expected OWNER/NAME, e.g. alice/bloodmnist-cnn", parameters=("repo",))
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ConfigError(
            f"repo {repo[:100]}: expected OWNER/NAME of letters, digits, '-', '_' and '.', at most 96 characters, "
            "not starting or ending with '-' or '.', without '--' or '..'"
        ) from None


def _check_reachable(endpoint: str) -> None:
    """A Hub endpoint that does not accept a connection within a few seconds is one line, not a
    minute of retries."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    refused = connection_refused(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    if refused:
        raise OutputError(f"the Hub at {endpoint} cannot be reached ({refused}); nothing was uploaded")


def push_to_hub(run_dir: str | Path, repo: str, private: bool = False, token: str | None = None) -> str:
    """Export the run as a Hub folder (``RUN/hub``) and upload it to the model repository ``repo``
    (created if needed) through ``huggingface_hub``; returns the commit's URL. The repository id, the
    token, offline mode and the endpoint are checked before the export; a refusal of the Hub is one
    line naming its HTTP status."""
    try:
        import huggingface_hub
        from httpx2 import HTTPError as TransportFailure  # huggingface_hub's HTTP client
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:
        raise ConfigError(f"push needs huggingface_hub: {INSTALL_HUB}") from None
    check_repo_id(repo)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ConfigError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push")
    token = token or huggingface_hub.get_token()
    if not token:
        raise ConfigError(
            "token: none given and no Hub access token found; set HF_TOKEN or run 'hf auth login'",
            parameters=("token",),
        )
    endpoint = os.environ.get("HF_ENDPOINT") or huggingface_hub.constants.ENDPOINT
    _check_reachable(endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.whoami()  # the token, checked before the export's work
        exported = export_hub(run_dir)
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(exported.path), repo_id=repo, repo_type="model", commit_message="Upload medclassify model"
        )
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        why = "the token was refused" if status in (401, 403) else first_line(exc, 120)
        raise OutputError(f"push to {repo}: the Hub answered HTTP {status}: {why}; nothing was uploaded") from None
    except (OSError, TransportFailure) as exc:
        raise OutputError(f"push to {repo}: {first_line(exc)}; the upload did not finish") from None
    return str(getattr(commit, "commit_url", commit))
