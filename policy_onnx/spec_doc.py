"""The clause tables of POLICY_ONNX_SPEC.md, generated from the registry and checked against it."""

from __future__ import annotations

from pathlib import Path

from . import spec

# Packaged with the library; in a checkout a link to the repository's POLICY_ONNX_SPEC.md.
SPEC_PATH = Path(__file__).resolve().parent / "POLICY_ONNX_SPEC.md"


def in_checkout() -> bool:
    """Whether the library runs from its repository (where the document may be rewritten)."""
    return (Path(__file__).resolve().parent.parent / "pyproject.toml").is_file()
BEGIN = ("<!-- BEGIN CLAUSES: generated from policy_onnx/spec.py by "
         "`python -m policy_onnx spec --write`; edit the registry, not this table -->")
END = "<!-- END CLAUSES -->"
GROUPS = {"GRAPH": "Graph", "META": "Metadata", "BEH": "Behaviour", "PAR": "Parity",
          "DISC": "Discrete actions (Extended)", "MASK": "Action masks (Extended)",
          "NORM": "Observation normalization (Extended)", "REC": "Recurrent state (Extended)",
          "OBS": "Image and dict observations (Extended)",
          "PORT": "Other engines (PORT-02 Standard, the others Extended)"}


def render() -> str:
    lines = [BEGIN]
    for prefix, heading in GROUPS.items():
        lines += ["", f"### {heading}", "",
                  "| ID | Level | Needs model | Action spaces | Requirement |",
                  "| --- | --- | --- | --- | --- |"]
        for c in spec.CLAUSES:
            if c.id.split("-")[0] == prefix:
                kinds = "all" if c.kinds == spec.ACTION_KINDS else ", ".join(c.kinds)
                if c.structures != spec.STRUCTURES:
                    kinds += "; " + ", ".join(c.structures) + " policies"
                if c.needs_normalization:
                    kinds += "; trained under VecNormalize"
                if c.observations:
                    kinds += "; " + " or ".join(c.observations) + " observations"
                lines.append(f"| **{c.id}** `{c.slug}` | {c.level.label} | "
                             f"{'yes' if c.needs_model else 'no'} | {kinds} | "
                             f"**{c.title}.** {c.text} |")
    lines += ["", END]
    return "\n".join(lines)


def _split(text: str) -> tuple[str, str, str]:
    if BEGIN not in text or END not in text:
        raise ValueError(f"{SPEC_PATH.name} lacks the generated-table markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head, BEGIN + rest.split(END, 1)[0] + END, tail


def problems() -> list[str]:
    found = list(spec.registry_problems())
    unknown_prefixes = {c.id.split("-")[0] for c in spec.CLAUSES} - set(GROUPS)
    found += [f"clause prefix {p} has no section in the spec document" for p in unknown_prefixes]
    try:
        head, table, _ = _split(SPEC_PATH.read_text())
    except (OSError, ValueError) as exc:
        return found + [str(exc)]
    if f"Version {spec.SPEC_VERSION} of this document" not in head:
        found.append(f"{SPEC_PATH.name} does not say it is version {spec.SPEC_VERSION} "
                     "(policy_onnx/spec.py's SPEC_VERSION) in its scope")
    if table != render():
        found.append(f"{SPEC_PATH.name}'s clause tables differ from policy_onnx/spec.py: run "
                     "`python -m policy_onnx spec --write` and commit the result")
    return found


def write() -> Path:
    """Regenerate the clause tables of the repository's document; returns its path."""
    path = SPEC_PATH.resolve()
    head, _, tail = _split(path.read_text())
    path.write_text(head + render() + tail)
    return path
