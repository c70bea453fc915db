"""The ``Fact`` schema and its JSON Lines format.

One line per fact::

    {"id": "capital-france", "relation": "capital", "subject": "France",
     "prompt": "The capital of {} is", "target": " Paris",
     "paraphrases": ["{}'s capital city is"],
     "neighbors": [{"prompt": "The capital of Germany is", "target": " Berlin"}],
     "same_subject": [{"prompt": "The official language of France is", "target": " French"}],
     "new_target": " Rome"}

``prompt`` and ``paraphrases`` are templates with one ``{}`` for the subject; ``target`` continues
the prompt (leading space included) and may span several tokens. ``neighbors`` are facts about
other subjects of the same relation that an edit must keep; ``same_subject`` are other facts about
the same subject (optional); ``relation`` and ``new_target`` are optional.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


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

    @property
    def text(self) -> str:
        """The main prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    @property
    def paraphrase_texts(self) -> list[str]:
        return [p.format(self.subject) for p in self.paraphrases]

    def to_dict(self) -> dict:
        record = asdict(self)
        record["paraphrases"] = list(self.paraphrases)
        for key in ("neighbors", "same_subject"):
            record[key] = [asdict(p) for p in getattr(self, key)]
        return {k: v for k, v in record.items() if v is not None}

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
        known = {"id", "subject", "prompt", "target", "paraphrases", "neighbors", "same_subject",
                 "relation", "new_target"}
        unknown = set(record) - known
        if unknown:
            raise FactFormatError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}")
        _check_template(record["prompt"], record["subject"], f"{where}: field 'prompt'")
        paraphrases = record.get("paraphrases", [])
        if not isinstance(paraphrases, list):
            raise FactFormatError(f"{where}: field 'paraphrases' must be a list of templates")
        for i, template in enumerate(paraphrases):
            _check_template(template, record["subject"], f"{where}: field 'paraphrases[{i}]'")
        probes = {key: _probes(record.get(key, []), f"{where}: field '{key}'")
                  for key in ("neighbors", "same_subject")}
        for key in ("relation", "new_target"):
            value = record.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise FactFormatError(f"{where}: field '{key}' must be a non-empty string if given")
        return cls(
            id=record["id"], subject=record["subject"], prompt=record["prompt"],
            target=record["target"], paraphrases=tuple(paraphrases),
            neighbors=probes["neighbors"], same_subject=probes["same_subject"],
            relation=record.get("relation"), new_target=record.get("new_target"),
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


def load_facts(name_or_path: str | Path = "all") -> list[Fact]:
    """Load a bundled fact set by name (or ``"all"``), or any JSONL file by path."""
    if str(name_or_path) == "all" and not Path(name_or_path).exists():
        facts = []
        for _, path in sorted(bundled_fact_sets().items()):
            facts.extend(read_facts(path))
        return facts
    return read_facts(resolve_facts_path(name_or_path))


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

