"""The documentation says what the code does: the reference is generated from it, and every command
example in the README and docs/ parses with medft's own command line."""
import re
import shlex

import pytest

from medft.cli import build_parser
from medft.reference import render
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE_BLOCK = re.compile(r"```[^\n]*\n(.*?)```", re.S)


def test_the_reference_is_up_to_date():
    assert (REPO / "docs" / "reference.md").read_text() == render(), "run `make docs` and commit docs/reference.md"


def _examples() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in CODE_BLOCK.findall(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].strip()
                command = re.search(r"(?:^|-m |\$\(which medft\) )medft (.+)$", line)
                if command and line.startswith(("medft ", "torchrun --")):
                    found.append((doc.relative_to(REPO).as_posix(), command.group(1)))
    return found


EXAMPLES = _examples()


def test_the_docs_show_every_command():
    shown = {args.split()[0] for _, args in EXAMPLES}
    commands = {name.split()[1] for name in re.findall(r"^### `(medft [\w-]+)", (REPO / "docs" / "reference.md").read_text(), re.M)}
    assert commands - {"demo"} <= shown, f"commands without an example in README.md or docs/: {sorted(commands - shown)}"


@pytest.mark.parametrize("doc, args", EXAMPLES)
def test_every_command_example_parses(doc, args):
    try:
        parsed = build_parser().parse_args(shlex.split(args))
    except SystemExit as exc:
        pytest.fail(f"{doc}: `medft {args}` does not parse (exit {exc.code})")
    assert callable(parsed.run)


def test_the_readme_links_to_pages_that_exist_and_fits_on_two_screens():
    text = (REPO / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+\.md)\)", text):
        assert (REPO / link).is_file(), link
    assert len(text.splitlines()) <= 100
