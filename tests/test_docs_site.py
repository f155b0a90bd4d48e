"""The course site: its figures are regenerated from code, its pages and links hold together.

The Python blocks of the pages themselves run through Sybil (``docs/conftest.py``);
these tests cover what Sybil does not: the figure script, the figures the
pages show, the navigation, and a strict ``mkdocs build``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Each script that draws pictures for the course, and the name of its {file name: drawer} table.
FIGURE_SCRIPTS = {"make_figures.py": "FIGURES", "make_diagrams.py": "DIAGRAMS"}
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load_figure_script(name):
    spec = importlib.util.spec_from_file_location(name[:-3], DOCS / "figures" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drawn_by(name, module):
    return getattr(module, FIGURE_SCRIPTS[name])


def _pages():
    return sorted(DOCS.glob("*.md"))


def _image_links():
    """(page, target) for every Markdown image on every page."""
    return [(page, target) for page in _pages() for target in IMAGE_LINK.findall(page.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def figure_scripts():
    pytest.importorskip("matplotlib")
    return {name: _load_figure_script(name) for name in FIGURE_SCRIPTS}


@pytest.mark.parametrize("name", sorted(FIGURE_SCRIPTS))
def test_figure_script_writes_every_figure(figure_scripts, name, tmp_path):
    script = figure_scripts[name]
    written = script.main(["--out", str(tmp_path)])
    assert sorted(Path(p).name for p in written) == sorted(_drawn_by(name, script))
    for figure in _drawn_by(name, script):
        data = (tmp_path / figure).read_bytes()
        assert data.startswith(PNG_SIGNATURE), f"{figure} is not a PNG"
        assert len(data) > 10_000, f"{figure} is suspiciously small ({len(data)} bytes)"


@pytest.mark.parametrize("name", sorted(FIGURE_SCRIPTS))
def test_figure_script_runs_as_a_command(name, tmp_path):
    pytest.importorskip("matplotlib")
    # The repository root on PYTHONPATH: the script must work from a checkout
    # even where the package is not pip-installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, str(DOCS / "figures" / name), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr
    expected = _drawn_by(name, _load_figure_script(name))
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(expected)


def test_every_figure_shown_is_made_by_a_script_and_committed(figure_scripts):
    shown = {target for _, target in _image_links() if target.startswith("figures/")}
    assert shown, "no page shows a figure; the pattern or the pages changed"
    made = {f"figures/{figure}" for name, script in figure_scripts.items() for figure in _drawn_by(name, script)}
    # Chapters 9 to 12 show a run's plots, copied into figures/run/ by make_run_figures.py
    # (tested on a tiny run in tests/test_run_figures.py).
    made |= {f"figures/run/{figure}" for figure in _load_figure_script("make_run_figures.py").RUN_FIGURES}
    assert shown <= made, f"figures shown but drawn by no script in docs/figures: {sorted(shown - made)}"
    for target in shown:
        assert (DOCS / target).is_file(), f"{target} is missing: run the scripts in docs/figures"


def test_every_diagram_is_shown_in_a_chapter(figure_scripts):
    shown = {target for page, target in _image_links() if re.match(r"\d\d-", page.name)}
    for figure in _drawn_by("make_diagrams.py", figure_scripts["make_diagrams.py"]):
        assert f"figures/{figure}" in shown, f"{figure} is drawn but no chapter shows it"


def test_every_image_link_resolves():
    for page, target in _image_links():
        if "://" not in target:
            assert (page.parent / target).is_file(), f"{page.name} links to a missing image {target}"


def _nav_files():
    yaml = pytest.importorskip("yaml")

    class _Loader(yaml.SafeLoader):
        """mkdocs.yml may hold !!python/name tags (pymdownx options); treat any tag as a plain node."""

    _Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)

    def walk(entries):
        for entry in entries:
            if isinstance(entry, str):
                yield entry
            elif isinstance(entry, dict):
                for value in entry.values():
                    yield from (walk(value) if isinstance(value, list) else [value])

    return list(walk(config["nav"]))


def test_nav_lists_existing_pages_and_every_chapter():
    nav = _nav_files()
    for target in nav:
        assert (DOCS / target).is_file(), f"mkdocs.yml nav names {target}, which does not exist"
    chapters = [p.name for p in _pages() if re.match(r"\d\d-", p.name)]
    assert chapters, "no chapter pages found"
    missing = sorted(set(chapters + ["index.md"]) - set(nav))
    assert not missing, f"pages not in the mkdocs.yml nav: {missing}"


SOLUTION_LINK = re.compile(r"\[`docs/solutions/(test_ch\d\d_\w+)\.py`\]\(solutions\.md#(test_ch\d\d_\w+)\)")


def test_every_chapter_has_exercises_with_existing_solutions():
    for page in _pages():
        if not re.match(r"\d\d-", page.name):
            continue
        text = page.read_text(encoding="utf-8")
        assert "## Exercises" in text, f"{page.name} has no Exercises section"
        links = SOLUTION_LINK.findall(text)
        assert links, f"{page.name} links to no solution (\"[`docs/solutions/test_chNN_x.py`](solutions.md#test_chNN_x)\")"
        for stem, anchor in links:
            assert stem == anchor, f"{page.name}: the link to {stem}.py points at #{anchor}"
            assert (DOCS / "solutions" / f"{stem}.py").is_file(), f"{page.name} names a missing solution {stem}.py"


def test_every_solution_is_on_the_solutions_page_under_its_anchor():
    text = (DOCS / "solutions.md").read_text(encoding="utf-8")
    files = sorted((DOCS / "solutions").glob("test_ch*.py"))
    assert files
    for path in files:
        assert f"{{#{path.stem}}}" in text, f"solutions.md has no heading with the anchor #{path.stem}"
        assert f'--8<-- "solutions/{path.name}"' in text, f"solutions.md does not include {path.name}"


def test_the_site_shows_each_solutions_code(site):
    """The snippets really were included: each solution's own test names are on the built page."""
    page = (site / "solutions" / "index.html").read_text(encoding="utf-8")
    for path in sorted((DOCS / "solutions").glob("test_ch*.py")):
        assert f'id="{path.stem}"' in page, f"no anchor #{path.stem} on the built solutions page"
        tests = re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), flags=re.M)
        assert tests, f"{path.name} defines no test"
        for name in tests:
            assert name in page, f"{path.name}'s {name} is not on the built solutions page"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once with ``mkdocs build --strict`` for every test that reads it."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "index.html").is_file()
    return out


def test_mkdocs_build_strict_renders_every_formula(site):
    # Every $...$ must have become a MathJax span: a dollar sign left in the
    # prose means arithmatex did not see the math (e.g. display math indented
    # inside a list item), and the reader would get raw LaTeX.
    for page in sorted(site.glob("**/index.html")):
        text = page.read_text(encoding="utf-8")
        for pattern in (r'<span class="arithmatex">.*?</span>', r'<div class="arithmatex">.*?</div>',
                        r"<code>.*?</code>", r"<pre.*?</pre>", r"<script.*?</script>"):
            text = re.sub(pattern, "", text, flags=re.S)
        assert "$" not in text, f"unrendered math in {page.relative_to(site)}: ...{text[text.index('$') - 60:text.index('$') + 60]}..."
        # A bullet left at the start of a line of prose is a list the Markdown
        # parser did not see (a continuation indented too little, a missing blank line).
        broken = re.search(r"^\* .{0,60}", text, flags=re.M)
        assert not broken, f"a broken list in {page.relative_to(site)}: {broken.group(0)}"


# <link rel=...> values that name another page rather than load something into this one.
_NAVIGATION_RELS = {"alternate", "author", "canonical", "help", "license", "next", "prev", "search"}
_EXTERNAL = re.compile(r"^\s*(https?:)?//", re.I)  # http://, https:// and protocol-relative //host
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""", re.I)


class _AssetCollector(HTMLParser):
    """Everything a page makes the browser fetch: scripts, stylesheets, fonts, images, frames."""

    def __init__(self):
        super().__init__()
        self.assets = []  # (tag, url)
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = {name: value or "" for name, value in attrs}
        if tag == "script" and attrs.get("src"):
            self.assets.append(("script", attrs["src"]))
        elif tag == "link" and attrs.get("href"):
            rels = set(attrs.get("rel", "").lower().split())
            if not rels or not rels <= _NAVIGATION_RELS:
                self.assets.append((f"link rel={attrs.get('rel', '')}", attrs["href"]))
        elif tag in ("img", "source", "iframe", "audio", "video", "embed", "track", "input") and attrs.get("src"):
            self.assets.append((tag, attrs["src"]))
        elif tag == "object" and attrs.get("data"):
            self.assets.append((tag, attrs["data"]))
        if attrs.get("srcset"):
            self.assets += [(f"{tag} srcset", part.split()[0]) for part in attrs["srcset"].split(",") if part.strip()]
        if attrs.get("style"):
            self.assets += [(f"{tag} style", url) for url in _css_urls(attrs["style"])]
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.assets += [("style", url) for url in _css_urls(data)]


def _css_urls(css):
    return [first or second for first, second in _CSS_URL.findall(css)]


def test_no_page_loads_anything_from_another_host(site):
    """Offline, the site works: MathJax, its fonts and the theme's fonts are served by the site itself."""
    pages = sorted(site.glob("**/*.html"))
    stylesheets = sorted(site.glob("**/*.css"))
    assert pages and stylesheets
    external, local_scripts = [], set()
    for page in pages:
        collector = _AssetCollector()
        collector.feed(page.read_text(encoding="utf-8"))
        for tag, url in collector.assets:
            if _EXTERNAL.match(url):
                external.append(f"{page.relative_to(site)}: <{tag}> {url}")
            elif tag == "script":
                path = url.split("?")[0]  # 404.html links from the root: "/assets/..."
                local_scripts.add(((site / path.lstrip("/")) if path.startswith("/") else (page.parent / path)).resolve())
    for sheet in stylesheets:
        for url in _css_urls(sheet.read_text(encoding="utf-8", errors="replace")):
            if _EXTERNAL.match(url):
                external.append(f"{sheet.relative_to(site)}: url({url})")
    assert not external, "assets loaded from another host:\n" + "\n".join(sorted(set(external))[:20])
    # The math is typeset by the vendored MathJax, which every page loads from the site.
    mathjax = (site / "javascripts" / "mathjax" / "tex-chtml.js").resolve()
    assert mathjax in local_scripts, "no page loads the vendored MathJax"
    for script in local_scripts:
        assert script.is_file(), f"a page loads {script}, which the build did not produce"


def test_vendored_mathjax_has_every_font_it_asks_for(site):
    """CommonHTML output fetches woff files next to tex-chtml.js; a missing one shows as boxes, silently."""
    root = site / "javascripts" / "mathjax"
    script = (root / "tex-chtml.js").read_text(encoding="utf-8")
    fonts = set(re.findall(r"MathJax_[A-Za-z0-9]+-[A-Za-z]+\.woff", script))
    assert len(fonts) > 10, "the font names were not found in tex-chtml.js; the pattern or the file changed"
    folder = root / "output" / "chtml" / "fonts" / "woff-v2"
    missing = sorted(name for name in fonts if not (folder / name).is_file())
    assert not missing, f"fonts MathJax asks for but the site lacks: {missing}"
    assert (root / "LICENSE").is_file() and (root / "VERSION.txt").is_file()


# "Rafailov et al. 2023", "Press & Wolf 2017", "Bradley and Terry (1952", "Williams 1992";
# a year followed by a dash or a digit is a date or a number, not a citation.
CITATION = re.compile(r"\b([A-Z][a-zA-Z'-]+(?: et al\.| (?:&|and) [A-Z][a-zA-Z'-]+)?),? \(?((?:19|20)\d\d)\b(?![-\d])")


def _cited(text):
    return {f"{name.replace(' and ', ' & ')} {year}" for name, year in CITATION.findall(text)}


def test_every_citation_has_a_reference():
    references = (DOCS / "references.md").read_text(encoding="utf-8")
    sources = [p for p in _pages() if p.name != "references.md"]
    sources += sorted((DOCS / "solutions").glob("*.py")) + sorted((ROOT / "alignment_np").rglob("*.py"))
    cited = {}
    for path in sources:
        for key in _cited(path.read_text(encoding="utf-8")):
            cited.setdefault(key, path.relative_to(ROOT).as_posix())
    assert "Rafailov et al. 2023" in cited, "the citation pattern no longer finds the course's citations"
    missing = {key: where for key, where in cited.items() if key not in references}
    assert not missing, f"cited but not in docs/references.md (first place cited): {missing}"


# At 1280 pixels, with the navigation and the table of contents beside it, a
# code block of the Material theme shows about 90 characters before it scrolls.
CODE_LINE_LIMIT = 88
FENCE = re.compile(r"^(`{3,}|~{3,})")


def _code_lines(path):
    """(line number, line) of every line inside a fenced code block of a Markdown page."""
    inside, fence = False, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        opening = FENCE.match(line.lstrip())
        if opening and (not inside or opening.group(1).startswith(fence)):
            inside, fence = (not inside), opening.group(1)
            continue
        if inside:
            yield number, line


def test_code_blocks_of_the_course_fit_without_scrolling():
    # The chapters (NN-*.md, today's and those to come) and the course's other pages.
    pages = [p for p in _pages() if re.match(r"\d\d-", p.name)]
    pages += [DOCS / name for name in ("index.md", "notation.md", "references.md", "glossary.md",
                                       "further-reading.md", "solutions.md") if (DOCS / name).is_file()]
    assert len(pages) >= 9
    too_long = [f"{page.name}:{number} ({len(line)} characters): {line.strip()[:60]}..."
                for page in pages for number, line in _code_lines(page) if len(line) > CODE_LINE_LIMIT]
    assert not too_long, f"code lines over {CODE_LINE_LIMIT} characters:\n" + "\n".join(too_long)


FILE_NAME = re.compile(r"[\w.-]+(?:/[\w.-]+)*\.(?:py|md|jsonl?|npz|png|yml|cfg|toml)\b")


def test_file_names_in_tables_are_code_spans_that_do_not_break(site):
    """A path in a table is a code span, and code spans in tables do not wrap mid-name."""
    css = (DOCS / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    rule = re.search(r"\.md-typeset table:not\(\[class\]\) code\s*\{([^}]*)\}", css)
    assert rule and "white-space: nowrap" in rule.group(1)
    bare = []
    for page in sorted(site.glob("**/index.html")):
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", page.read_text(encoding="utf-8"), flags=re.S):
            outside_code = re.sub(r"<code>.*?</code>|<a [^>]*>|</a>|<[^>]+>", " ", cell, flags=re.S)
            bare += [f"{page.parent.name}: {name}" for name in FILE_NAME.findall(outside_code)]
    assert not bare, "file names in table cells outside a code span:\n" + "\n".join(bare[:20])
