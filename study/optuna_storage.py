"""The study's Optuna storage: an RDB database where Optuna records every trial TPE proposes.

A search study's Optuna study lives in an Optuna RDB storage (:class:`optuna.storages.RDBStorage`), not only in
Ray Tune's searcher, so that Optuna's own tools open it: ``optuna-dashboard sqlite:///results/<name>/optuna.db``
and ``optuna.load_study(study_name=<name>, storage=...)``. By default it is the SQLite file
``<results>/<name>/optuna.db``; ``--optuna-storage URL`` (any SQLAlchemy URL Optuna accepts, e.g.
``postgresql://host/db`` or ``mysql://...``) points at a database shared on a cluster, where the Optuna study's
name is the study's ``--name``.

How it meets Ray Tune (2.60): ``OptunaSearch(storage=RDBStorage, study_name=...)`` creates or loads the Optuna
study at construction (``load_if_exists``), asks it for every trial's parameters and tells it every result.
The searcher is pickled with the Tuner and into Tune's experiment checkpoints; an ``RDBStorage`` pickles as its
URL and reconnects when unpickled, so ``--resume`` (``Tuner.restore``) continues the same Optuna study in the
same database. That is also why a resumed study keeps the storage it started with: ``--optuna-storage`` on
``--resume`` must name the same one.

``study.json`` records the storage (:data:`STORAGE_KEY`, the URL with any password hidden) and the Optuna
study's name (:data:`STUDY_NAME_KEY`); :func:`load_optuna_study` opens it from a results folder, for the report
and for users. A grid study has no Optuna search and no storage. Every problem with a storage is one
:class:`~maae.errors.ConfigError` line, raised before Ray starts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maae.errors import ConfigError
from study.protocol import STUDY_FILE

if TYPE_CHECKING:  # optuna and SQLAlchemy load in about a second: only where a storage is opened
    import optuna

OPTUNA_DB_FILE = "optuna.db"
# Keys of study.json.
STORAGE_KEY = "optuna_storage"
STUDY_NAME_KEY = "optuna_study"
# The Optuna user attribute that names a trial's Ray Tune trial id (trials.csv's trial_id).
TRIAL_ID_ATTR = "trial_id"
FLAG = "--optuna-storage"
# How much of a database driver's error message goes into the one line (its first line, this long at most).
MAX_REASON_CHARS = 160
# What SQLAlchemy writes in place of a hidden password.
HIDDEN_PASSWORD = "***"


def default_storage_url(results_dir: Path) -> str:
    """The SQLite file ``<results_dir>/optuna.db`` as a storage URL (absolute, so any working folder opens it)."""
    return f"sqlite:///{(Path(results_dir) / OPTUNA_DB_FILE).resolve()}"


def shown_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (what study.json and messages show)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _hides_password(url: str) -> bool:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password == HIDDEN_PASSWORD
    except ArgumentError:
        return False


def _reason(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [""])[0]
    text = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The storage at ``url`` (its tables created when it is new); a one-line ConfigError when it cannot be opened
    (a malformed URL, a missing driver, an unreachable server, a folder that does not exist)."""
    import optuna

    _quiet()
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy and the drivers raise many types; all mean "cannot open"
        raise ConfigError(f"{FLAG} {shown_url(url)}: cannot open it as an Optuna RDB storage ({_reason(error)}); "
                          "expected a URL such as sqlite:///path/optuna.db or postgresql://host/db",
                          field="optuna_storage") from None


def study_names(storage: optuna.storages.RDBStorage) -> list[str]:
    return [summary.study_name for summary in storage.get_all_studies()]


def _recorded(results_dir: Path) -> dict[str, Any]:
    study_file = Path(results_dir) / STUDY_FILE
    try:
        return json.loads(study_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def resolve_optuna_storage(requested: str | None, results_dir: Path, study_name: str, *, searched: bool,
                           resume: bool) -> str | None:
    """The storage URL a study records its Optuna trials in (None: a grid study, or a resumed study that was
    started without one), checked before Ray starts.

    - a grid study: none; ``--optuna-storage`` is an error (there is no Optuna search to record);
    - a new search study: ``requested``, opened now and refused if it already holds an Optuna study of this
      name (it would mix two studies' trials), else the default SQLite file (created when the study starts);
    - a resumed search study: the storage it started with, from ``study.json``; ``requested`` must be that one.
      A storage whose recorded URL hides a password must be given again with ``--optuna-storage``.
    """
    if not searched:
        if requested:
            raise ConfigError(f"{FLAG}: the space is a grid, which has no Optuna search to record; drop "
                              f"{FLAG} or use a search: space", field="optuna_storage")
        return None
    if not resume:
        if not requested:
            return default_storage_url(results_dir)
        if study_name in study_names(open_storage(requested)):
            raise ConfigError(f"{FLAG} {shown_url(requested)}: already holds an Optuna study named {study_name!r}; "
                              "pass --resume to continue it, or another --name", field="optuna_storage")
        return requested
    recorded = _recorded(results_dir).get(STORAGE_KEY)
    if recorded is None:
        if requested:
            raise ConfigError(f"{FLAG}: the study in {results_dir} was started without an Optuna storage (its "
                              f"trials are in Ray's searcher only); resume it without {FLAG}",
                              field="optuna_storage")
        return None
    if requested:
        if shown_url(requested) != recorded:
            raise ConfigError(f"{FLAG} {shown_url(requested)}: the study in {results_dir} records its trials in "
                              f"{recorded}; --resume continues there (drop {FLAG} or give that one)",
                              field="optuna_storage")
        open_storage(requested)
        return requested
    if _hides_password(recorded):
        raise ConfigError(f"--resume: the study's Optuna storage {recorded} has a password that study.json does not "
                          f"keep; pass {FLAG} with the full URL again", field="optuna_storage")
    return recorded


def fail_orphaned_trials(url: str, study_name: str) -> int:
    """After a study has finished, mark its Optuna trials still ``RUNNING`` as ``FAIL``; returns how many.

    Such a trial was proposed by a study process that was killed before Tune saved the experiment's state, so
    ``--resume`` never learnt of it and proposed a new trial in its place; nothing will ever finish it, and
    Optuna's tools would show it running forever. Only called once every Tune trial has ended.
    """
    import optuna

    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    orphans = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in orphans:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(orphans)


def study_record(url: str | None, study_name: str) -> dict[str, Any]:
    """study.json's entries for the storage (empty without one)."""
    return {STORAGE_KEY: shown_url(url), STUDY_NAME_KEY: study_name} if url else {}


def load_optuna_study(results_dir: Path, storage: str | None = None) -> optuna.Study | None:
    """The study's real Optuna study, read from its storage; None when there is none to read (a grid study, a
    study from before storages were recorded, a SQLite file that is missing, a storage that cannot be opened,
    or one without this study).

    ``storage`` overrides the URL study.json records (needed when that one hides a password). Each Optuna trial
    carries its Ray Tune trial id as the user attribute :data:`TRIAL_ID_ATTR`. Stopped (ASHA) trials are
    ``PRUNED`` with their intermediate values, failed ones ``FAIL``; completed ones hold the study's metric.
    """
    import optuna

    record = _recorded(results_dir)
    url = storage or record.get(STORAGE_KEY)
    name = record.get(STUDY_NAME_KEY) or record.get("name")
    if url is None:
        default = Path(results_dir) / OPTUNA_DB_FILE
        url = default_storage_url(results_dir) if default.is_file() else None
    if url is None or name is None:
        return None
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None  # opening would create an empty database
    try:
        opened = open_storage(url)
    except ConfigError:
        return None
    if name not in study_names(opened):
        return None
    return optuna.load_study(study_name=name, storage=opened)


__all__ = [
    "OPTUNA_DB_FILE",
    "STORAGE_KEY",
    "STUDY_NAME_KEY",
    "TRIAL_ID_ATTR",
    "default_storage_url",
    "fail_orphaned_trials",
    "load_optuna_study",
    "open_storage",
    "resolve_optuna_storage",
    "shown_url",
    "study_record",
]
