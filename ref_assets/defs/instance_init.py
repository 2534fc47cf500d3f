"""Making sure the Dagster instance of ``DAGSTER_HOME`` exists before runs start.

Dagster creates its SQLite storage on first use, in whichever process gets there first, with no
lock between processes. Eight ``dagster asset materialize`` processes started at once on a fresh
``DAGSTER_HOME`` (measured here) all failed: "table runs already exists", "table instigators already
exists", "UNIQUE constraint failed: alembic_version.version_num", and the run database was left
with two alembic heads. `init_instance` creates everything once, under a file lock in
``DAGSTER_HOME``, so that any number of runs can start at once afterwards:

- ``dagster.yaml``: ref_assets' packaged instance config is written when there is none (an
  existing one, a link included, is kept as it is);
- the run storage (``history/runs.db``: tables, alembic stamp, data migrations and the instance id
  row), the event log's index (``history/runs/index.db``) and the schedule storage
  (``schedules/schedules.db``), each opened and queried once. The event log's per-run databases
  are created by each run for its own id, which no other process shares, so they do not race.

It is idempotent: on an existing instance it only opens and queries the storages.

>>> report = init_instance(Path("/srv/dagster"))  # doctest: +SKIP
>>> report.config_written  # doctest: +SKIP
False
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from ref_assets.files import atomic_write_bytes

if TYPE_CHECKING:
    import dagster as dg

CONFIG_FILE_NAME = "dagster.yaml"
LOCK_FILE_NAME = ".ref_assets_instance.lock"
# Creating a fresh SQLite instance takes about a second; a minute means the holder is stuck.
LOCK_TIMEOUT_SECONDS = 60.0


class InstanceInitError(RuntimeError):
    """The Dagster instance cannot be found or initialized; the message says what to do."""


@dataclass(frozen=True)
class InstanceReport:
    """What `init_instance` found and did."""

    home: Path
    config_written: bool
    storages: tuple[str, ...]  # the storage classes opened, e.g. "runs: SqliteRunStorage"


def dagster_home(environ: Mapping[str, str] = os.environ) -> Path:
    """The instance directory named by ``DAGSTER_HOME``; an error says how to set it."""
    value = environ.get("DAGSTER_HOME")
    if not value:
        raise InstanceInitError(
            "DAGSTER_HOME is not set: set it to the directory of the Dagster instance that should "
            "record the runs (for example `export DAGSTER_HOME=$PWD/.dagster`)"
        )
    return Path(value).expanduser().absolute()


def init_instance(home: Path) -> InstanceReport:
    """Create the instance in ``home`` if needed (config and every storage), under a file lock."""
    import dagster as dg  # here, not at import: every ref-assets command imports this module
    from alembic.util.exc import CommandError as SchemaError
    from sqlalchemy.exc import SQLAlchemyError

    lock_path = home / LOCK_FILE_NAME
    try:
        home.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_path, timeout=LOCK_TIMEOUT_SECONDS):
            config_written = _ensure_config(home)
            with dg.DagsterInstance.from_config(str(home)) as instance:
                storages = _create_storages(instance)
    except Timeout:
        raise InstanceInitError(
            f"waited {LOCK_TIMEOUT_SECONDS:.0f} s for {lock_path}: another process is initializing "
            "the Dagster instance and has not finished; if no ref-assets or ./dev command is "
            "running, that process is stuck: stop it, then run `ref-assets instance init` again"
        ) from None
    except OSError as err:
        raise InstanceInitError(
            f"cannot initialize the Dagster instance in {home}: {err}; make DAGSTER_HOME a "
            "writable directory"
        ) from err
    except dg.DagsterError as err:
        raise InstanceInitError(
            f"the Dagster instance in {home} cannot be opened: {err}; fix "
            f"{home / CONFIG_FILE_NAME} (or move it aside to get ref_assets' default)"
        ) from err
    except (SchemaError, SQLAlchemyError) as err:
        # What processes that created the storage at once, without this lock, leave behind.
        raise InstanceInitError(
            f"the Dagster instance's database in {home} is damaged ({str(err).splitlines()[0]}), "
            "typically by several processes creating it at once; Dagster cannot open it. Move "
            f"{home / 'history'} and {home / 'schedules'} aside (their run history is lost to "
            "the UI; `ref-assets sync-instance` reports the stored periods again), then run "
            "`ref-assets instance init`"
        ) from err
    return InstanceReport(home, config_written, storages)


def _ensure_config(home: Path) -> bool:
    """Write the packaged ``dagster.yaml`` into ``home`` unless one is there; return whether it
    was written. A dangling link is an error: replacing it would hide a broken setup."""
    target = home / CONFIG_FILE_NAME
    if target.is_symlink() and not target.exists():
        raise InstanceInitError(
            f"{target} links to {os.readlink(target)}, which does not exist (a moved checkout?): "
            "remove the link (then ref_assets' default is written) or point it at a dagster.yaml"
        )
    if target.exists():
        return False
    packaged = resources.files("ref_assets").joinpath("data", CONFIG_FILE_NAME)
    atomic_write_bytes(target, packaged.read_bytes())
    return True


def _create_storages(instance: dg.DagsterInstance) -> tuple[str, ...]:
    """Open and query every storage once, so each creates its tables now, under the lock.

    The storages create their tables when the instance opens them; the queries make sure, and
    the run storage id (a row that the first readers of a new database would otherwise insert
    concurrently) is created here too."""
    instance.run_storage.get_run_storage_id()
    instance.event_log_storage.get_asset_keys(limit=1)
    storages = [("runs", instance.run_storage), ("event log", instance.event_log_storage)]
    if instance.schedule_storage is not None:
        instance.schedule_storage.all_instigator_state()
        storages.append(("schedules", instance.schedule_storage))
    return tuple(f"{name}: {type(storage).__name__}" for name, storage in storages)
