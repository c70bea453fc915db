"""The ``Fact`` schema and its JSON Lines format.

One line per fact::

    {"id": "capital-france", "relation": "capital", "subject": "France",
     "prompt": "The capital of {} is", "target": " Paris",
     "paraphrases": ["{}'s capital city is"],
     "neighbors": [{"prompt": "The capital of Germany is", "target": " Berlin"}],
     "same_subject": [{"prompt": "The official language of France is", "target": " French"}],
     "same_answer": [{"prompt": "The Eiffel Tower is in the city of", "target": " Paris"}],
     "held_out_paraphrases": ["Q: What is the capital of {}?\nA:"],
     "new_target": " Rome"}

``prompt`` and ``paraphrases`` are templates with one ``{}`` for the subject; ``target`` continues
the prompt (leading space included) and may span several tokens. ``neighbors`` are facts about
other subjects of the same relation that an edit must keep; ``same_subject`` are other facts about
the same subject, ``same_answer`` facts about other subjects with the same answer (forgetting
France -> Paris must keep the Eiffel Tower in Paris); ``held_out_paraphrases`` are wordings of the
fact that no editor reads (only ``paraphrases`` are given to editors), so that verification can
measure how far forgetting reaches beyond the wordings it was trained on. All but ``id``,
``subject``, ``prompt`` and ``target`` are optional.

The bundled facts carry a fixed split (:func:`fact_split`): settings are chosen on the ``"tune"``
facts only, and quality is reported on the ``"held_out"`` facts beside them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

TEMPLATE_FIELDS = ("paraphrases", "held_out_paraphrases")
"""Fields that list templates of the fact itself (one ``{}`` for the subject)."""
PROBE_FIELDS = ("neighbors", "same_subject", "same_answer")
"""Fields that list ``{"prompt", "target"}`` facts an edit of this fact must keep."""
SPLITS = ("tune", "held_out")
HELD_OUT_SHARE = 3
"""One bundled fact in this many (by a hash of its id) is held out from every choice of settings."""


class FactFormatError(ValueError):
    """A fact record is invalid; the message names the file, line and field."""


@dataclass(frozen=True)
class Probe:
    """A filled-in prompt and the answer expected after it."""

    prompt: str
    target: str


@dataclass(frozen=True)
class Fact:
    """A fact the model may know: ``prompt.format(subject) + target``."""

    id: str
    subject: str
    prompt: str
    target: str
    paraphrases: tuple[str, ...] = ()
    neighbors: tuple[Probe, ...] = ()
    same_subject: tuple[Probe, ...] = ()
    relation: str | None = None
    new_target: str | None = None
    same_answer: tuple[Probe, ...] = ()
    held_out_paraphrases: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The main prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    @property
    def paraphrase_texts(self) -> list[str]:
        return [p.format(self.subject) for p in self.paraphrases]

    @property
    def held_out_texts(self) -> list[str]:
        """The held-out wordings with the subject filled in (no editor reads them)."""
        return [p.format(self.subject) for p in self.held_out_paraphrases]

    def to_dict(self) -> dict:
        record = asdict(self)
        for key in TEMPLATE_FIELDS:
            record[key] = list(getattr(self, key))
        for key in PROBE_FIELDS:
            record[key] = [asdict(p) for p in getattr(self, key)]
        optional = (*PROBE_FIELDS[2:], *TEMPLATE_FIELDS[1:])  # left out when empty
        return {k: v for k, v in record.items() if v is not None and not (k in optional and not v)}

    @classmethod
    def from_dict(cls, record: dict, where: str = "fact") -> Fact:
        """Validate ``record`` and build a Fact; errors say ``where`` and which field is wrong."""
        if not isinstance(record, dict):
            raise FactFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for key in ("id", "subject", "prompt", "target"):
            if key not in record:
                raise FactFormatError(f"{where}: missing required field '{key}'")
            if not isinstance(record[key], str) or not record[key].strip():
                raise FactFormatError(f"{where}: field '{key}' must be a non-empty string")
        known = {"id", "subject", "prompt", "target", "relation", "new_target",
                 *TEMPLATE_FIELDS, *PROBE_FIELDS}
        unknown = set(record) - known
        if unknown:
            raise FactFormatError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}")
        _check_template(record["prompt"], record["subject"], f"{where}: field 'prompt'")
        templates = {}
        for key in TEMPLATE_FIELDS:
            templates[key] = record.get(key, [])
            if not isinstance(templates[key], list):
                raise FactFormatError(f"{where}: field '{key}' must be a list of templates")
            for i, template in enumerate(templates[key]):
                _check_template(template, record["subject"], f"{where}: field '{key}[{i}]'")
        probes = {key: _probes(record.get(key, []), f"{where}: field '{key}'") for key in PROBE_FIELDS}
        for key in ("relation", "new_target"):
            value = record.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise FactFormatError(f"{where}: field '{key}' must be a non-empty string if given")
        return cls(
            id=record["id"], subject=record["subject"], prompt=record["prompt"],
            target=record["target"], relation=record.get("relation"), new_target=record.get("new_target"),
            **{key: tuple(value) for key, value in templates.items()}, **probes,
        )


def _check_template(template, subject: str, where: str) -> None:
    if not isinstance(template, str):
        raise FactFormatError(f"{where} must be a string")
    if template.count("{}") != 1:
        raise FactFormatError(
            f"{where} must contain exactly one '{{}}' where the subject goes, got {template!r}"
        )
    try:
        template.format(subject)
    except (IndexError, KeyError, ValueError) as err:
        raise FactFormatError(f"{where}: {template!r} is not a valid template ({err}); "
                              "escape other braces as '{{' and '}}'") from err


def _probes(items, where: str) -> tuple[Probe, ...]:
    if not isinstance(items, list):
        raise FactFormatError(f"{where} must be a list of {{'prompt', 'target'}} objects")
    probes = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"prompt", "target"}:
            raise FactFormatError(f"{where}[{i}] must be an object with exactly 'prompt' and 'target'")
        if not all(isinstance(item[k], str) and item[k].strip() for k in ("prompt", "target")):
            raise FactFormatError(f"{where}[{i}]: 'prompt' and 'target' must be non-empty strings")
        probes.append(Probe(item["prompt"], item["target"]))
    return tuple(probes)


def bundled_fact_sets() -> dict[str, Path]:
    """Names and paths of the bundled fact sets (``assets/facts/``, shipped as ``excise/bundled_facts``)."""
    folder = Path(__file__).resolve().parent / "bundled_facts"
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.jsonl"))}


def resolve_facts_path(name_or_path: str | Path) -> Path:
    """A bundled set's name ("capitals", or "all" for every set) or a JSONL path -> path(s)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    bundled = bundled_fact_sets()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    raise FileNotFoundError(
        f"no fact file {name_or_path!r}: give a JSONL path or a bundled set "
        f"({', '.join(sorted(bundled)) or 'none installed'}, or 'all')"
    )


def read_facts(path: str | Path) -> list[Fact]:
    """Read and validate a JSONL fact file; errors name the file, line and field."""
    path = Path(path)
    facts, seen = [], {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise FactFormatError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from err
            fact = Fact.from_dict(record, where)
            if fact.id in seen:
                raise FactFormatError(f"{where}: duplicate id {fact.id!r} (first on line {seen[fact.id]})")
            seen[fact.id] = lineno
            facts.append(fact)
    return facts


def load_facts(name_or_path: str | Path = "all", split: str | None = None) -> list[Fact]:
    """Load a bundled fact set by name (or ``"all"``), or any JSONL file by path.

    ``split``: ``"tune"`` or ``"held_out"`` keeps only that part of the fixed split (:func:`fact_split`).
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if str(name_or_path) == "all" and not Path(name_or_path).exists():
        facts = []
        for _, path in sorted(bundled_fact_sets().items()):
            facts.extend(read_facts(path))
    else:
        facts = read_facts(resolve_facts_path(name_or_path))
    return [f for f in facts if split is None or fact_split(f.id) == split]


def fact_split(fact_id: str) -> str:
    """``"held_out"`` for one fact id in :data:`HELD_OUT_SHARE` (fixed by a hash of the id), else ``"tune"``.

    Benchmarks choose settings on the ``"tune"`` facts and report ``"held_out"`` beside them, so a
    quality claim is also measured on facts no setting was chosen on.
    """
    digest = hashlib.sha256(fact_id.encode("utf-8")).digest()
    return "held_out" if digest[0] % HELD_OUT_SHARE == 0 else "tune"


def write_facts(facts, path: str | Path) -> Path:
    """Write facts as JSON Lines (UTF-8, one object per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for fact in facts:
            handle.write(json.dumps(fact.to_dict(), ensure_ascii=False) + "\n")
    return path


def find_fact(facts, fact_id: str) -> Fact:
    """The fact with ``fact_id``; the error lists a few ids that do exist."""
    for fact in facts:
        if fact.id == fact_id:
            return fact
    sample = ", ".join(f.id for f in list(facts)[:5])
    raise KeyError(f"no fact with id {fact_id!r} (ids look like: {sample}, ...)")

