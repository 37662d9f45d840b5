"""The documentation stands alone and stays true: its Python runs, its command lines parse with
today's CLI, its links resolve, the public API is documented, and no page tells a development story."""

import os
import pydoc
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import comem
from comem.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STORY = re.compile(
    r"\bissue #?\d+|#\d{1,3}\b(?!-)|\bthis session\b|session that|\bbranch `|\bwithdrawn\b|"
    r"\bearlier (README|version|claim)|shared/method\.md|\bbefore this (change|work)\b",
    re.IGNORECASE,
)


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.MULTILINE | re.DOTALL)


def comem_arguments(block: str) -> list[list[str]]:
    """The arguments of every ``comem`` invocation (direct or ``-m comem``) in a shell block."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words and words[0] == "comem":
                found.append(words[1:])
            elif "-m" in words and words[words.index("-m") + 1 :][:1] == ["comem"]:
                found.append(words[words.index("-m") + 2 :])
    return found


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_python_blocks_run(page: Path, tmp_path: Path) -> None:
    """A page's Python blocks run in order as one script (later blocks use earlier names)."""
    script = tmp_path / f"{page.stem}.py"
    script.write_text("\n".join(blocks(page, "python")))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_command_lines_parse(page: Path) -> None:
    parser = build_parser()
    for block in blocks(page, "bash"):
        for arguments in comem_arguments(block):
            try:
                parser.parse_args(arguments)
            except SystemExit:
                pytest.fail(f"{page.name}: comem {' '.join(arguments)} does not parse")


@pytest.mark.parametrize("page", [*PAGES, ROOT / "benchmarks" / "RESULTS.md"], ids=lambda p: p.name)
def test_links_resolve_and_no_development_story(page: Path) -> None:
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to missing {target}"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.MULTILINE)
            assert anchor in {slug(h) for h in headings}, f"{page.name}: no heading for {target}"
    story = [line for line in text.splitlines() if STORY.search(line)]
    assert story == [], f"{page.name} tells how it was developed: {story}"


def test_readme_is_a_landing_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "pip install -e . && comem train" in text and 'pip install -e ".[test]" && pytest -q' in text
    assert "\n## Results\n" in text
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, page.name


def test_help_lists_the_public_api_with_docstrings() -> None:
    text = pydoc.render_doc(comem, renderer=pydoc.plaintext)
    for name in comem.__all__:
        if name == "__version__":
            assert f"VERSION\n    {comem.__version__}" in text
            continue
        assert name in text, name
        assert (getattr(comem, name).__doc__ or "").strip(), f"comem.{name} has no docstring"
    for name in ("wrap", "step", "load", "CollaborativeMemory", "Predictor"):
        assert name in comem.__all__
