"""The annotation stash: a dataset's operator annotations and their log, saved on local disk
before anything rewrites its store, so that no failure (a killed rebuild, a lost branch) can
lose them.

>>> stash("demo_air_temperature")  # doctest: +SKIP
PosixPath('.../stash/annotations/demo_air_temperature.json')
>>> restore("demo_air_temperature", branch="rebuild")  # doctest: +SKIP
>>> clear("demo_air_temperature")  # once the rewritten store is published  # doctest: +SKIP

A stash lives in ``$REF_CONFIGURATION/stash/annotations/<dataset>.json``, written atomically
(a reader sees the previous stash or the new one, and a failed write leaves no temporary file).
A stash that does not read (truncated, edited by hand, another format) is treated as absent,
with a warning naming the file: it must never stop the operation that would otherwise restore
from it. Reading creates no directory. The dataset id is checked before it names a file, so no
id reaches outside the stash directory.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import zarr

from ref_assets.annotations import (
    AnnotationChange,
    AnnotationReceipt,
    Annotations,
    append_to_log,
    apply_change,
    commit_annotations,
    current_user,
    history_ids,
    operator_state,
    read_annotations,
)
from ref_assets.config import Settings, load_settings
from ref_assets.files import atomic_write_bytes
from ref_assets.specs import DATASET_ID_PATTERN
from ref_assets.store.repository import DatasetStore, StoreError

logger = logging.getLogger(__name__)

STASH_FORMAT = "ref-assets/annotation-stash-v1"
_DATASET_ID = re.compile(DATASET_ID_PATTERN)


@dataclass(frozen=True)
class AnnotationStash:
    """What a stash holds: the annotations and log of the store's snapshot ``source_snapshot``."""

    dataset_id: str
    stashed_at: str
    source_snapshot: str
    annotations: Annotations
    history: list[AnnotationChange]
    path: Path


def stash_dir(settings: Settings | None = None) -> Path:
    return (settings or load_settings()).configuration_dir / "stash" / "annotations"


def stash_path(dataset_id: str, settings: Settings | None = None) -> Path:
    """The stash file of ``dataset_id``; a ValueError for an id that is no dataset id (one
    that would name a file elsewhere, such as ``../ref``)."""
    directory = stash_dir(settings)
    if not isinstance(dataset_id, str) or not _DATASET_ID.match(dataset_id):
        raise ValueError(
            f"invalid dataset id {dataset_id!r} for an annotation stash: use lower-case "
            "letters, digits and underscores, starting with a letter"
        )
    path = directory / f"{dataset_id}.json"
    if path.resolve().parent != directory.resolve():  # a symlinked name, say
        raise ValueError(f"{dataset_id}: the stash file {path} lies outside {directory}")
    return path


def stash(dataset_id: str, *, settings: Settings | None = None) -> Path:
    """Save the annotations and log at the tip of ``main`` to the dataset's stash (replacing
    any earlier stash: ``main`` is what a failed rewrite leaves untouched); return its path."""
    settings = settings or load_settings()
    path = stash_path(dataset_id, settings)
    stored = read_annotations(dataset_id, settings=settings)
    if not stored.laid_out:
        # An empty store holds nothing to keep, and its empty stash would replace one that
        # holds what a store moved aside had.
        raise StoreError(
            f"{dataset_id}: the store has no layout yet, so no annotations to stash"
            + (f"; the stash {path} is kept as it is" if path.exists() else "")
        )
    document = {
        "format": STASH_FORMAT,
        "dataset": dataset_id,
        "stashed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_snapshot": stored.snapshot_id,
        "annotations": stored.annotations.to_dict(),
        "history": [json.loads(change.to_json()) for change in stored.history],
    }
    atomic_write_bytes(path, json.dumps(document, indent=1, sort_keys=True).encode("utf-8"))
    logger.info("%s: annotations stashed in %s", dataset_id, path)
    return path


def read_stash(dataset_id: str, *, settings: Settings | None = None) -> AnnotationStash | None:
    """The dataset's stash, or None when there is none or it does not read (then a warning
    names the file and why)."""
    path = stash_path(dataset_id, settings)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        logger.warning(
            "%s: the annotation stash %s is unreadable, ignored: %s", dataset_id, path, err
        )
        return None
    try:
        document = json.loads(text)
        if document.get("format") != STASH_FORMAT or document.get("dataset") != dataset_id:
            raise ValueError(
                f"format {document.get('format')!r} of dataset {document.get('dataset')!r}, "
                f"not {STASH_FORMAT!r} of {dataset_id!r}"
            )
        return AnnotationStash(
            dataset_id=dataset_id,
            stashed_at=str(document["stashed_at"]),
            source_snapshot=str(document["source_snapshot"]),
            annotations=Annotations.from_dict(document["annotations"]),
            history=[AnnotationChange.from_dict(entry) for entry in document["history"]],
            path=path,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        logger.warning(
            "%s: the annotation stash %s is corrupt and treated as absent (%s: %s); move it "
            "aside to keep it",
            dataset_id,
            path,
            type(err).__name__,
            err,
        )
        return None


def restore(
    dataset_id: str,
    *,
    branch: str = "main",
    by: str | None = None,
    settings: Settings | None = None,
) -> AnnotationReceipt | None:
    """Give the store's ``branch`` the stashed annotations and log, in one commit: stashed log
    entries it lacks are appended as they were, and each stashed annotation it lacks is set
    (a change of action ``restore``); the receipt lists the log entries the commit wrote.
    Annotations of variables the store no longer has are left out, with a warning. None when
    there is no (readable) stash. The stash is kept: the caller clears it once the restored
    store is published."""
    settings = settings or load_settings()
    saved = read_stash(dataset_id, settings=settings)
    if saved is None:
        return None
    store = DatasetStore(settings.storage_root, dataset_id)
    try:
        return apply_annotations(store, saved.annotations, saved.history, branch=branch, by=by)
    except StoreError:
        logger.warning(
            "%s: the annotation stash %s is kept for the next try", dataset_id, saved.path
        )
        raise


def apply_annotations(
    store: DatasetStore,
    annotations: Annotations,
    history: list[AnnotationChange],
    *,
    branch: str = "main",
    by: str | None = None,
    removals: Mapping[str | None, list[str]] | None = None,
) -> AnnotationReceipt:
    """Give the store's ``branch`` ``annotations`` and the log entries of ``history`` it lacks,
    in one commit (none when it has them all): what `restore` does with a stash, and what a
    rebuild does with ``main``'s annotations (`ref_assets.rebuild`). ``removals`` (keys by
    target, None the dataset) are annotations to take back where the branch has them."""
    dataset_id = store.dataset_id
    author = by or current_user()

    def edit(group: zarr.Group) -> list[AnnotationChange]:
        known = history_ids(group)
        appended = [change for change in history if change.id not in known]
        append_to_log(group, appended)
        variables = group.attrs["ref_assets"]["structure"]["variables"]
        if gone := sorted(set(annotations.variables) - set(variables)):
            logger.warning(
                "%s: the store has no variable %s any more; its stashed annotations are not "
                "restored (they stay in the log)",
                dataset_id,
                ", ".join(gone),
            )
        changes = list(appended)
        named = [*annotations.variables, *(t for t in removals or {} if t is not None)]
        targets = [None, *(v for v in dict.fromkeys(named) if v in variables)]
        for target in targets:
            node = group if target is None else group[target]
            current, own = node.attrs.asdict(), operator_state(group)[0].of(target)
            differing = {
                key: value
                for key, value in annotations.of(target).items()
                if current.get(key, _MISSING) != value or own.get(key, _MISSING) != value
            }
            taken_back = [key for key in (removals or {}).get(target, []) if key in own]
            if differing or taken_back:
                where = f"{dataset_id} {'dataset' if target is None else f'variable {target}'}"
                changes.append(
                    apply_change(
                        group, where, target, differing, taken_back, by=author, action="restore"
                    )
                )
        return changes

    return commit_annotations(store, edit, author=author, branch=branch)


def clear(dataset_id: str, *, settings: Settings | None = None) -> bool:
    """Remove the dataset's stash (after the rewrite it protected succeeded); False if there
    was none."""
    path = stash_path(dataset_id, settings)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    logger.info("%s: annotation stash %s cleared", dataset_id, path)
    return True


_MISSING = object()
