"Tests of the project's tools: the README generator and the offline docs build and its checks."

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_docs  # noqa: E402
import check_site  # noqa: E402
import readme  # noqa: E402


def nb(*cells):
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def md(src):
    return {"cell_type": "markdown", "metadata": {}, "source": src}


def code(src, *outputs):
    return {"cell_type": "code", "metadata": {}, "source": src, "outputs": list(outputs), "execution_count": None}


def test_readme_is_up_to_date():
    "README.md is what nbs/index.ipynb gives (run `python tools/readme.py` after editing the index)."
    assert (ROOT / "README.md").read_text(encoding="utf-8") == readme.render(ROOT / "nbs" / "index.ipynb")


def test_readme_cells():
    book = nb(
        md("# Title\n\n> summary\n\nSee [the config](00_config.ipynb#presets), [web](https://x.org/a.ipynb) and [top](#title)."),
        code("#| hide\nimport secret", {"output_type": "stream", "name": "stdout", "text": "hidden\n"}),
        code("#| default_exp thing"),
        code("print(1 + 1)", {"output_type": "stream", "name": "stdout", "text": "2\n"}),
        code("x = 3\nx", {"output_type": "execute_result", "data": {"text/plain": "3"}, "metadata": {}, "execution_count": 1}),
        code("#| echo: false\nshow()", {"output_type": "display_data", "data": {"text/markdown": "**bold**"}, "metadata": {}}),
        code("#| output: false\nnoisy()", {"output_type": "stream", "name": "stdout", "text": "noise\n"}),
        code("plot()", {"output_type": "display_data", "data": {"image/png": "AAAA", "text/plain": "<Figure>"}, "metadata": {}}),
    )
    out = readme.notebook_to_markdown(book, "nbs")
    assert out.startswith("# Title\n\n> summary\n")
    assert "[the config](nbs/00_config.ipynb#presets)" in out
    assert "[web](https://x.org/a.ipynb)" in out and "[top](#title)" in out
    assert "secret" not in out and "hidden" not in out and "default_exp" not in out
    assert "```python\nprint(1 + 1)\n```\n\n```\n2\n```" in out
    assert "```python\nx = 3\nx\n```\n\n```\n3\n```" in out
    assert "show()" not in out and "**bold**" in out
    assert "noisy()" in out and "noise" not in out
    assert "<Figure>" not in out  # a picture is not text


def test_readme_check_fails_when_stale(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    (nbs / "index.ipynb").write_text(json.dumps(nb(md("# T\n\n[00 a](00_a.ipynb)"))))
    (nbs / "00_a.ipynb").write_text(json.dumps(nb()))
    args = ["--nb", str(nbs / "index.ipynb"), "--out", str(tmp_path / "README.md")]
    assert readme.main(args + ["--check"]) == 1  # no README yet
    assert readme.main(args) == 0
    assert readme.main(args + ["--check"]) == 0
    (nbs / "01_b.ipynb").write_text(json.dumps(nb()))  # a chapter the course map does not link
    assert readme.main(args + ["--check"]) == 1


def test_sync_course_map(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    table = "| chapter | module |\n|---|---|\n| [00 config](00_config.ipynb) | `config` |\n| 01 corpus | `corpus` |\n| 02a tok | `tok` |\n"
    (nbs / "index.ipynb").write_text(json.dumps(nb(md("# T"), md(table))))
    (nbs / "01_corpus.ipynb").write_text(json.dumps(nb()))
    (nbs / "02a_tokenizer.ipynb").write_text(json.dumps(nb()))
    assert readme.sync_course_map(nbs / "index.ipynb")
    got = readme.cell_source(json.loads((nbs / "index.ipynb").read_text())["cells"][1])
    assert got == "| chapter | module |\n|---|---|\n| 00 config | `config` |\n| [01 corpus](01_corpus.ipynb) | `corpus` |\n| [02a tok](02a_tokenizer.ipynb) | `tok` |\n"
    assert readme.course_map_problems(nbs / "index.ipynb") == []
    assert not readme.sync_course_map(nbs / "index.ipynb")  # nothing left to change


PAGE = """<html><head>
<link rel="stylesheet" href="site_libs/x.css"><link rel="canonical" href="https://example.org/page.html">
<link rel="stylesheet" href="https://cdn.example.org/y.css"><script src="//cdn.example.org/z.js"></script>
<style>@import url("https://fonts.example.org/f.css");</style></head>
<body><a href="https://github.com/x">a link is fine</a><img src="pic.png"><img srcset="a.png 1x, https://e.org/b.png 2x">
<iframe src="http://e.org/frame"></iframe><div style="background: url('https://e.org/bg.png')"></div></body></html>"""


def test_remote_assets(tmp_path):
    (tmp_path / "index.html").write_text(PAGE)
    (tmp_path / "site_libs").mkdir()
    (tmp_path / "site_libs" / "x.css").write_text("@import url(https://fonts.googleapis.com/css2?family=A);a{background:url(data:image/png;base64,AA)}")
    found = check_site.remote_assets(tmp_path)
    urls = sorted(f.rsplit(" ", 1)[1] for f in found)
    assert urls == sorted(["https://cdn.example.org/y.css", "//cdn.example.org/z.js", "https://fonts.example.org/f.css", "https://e.org/b.png",
                           "http://e.org/frame", "https://e.org/bg.png", "https://fonts.googleapis.com/css2?family=A"])


def test_missing_pages(tmp_path):
    nbs, site = tmp_path / "nbs", tmp_path / "site"
    for p in ["index.ipynb", "00_a.ipynb", "sub/01_b.ipynb", "_skip.ipynb", ".hidden/x.ipynb"]:
        (nbs / p).parent.mkdir(parents=True, exist_ok=True)
        (nbs / p).write_text("{}")
    (site / "sub").mkdir(parents=True)
    (site / "index.html").write_text("")
    (site / "sub" / "01_b.html").write_text("")
    assert check_site.missing_pages(site, nbs) == ["00_a.ipynb"]


def test_blank_screenshots(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    blank = tmp_path / "blank.png"
    PIL.new("RGB", (400, 300), "white").save(blank)
    assert "distinct colours" in check_site.blank_reason(blank)
    page = PIL.new("RGB", (400, 300), "white")
    from PIL import ImageDraw

    draw = ImageDraw.Draw(page)
    for i in range(40):
        draw.rectangle([10 + 9 * i, 20, 16 + 9 * i, 280], fill=(6 * i, 255 - 6 * i, 100))
    page.save(tmp_path / "page.png")
    assert check_site.blank_reason(tmp_path / "page.png") is None


def test_localise_katex_and_fonts(tmp_path):
    dist = tmp_path / "dist"
    (dist / "contrib").mkdir(parents=True)
    (dist / "fonts").mkdir()
    for f in ["katex.min.css", "katex.min.js", "contrib/auto-render.min.js", "fonts/KaTeX_Main-Regular.woff2"]:
        (dist / f).write_text("/* katex */")
    site = tmp_path / "site"
    (site / "guide").mkdir(parents=True)
    head = '<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/katex@0.16.11/dist/katex.min.css"><script src="https://cdn.jsdelivr.net/npm/katex@0.16.11/dist/contrib/auto-render.min.js"></script>'
    (site / "a.html").write_text(head)
    (site / "guide" / "b.html").write_text(head)
    (site / "plain.html").write_text("<p>no math</p>")
    assert build_docs.localise_katex(site, dist) == 2
    assert 'href="site_libs/katex/katex.min.css"' in (site / "a.html").read_text()
    assert 'src="../site_libs/katex/contrib/auto-render.min.js"' in (site / "guide" / "b.html").read_text()
    assert (site / "site_libs/katex/fonts/KaTeX_Main-Regular.woff2").is_file()
    (site / "site_libs" / "themes").mkdir(parents=True)
    theme = site / "site_libs" / "themes" / "cosmo.min.css"
    theme.write_text('@import url(https://fonts.googleapis.com/css2?family=Source+Sans+Pro:wght@300;400;700&display=swap);:root{--x:1}')
    assert len(build_docs.strip_web_fonts(site)) == 1
    assert theme.read_text() == ":root{--x:1}"
    assert check_site.remote_assets(site) == []
