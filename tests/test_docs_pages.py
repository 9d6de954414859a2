"""The documentation's code fits its pages: no line is cut off or hidden."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the theme's content column shows about 80 characters of code
PAGE_WIDTH = 79
CODE_BLOCK = re.compile(r"\s*\.\. (code-block|code|doctest|testcode)::")


def code_lines_of_rst(text):
    """(line number, code line without the block's indent) of each code block."""
    inside, indent = False, None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        starts_block = CODE_BLOCK.match(line) or (
            stripped.endswith("::") and not stripped.startswith("..")
        )
        if starts_block:
            inside, indent = True, None
            continue
        if not inside or not stripped:
            continue
        line_indent = len(line) - len(line.lstrip())
        if indent is None:
            if line_indent == 0:
                inside = False
                continue
            if stripped.startswith(":"):  # the directive's options
                continue
            indent = line_indent
        if line_indent < indent:
            inside = False
            continue
        yield number, line[indent:]


def test_the_scanner_finds_code_lines():
    text = (
        "Text::\n\n   code = 1\n\nprose\n\n"
        ".. code-block:: python\n   :caption: x\n\n   more\n"
    )
    assert list(code_lines_of_rst(text)) == [(3, "code = 1"), (10, "more")]


RST_PAGES = sorted(
    path
    for path in (ROOT / "docs").rglob("*.rst")
    if not {"_build", "auto_examples", "generated"} & set(path.parts)
)
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("page", RST_PAGES, ids=lambda path: path.name)
def test_user_guide_code_fits_the_page(page):
    too_long = [
        f"{page.name}:{number} ({len(line)} characters)"
        for number, line in code_lines_of_rst(page.read_text())
        if len(line) > PAGE_WIDTH
    ]
    assert not too_long


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_gallery_code_fits_the_page_and_prints_no_timings(example):
    text = example.read_text()
    too_long = [
        f"{example.name}:{number}"
        for number, line in enumerate(text.splitlines(), 1)
        if len(line) > PAGE_WIDTH
    ]
    assert not too_long
    # the docs machine's timings read as skafm's speed on any machine
    assert "perf_counter" not in text and "time.time" not in text


def test_docstring_examples_fit_the_api_pages():
    too_long = []
    for module in sorted((ROOT / "skafm").rglob("*.py")):
        for number, line in enumerate(module.read_text().splitlines(), 1):
            code = line.lstrip()
            if code.startswith((">>> ", "... ")) and len(code) > PAGE_WIDTH:
                too_long.append(f"{module.name}:{number}")
    assert not too_long
