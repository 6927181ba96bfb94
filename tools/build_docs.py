"""Build the docs site offline, with no Quarto: `nbdev-proc-nbs`, then smalldocs, then a local KaTeX.

    pip install -c constraints.txt -e ".[dev,docs]"
    python tools/build_docs.py                 # writes _site/ and checks it
    python -m http.server -d _site 8000        # then browse http://localhost:8000

Steps:
1. `nbdev-proc-nbs` processes nbs/ into _proc/ as `nbdev-docs` would (hidden cells dropped, `show_doc` rendered,
   the sidebar written). nbdev insists on finding Quarto first and would download it; when none is installed,
   a stand-in `quarto` that only fails is put on PATH for that step (nbdev only checks that one exists).
   The sidebar nbdev wrote into _proc/ is then labelled with the chapter numbers (`01 · Corpus`).
2. smalldocs renders _proc/ (its _quarto.yml) to HTML.
3. smalldocs points KaTeX at a CDN; the pages are rewritten to a copy in `site_libs/katex`, taken from the
   `katex` npm package pinned in package-lock.json (installed with `npm ci` when node_modules/ lacks it).
   The theme's `@import` of Google Fonts is dropped: the theme falls back to the system's fonts.
4. tools/check_site.py: every notebook has a page, and no page or stylesheet loads anything from the network;
   a broken link between pages fails too. A `$` left in prose (math the parser did not take) is a warning.
"""

import argparse
import html
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml  # comes with smalldocs and nbdev

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_site  # noqa: E402

KATEX_CDN = re.compile(r"https://cdn\.jsdelivr\.net/npm/katex@[^/\"']+/dist/")
KATEX_FILES = ["katex.min.css", "katex.min.js", "contrib/auto-render.min.js", "fonts"]
WEB_FONT_IMPORT = re.compile(r"@import\s+url\(\s*['\"]?(?:https?:)?//[^)]*\)\s*;?")  # Bootswatch themes import Google Fonts
CHAPTER = re.compile(r"^(\d+[a-z]?)_")
NO_QUARTO = """#!/bin/sh
echo "quarto is not installed: tools/build_docs.py renders the docs with smalldocs instead" >&2
exit 1
"""


def say(msg: str) -> None:
    print(f"build_docs: {msg}", flush=True)


def venv_tool(name: str) -> str:
    "A console script of the running Python's environment, else the one on PATH."
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        sys.exit(f"build_docs: `{name}` not found: install the extras with pip install -e \".[dev,docs]\"")
    return found


def ensure_katex(root: Path) -> Path:
    "The folder of KaTeX's dist files, installing the pinned npm package with `npm ci` when it is missing."
    dist = root / "node_modules" / "katex" / "dist"
    if not (dist / "katex.min.js").is_file():
        npm = shutil.which("npm")
        if npm is None:
            sys.exit("build_docs: KaTeX is not in node_modules/ and npm is not installed: install Node.js and npm, then run again")
        say("installing KaTeX from package-lock.json with npm ci")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=root, check=True)
    if not (dist / "katex.min.js").is_file():
        sys.exit(f"build_docs: npm ci did not install {dist}/katex.min.js")
    return dist


def proc_nbs(root: Path) -> Path:
    "Run `nbdev-proc-nbs` (with a stand-in `quarto` when there is none) and return the processed folder."
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="no-quarto-") as stub:
        if shutil.which("quarto") is None:
            fake = Path(stub) / "quarto"
            fake.write_text(NO_QUARTO)
            fake.chmod(0o755)
            env["PATH"] = stub + os.pathsep + env.get("PATH", "")
        # --file-re keeps the sidebar to pages: without it nbdev-proc-nbs lists every file of nbs/ in it
        r = subprocess.run([venv_tool("nbdev-proc-nbs"), "--file-re", r"\.(?:ipynb|qmd)$"], cwd=root, env=env)
    if r.returncode:
        sys.exit("build_docs: nbdev-proc-nbs failed (see 'Error in notebook ... in cell N' above). To render show_doc, nbdev runs\n"
                 "only the cells that import something (and the show_doc and export cells), from the repository's root: a cell\n"
                 "that mixes imports with other code runs without the variables of the cells skipped. Keep imports in cells of\n"
                 "their own and use no path relative to nbs/ there (nbdev's warning 'Found cells containing imports and other\n"
                 "code' names such cells).")
    proc = root / "_proc"
    if not (proc / "_quarto.yml").is_file():
        sys.exit(f"build_docs: nbdev-proc-nbs wrote no {proc}/_quarto.yml")
    return proc


def notebook_title(nb: Path) -> str | None:
    "The `# Title` of a notebook's first markdown cell."
    cells = json.loads(nb.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            src = "".join(cell.get("source", []))
            m = re.search(r"^#\s+(.+?)\s*$", src, re.M)
            return m.group(1) if m else None
    return None


def number_sidebar(proc: Path, nbs: Path) -> None:
    "Show each chapter's number in the sidebar nbdev wrote (`01 · Corpus`), so the course reads in order."

    def label(entries: list) -> list:
        out = []
        for e in entries:
            if isinstance(e, dict) and isinstance(e.get("contents"), list):
                e = {**e, "contents": label(e["contents"])}
            elif isinstance(e, str) and CHAPTER.match(Path(e).name) and (nbs / e).is_file():
                title = notebook_title(nbs / e)
                if title:
                    e = {"href": e, "text": f"{CHAPTER.match(Path(e).name).group(1)} · {title}"}
            out.append(e)
        return out

    path = proc / "sidebar.yml"
    if not path.is_file():
        return
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    bar = (data.get("website") or {}).get("sidebar") or {}
    if isinstance(bar.get("contents"), list):
        bar["contents"] = label(bar["contents"])
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def render(proc: Path, quiet: bool) -> tuple[Path, list[str]]:
    "Render the processed notebooks with smalldocs; return the output folder and the warnings."
    from smalldocs.site import build

    site = build(proc, quiet=quiet)
    return site.out, list(site.warnings)


def localise_katex(site: Path, dist: Path) -> int:
    "Copy KaTeX into site_libs/katex and point every page at it; return how many pages use it."
    dest = site / "site_libs" / "katex"
    shutil.rmtree(dest, ignore_errors=True)
    for name in KATEX_FILES:
        src = dist / name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / name)
    n = 0
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        if KATEX_CDN.search(text):
            rel = posixpath.relpath("site_libs/katex", page.parent.relative_to(site).as_posix() or ".") + "/"
            page.write_text(KATEX_CDN.sub(rel, text), encoding="utf-8")
            n += 1
    return n


def strip_web_fonts(site: Path) -> list[str]:
    "Drop a theme's `@import` of web fonts from the network (the theme falls back to the system's fonts)."
    dropped = []
    for css in (site / "site_libs").rglob("*.css"):
        text = css.read_text(encoding="utf-8")
        found = WEB_FONT_IMPORT.findall(text)
        if found:
            css.write_text(WEB_FONT_IMPORT.sub("", text), encoding="utf-8")
            dropped += [f"{css.relative_to(site)}: {f}" for f in found]
    return dropped


NOT_PROSE = re.compile(r"<(pre|code|script|style)\b.*?</\1>|<span class=\"math [^\"]*\">.*?</span>", re.S | re.I)


def stray_dollars(site: Path) -> list[str]:
    "Prose that still holds a `$` after rendering: math the Markdown parser did not take (e.g. `$x $`, a space before the closing `$`)."
    found = []
    for page in sorted(site.rglob("*.html")):
        main = page.read_text(encoding="utf-8")
        body = main[main.find("<main"):] if "<main" in main else main
        text = html.unescape(re.sub(r"<[^>]+>", " ", NOT_PROSE.sub(" ", body)))
        last = -100
        for m in re.finditer(r"\$", text):
            if m.start() - last < 60:  # the closing `$` of the same stray pair
                continue
            last = m.start()
            found.append(f"{page.relative_to(site)}: ...{' '.join(text[max(0, m.start() - 40):m.end() + 40].split())}...")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the docs site offline into _site/ (no Quarto, local KaTeX) and check it.")
    p.add_argument("--out", default=str(ROOT / "_site"), help="where to write the site (default _site/)")
    p.add_argument("--no-check", action="store_true", help="skip the checks (a page per notebook, no remote assets)")
    p.add_argument("--screenshots", default=None, help="also screenshot the site with headless Chromium into this folder")
    p.add_argument("--quiet", action="store_true", help="print less")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()

    dist = ensure_katex(ROOT)
    proc = proc_nbs(ROOT)
    number_sidebar(proc, ROOT / "nbs")
    say(f"processed notebooks into {proc.relative_to(ROOT)}/; rendering with smalldocs")
    built, warnings = render(proc, args.quiet)
    for w in warnings:
        say(f"warning: {w}")
    if built != out:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(built, out)
        shutil.rmtree(built, ignore_errors=True)
    n = localise_katex(out, dist)
    for f in strip_web_fonts(out):
        say(f"dropped a web font import (no network): {f}")
    say(f"wrote {len(list(out.rglob('*.html')))} pages to {out}; {n} with math, served by the local KaTeX")

    for w in stray_dollars(out):
        say(f"warning: a $ that is not math (a space after the opening or before the closing $?): {w}")
    problems = [w for w in warnings if "broken link" in w]
    if not args.no_check:
        problems += check_site.check(out, ROOT / "nbs", Path(args.screenshots) if args.screenshots else None)
    for msg in problems:
        print(f"build_docs: FAIL: {msg}", file=sys.stderr)
    if problems:
        return 1
    say(f"ok: browse it with `python -m http.server -d {os.path.relpath(out)} 8000` and http://localhost:8000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
