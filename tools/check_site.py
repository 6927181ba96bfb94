"""Check the offline docs site: a page for every notebook, nothing loaded from the network, and (with Chromium)
screenshots that are not blank and math that KaTeX rendered.

    python tools/check_site.py                          # check _site/ against nbs/
    python tools/check_site.py --screenshots shots/     # also serve it on localhost and screenshot two pages
"""

import argparse
import contextlib
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REMOTE = re.compile(r"^\s*(?:[a-zA-Z][a-zA-Z0-9+.-]*:)?//", re.I)  # http://, https://, ws://, protocol-relative //
CSS_URL = re.compile(r"""(?:@import\s+(?:url\()?|url\()\s*['"]?([^'")\s]+)""", re.I)
# <link rel=...> values that only name a page (not loaded by the browser)
LINK_NOT_LOADED = {"canonical", "alternate", "author", "license", "me", "help", "search", "next", "prev", "bookmark", "external"}
ASSET_ATTRS = {"script": ["src"], "img": ["src", "srcset"], "iframe": ["src"], "frame": ["src"], "embed": ["src"], "object": ["data"],
               "audio": ["src"], "video": ["src", "poster"], "source": ["src", "srcset"], "track": ["src"], "input": ["src"], "image": ["href", "xlink:href"],
               "use": ["href", "xlink:href"]}


def notebooks(nbs: Path) -> list[Path]:
    "The notebooks nbdev documents: every .ipynb under nbs/ outside folders and files named with `_` or `.`."
    found = []
    for p in sorted(nbs.rglob("*.ipynb")):
        rel = p.relative_to(nbs)
        if not any(part.startswith(("_", ".")) for part in rel.parts):
            found.append(rel)
    return found


def missing_pages(site: Path, nbs: Path) -> list[str]:
    "The notebooks that have no page in the site."
    return [str(rel) for rel in notebooks(nbs) if not (site / rel.with_suffix(".html")).is_file()]


class AssetFinder(HTMLParser):
    "Collects every URL a page makes the browser load: scripts, stylesheets, icons, pictures, frames, inline CSS."

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str]] = []  # (tag, url)
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "link":
            rels = set(a.get("rel", "").lower().split())
            if a.get("href") and not (rels and rels <= LINK_NOT_LOADED):
                self.urls.append(("link", a["href"]))
        for attr in ASSET_ATTRS.get(tag, []):
            if a.get(attr):
                urls = [u.strip().split(" ")[0] for u in a[attr].split(",")] if attr == "srcset" else [a[attr]]
                self.urls += [(tag, u) for u in urls]
        if a.get("style"):
            self.urls += [(f"{tag} style", u) for u in CSS_URL.findall(a["style"])]
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.urls += [("style", u) for u in CSS_URL.findall(data)]


def remote_assets(site: Path) -> list[str]:
    "Every place a page or a stylesheet of the site loads something from the network, as 'file: tag url'."
    bad = []
    for page in sorted(site.rglob("*.html")):
        finder = AssetFinder()
        finder.feed(page.read_text(encoding="utf-8", errors="replace"))
        bad += [f"{page.relative_to(site)}: <{tag}> {url}" for tag, url in finder.urls if REMOTE.match(url)]
    for css in sorted(site.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        bad += [f"{css.relative_to(site)}: css {url}" for url in CSS_URL.findall(text) if REMOTE.match(url)]
    return bad


def math_page(site: Path) -> Path | None:
    "The first chapter page (not the index) with math on it, else the first chapter page."
    pages = [p for p in sorted(site.glob("*.html")) if p.name not in ("index.html", "404.html")]
    with_math = [p for p in pages if 'class="math' in p.read_text(encoding="utf-8", errors="replace")]
    return (with_math or pages or [None])[0]


# ---------------------------------------------------------------- the browser

def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@contextlib.contextmanager
def serve(directory: Path):
    "Serve a folder on 127.0.0.1 on a free port, in a thread; yields the base URL."
    handler = functools.partial(QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def chromium(browser: str, args: list[str], timeout: int = 120, budget_ms: int = 10000) -> subprocess.CompletedProcess:
    "Run headless Chromium with a fresh profile and no background traffic (the machine has no network); scripts get `budget_ms` of virtual time."
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
               "--disable-background-networking", "--no-first-run", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(browser: str, url: str, png: Path, size: str = "1280,1600") -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    r = chromium(browser, [f"--screenshot={png}", f"--window-size={size}", url])
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url} (exit {r.returncode}):\n{r.stderr[-2000:]}")


def dump_dom(browser: str, url: str) -> str:
    "The page's DOM after its scripts ran (KaTeX's auto-render replaces the TeX with its own markup)."
    r = chromium(browser, ["--dump-dom", url])
    if r.returncode or not r.stdout.strip():
        raise RuntimeError(f"chromium could not load {url} (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout


def blank_reason(png: Path) -> str | None:
    "Why a screenshot looks blank, or None: too few colours, or almost every pixel the same as the background."
    from PIL import Image  # Pillow comes with matplotlib (the dev extra)

    with Image.open(png) as im:
        rgb = im.convert("RGB")
        rgb.thumbnail((640, 800))
        colours = rgb.getcolors(maxcolors=1 << 20) or []
    total = sum(n for n, _ in colours)
    background = max(colours)[0] if colours else total
    other = 1 - background / max(total, 1)
    if len(colours) < 16:
        return f"only {len(colours)} distinct colours"
    if other < 0.02:
        return f"only {other:.1%} of the pixels differ from the background"
    return None


def check_browser(site: Path, out: Path, browser: str) -> list[str]:
    "Screenshot the index and a chapter with math over http://127.0.0.1; return the problems found."
    problems = []
    chapter = math_page(site)
    # the chapter's window is tall, so its first plots are in the picture too
    targets = [("index", site / "index.html", "1280,1600")] + ([("chapter", chapter, "1280,4800")] if chapter else [])
    if chapter is None:
        problems.append("no chapter page to screenshot")
    with serve(site) as base:
        for name, page, size in targets:
            rel = page.relative_to(site).as_posix()
            png = out / f"{name}-{page.stem}.png"
            screenshot(browser, base + rel, png, size)
            reason = blank_reason(png)
            print(f"check_site: screenshot {png} of {rel}: {'BLANK: ' + reason if reason else 'ok'}")
            if reason:
                problems.append(f"{png} looks blank: {reason}")
            if 'class="math' in page.read_text(encoding="utf-8", errors="replace"):
                dom = dump_dom(browser, base + rel)
                rendered = dom.count('class="katex"') + dom.count('class="katex-display"')
                print(f"check_site: {rel}: {rendered} formulas rendered by KaTeX")
                if 'class="katex' not in dom:
                    problems.append(f"{rel} has math but KaTeX rendered none of it (is site_libs/katex there?)")
    return problems


def check(site: Path, nbs: Path, screenshots: Path | None = None) -> list[str]:
    "Every problem with the site, as messages; empty when it is good."
    if not (site / "index.html").is_file():
        return [f"{site} has no index.html: build it with `python tools/build_docs.py`"]
    problems = [f"{nb} has no page in {site} (expected {Path(nb).with_suffix('.html')})" for nb in missing_pages(site, nbs)]
    problems += [f"remote asset: {r}" for r in remote_assets(site)]
    n_pages = len(list(site.rglob("*.html")))
    print(f"check_site: {n_pages} pages, {len(notebooks(nbs))} notebooks in {nbs}")
    if screenshots is not None:
        browser = find_chromium()
        if browser is None:
            problems.append("no Chromium found for the screenshots: install it (Debian: apt-get install chromium)")
        else:
            problems += check_browser(site, screenshots, browser)
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check the offline docs site.")
    p.add_argument("site", nargs="?", default=str(ROOT / "_site"), help="the built site")
    p.add_argument("--nbs", default=str(ROOT / "nbs"), help="the notebooks that must each have a page")
    p.add_argument("--screenshots", default=None, help="a folder: serve the site on localhost and screenshot it there with headless Chromium")
    args = p.parse_args(argv)
    problems = check(Path(args.site), Path(args.nbs), Path(args.screenshots) if args.screenshots else None)
    for msg in problems:
        print(f"check_site: FAIL: {msg}", file=sys.stderr)
    if not problems:
        print("check_site: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
