"""The full-size models' files on the Hugging Face hub: what is cached, download, verify, remove.

Files go to the standard Hugging Face cache through ``huggingface_hub`` (``HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), so they are shared with every other tool that
uses it. ``huggingface_hub`` also brings the progress bars, the resume of a dropped connection (a
``Range`` request for the missing bytes), ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and the login token
(``HF_TOKEN`` or ``hf auth login``). This module adds the manifest's checks (size, and sha256: the
manifest's, else the hub's LFS one), deletes a file that fails them, turns hub errors into one-line
:class:`~videomla_app.errors.RunError` messages, and removes a model's files without touching the
pieces another downloaded model still needs.

The settings are the ones ``huggingface_hub.constants`` read from the environment at import.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

from rich.markup import escape

from . import models as registry
from .errors import InputError, RunError
from .memory import fmt_bytes
from .models import HubFile, ModelEntry


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


# ----------------------------------------------------------------------------------------- what is here

def cached_path(f: HubFile) -> Path | None:
    """The file's path in the cache (snapshot of its revision), or None if it is missing or the wrong size."""
    p = _pointer(f)
    if p is None or (f.size is not None and p.stat().st_size != f.size):
        return None
    return p


def missing_files(entry: ModelEntry) -> list[HubFile]:
    return [f for f in entry.files if cached_path(f) is None]


def role_paths(entry: ModelEntry) -> dict[str, Path]:
    """Role -> local path: the file itself when the role is one file, else the folder that holds its files
    (``text_encoder/``, ``tokenizer/``, ``vae/``: what ``from_pretrained`` takes). All files must be cached."""
    out: dict[str, Path] = {}
    for role in dict.fromkeys(f.role for f in entry.files):
        group = [f for f in entry.files if f.role == role]
        p = cached_path(group[0])
        if p is None:
            raise RunError(f"{entry.name}: {group[0].repo}/{group[0].filename} is not downloaded "
                           f"(run 'videomla models download {entry.name}')")
        out[role] = p if len(group) == 1 else p.parent
    return out


def bytes_on_disk(entry: ModelEntry) -> int:
    return sum(p.stat().st_size for f in entry.files if (p := cached_path(f)) is not None)


def expected_bytes(entry: ModelEntry) -> tuple[int, bool, bool]:
    """(bytes, exact, complete): the manifest sizes, approximate ones where only those are known;
    ``complete`` is False when some file's size is not known at all."""
    total, exact, complete = 0, True, True
    for f in entry.files:
        if f.size is not None:
            total += f.size
        elif f.approx_size is not None:
            total, exact = total + f.approx_size, False
        else:
            complete = False
    return total, exact, complete


def fmt_expected(entry: ModelEntry) -> str:
    total, exact, complete = expected_bytes(entry)
    if not entry.files:
        return "-"
    if total == 0:
        return "unknown"
    return f"{'' if exact else '≈ '}{fmt_bytes(total)}{'' if complete else ' + ?'}"


def in_use(entry: ModelEntry) -> bool:
    """Whether the model counts as downloaded for sharing: one of its own files (or all of them) is here."""
    own = [f for f in entry.files if f.component is None]
    return any(cached_path(f) for f in own) if own else bool(entry.files) and not missing_files(entry)


# ----------------------------------------------------------------------------------------- download

def get_download_entry(name: str) -> ModelEntry:
    try:
        return registry.get_entry(name)
    except ValueError as e:
        raise InputError(str(e)) from None


def offline_message(name: str) -> str:
    return (f"{name} is not downloaded and HF_HUB_OFFLINE=1 forbids downloads: unset HF_HUB_OFFLINE and run "
            f"'videomla models download {name}'")


def download(entry: ModelEntry, console) -> dict[str, Path]:
    """Fetch the model's missing files into the cache (progress bars from ``huggingface_hub``), check
    each one, and return :func:`role_paths`. Files already here are not fetched again."""
    todo = missing_files(entry)
    if todo and offline():
        raise RunError(offline_message(entry.name))
    for i, f in enumerate(todo, 1):
        size = fmt_bytes(f.size) if f.size is not None else (
            f"≈ {fmt_bytes(f.approx_size)}" if f.approx_size is not None else "size unknown")
        console.print(escape(f"[{i}/{len(todo)}] {f.repo}  {f.filename}  ({size})"), highlight=False)
        _fetch(f, entry.name, console)
    return role_paths(entry)


def ensure_downloaded(name: str, yes: bool, console) -> dict[str, Path]:
    """Role -> local path ("dit", "text_encoder", "tokenizer", "vae") of a download-tier model, fetching
    its missing files first. ``{}`` for embedded and dev models (nothing to download).

    When files are missing: with ``yes`` download at once; on a terminal ask ``[y/N]`` (on ``console``);
    otherwise fail with the command to run. Raises :class:`InputError` for an unknown name and
    :class:`RunError` for everything else (offline, declined, gated, hash mismatch, network).
    """
    entry = get_download_entry(name)
    if entry.tier != "download":
        return {}
    todo = missing_files(entry)
    if not todo:
        return role_paths(entry)
    if offline():
        raise RunError(offline_message(name))
    size = fmt_expected(entry) if len(todo) == len(entry.files) else f"{len(todo)} of {len(entry.files)} files"
    size = "size unknown" if size == "unknown" else size
    if not yes:
        if not _interactive():
            raise RunError(f"{name} is not downloaded yet ({size}): run 'videomla models download {name}' "
                           f"first, or pass --yes to download it now")
        answer = console.input(escape(f"{name} is not downloaded yet: download it ({size}) from {endpoint()} into "
                                      f"{cache_dir()} (licence: {entry.licence})? [y/N] "))
        if answer.strip().lower() not in ("y", "yes"):
            raise RunError(f"{name} is not downloaded (run 'videomla models download {name}')")
    return download(entry, console)


def _interactive() -> bool:
    return sys.stdin.isatty()


def _fetch(f: HubFile, model: str, console) -> Path:
    """Download one file with ``hf_hub_download`` and check it; a wrong file is deleted and reported."""
    from huggingface_hub import hf_hub_download

    if _pointer(f) is not None:  # here but the wrong size: stale or damaged, fetch it again
        remove_file(f)
    try:
        path = Path(hf_hub_download(f.repo, f.filename, revision=f.revision, cache_dir=cache_dir(),
                                    endpoint=endpoint()))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 -- every hub failure becomes one line
        raise _hub_error(e, f, model) from None
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        _reject(f, model, f"{size} bytes instead of {f.size}")
    want = f.sha256 or _lfs_sha256(path)
    if want:
        with console.status(f"checking sha256 of {f.filename}"):
            got = file_sha256(path)
        if got != want:
            _reject(f, model, f"sha256 {got[:16]}... does not match the expected {want[:16]}...")
    return path


def _reject(f: HubFile, model: str, why: str) -> None:
    remove_file(f)
    raise RunError(f"{f.repo}/{f.filename}: {why}; the file was deleted "
                   f"(run 'videomla models download {model}' to fetch it again)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _lfs_sha256(path: Path) -> str | None:
    """The hub names an LFS file's blob after its sha256 (its ETag); small git files get a sha1 instead."""
    blob = Path(os.path.realpath(path))
    return blob.name if blob.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", blob.name) else None


def _hub_error(e: BaseException, f: HubFile, model: str) -> RunError:
    from huggingface_hub import errors as he

    where, url = f"{f.repo}/{f.filename}", f"{endpoint()}/{f.repo}"
    chain = [e]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 10:
        chain.append(nxt)
    for x in chain:
        code = getattr(getattr(x, "response", None), "status_code", None)
        if isinstance(x, he.OfflineModeIsEnabled):
            return RunError(offline_message(model))
        if isinstance(x, he.GatedRepoError) or (isinstance(x, he.HfHubHTTPError) and code == 403):
            return RunError(f"{f.repo} is gated (HTTP {code}): accept its licence at {url}, then log in "
                            f"(set HF_TOKEN or run 'hf auth login') and run the command again")
        if isinstance(x, he.RepositoryNotFoundError) or (isinstance(x, he.HfHubHTTPError) and code == 401):
            return RunError(f"{f.repo} was not found on {endpoint()} or needs a login (HTTP {code}): if it is "
                            f"gated or private, accept its licence at {url} and set HF_TOKEN or run 'hf auth login'")
        if isinstance(x, (he.RemoteEntryNotFoundError, he.RevisionNotFoundError)):
            return RunError(f"{where} (revision {f.revision}) is not on {endpoint()}: the model manifest "
                            f"(assets/models.json) may be out of date")
    if isinstance(e, he.LocalEntryNotFoundError) or type(e).__module__.startswith(("httpx", "httpcore")):
        return RunError(f"cannot download {where} from {endpoint()} ({_first_line(chain[-1])}): check the "
                        f"connection (or HF_ENDPOINT / proxy settings) and run the command again")
    return RunError(f"downloading {where} failed: {_first_line(e)} (files already downloaded are kept; "
                    f"run the command again)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# ----------------------------------------------------------------------------------------- cache layout

def _repo_dir(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def _pointer(f: HubFile) -> Path | None:
    """The file's snapshot entry for the commit its revision points to (whatever its size), or None."""
    from huggingface_hub import try_to_load_from_cache

    p = try_to_load_from_cache(f.repo, f.filename, cache_dir=cache_dir(), revision=f.revision)
    return Path(p) if isinstance(p, str) and os.path.isfile(p) else None


def _entries(f: HubFile) -> list[Path]:
    """The file's entries in every snapshot of its repo (any revision)."""
    snaps = _repo_dir(f.repo) / "snapshots"
    if not snaps.is_dir():
        return []
    return [p for snap in snaps.iterdir() if (p := snap / f.filename).is_symlink() or p.is_file()]


def remove_file(f: HubFile) -> int:
    """Delete the file from every snapshot of its repo, and the blobs no snapshot entry points to any
    more; drop the repo's folder when nothing of it is left. Returns the bytes freed."""
    repo = _repo_dir(f.repo)
    snaps = repo / "snapshots"
    if not snaps.is_dir():
        return 0
    freed, blobs = 0, set()
    for p in _entries(f):
        if p.is_symlink():
            blobs.add(Path(os.path.realpath(p)))
        else:  # no-symlink caches (Windows) keep the file itself in the snapshot
            freed += p.stat().st_size
        p.unlink()
        for parent in p.parents:  # empty folders up to the snapshot itself
            if parent == snaps or any(parent.iterdir()):
                break
            parent.rmdir()
    still_used = {Path(os.path.realpath(q)) for q in snaps.rglob("*") if q.is_symlink()}
    for b in blobs - still_used:
        if b.is_file():
            freed += b.stat().st_size
            b.unlink()
    if not any(snaps.iterdir()):
        shutil.rmtree(repo, ignore_errors=True)
    return freed


def remove(entry: ModelEntry, shared: bool = False) -> tuple[int, int, dict[str, list[str]]]:
    """Delete a model's cached files. A file that another downloaded model also lists (the Wan pieces) is
    kept unless ``shared``. Returns (files removed, bytes freed, {kept file: [models that use it]})."""
    others = [o for o in registry.REGISTRY.values() if o.name != entry.name and o.tier == "download" and in_use(o)]
    removed, freed, kept = 0, 0, {}
    for f in entry.files:
        if not _entries(f):
            continue
        users = [o.name for o in others if any((g.repo, g.filename) == (f.repo, f.filename) for g in o.files)]
        if users and not shared:
            kept[f"{f.repo}/{f.filename}"] = users
            continue
        freed += remove_file(f)
        removed += 1
    return removed, freed, kept
