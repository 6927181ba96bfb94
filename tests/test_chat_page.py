"""minimind_serve's chat page in headless Chromium (tools/check_chat_page.py): the page passes, and the check fails
when the page breaks (a console error planted in it, or a page that never shows a reply). CI runs the same check
after installing Chromium (.ci/run, phase 8); here it is skipped where no Chromium is installed."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'tools'))
from check_site import find_chromium   # noqa: E402
import check_chat_page   # noqa: E402

pytestmark = pytest.mark.skipif(find_chromium() is None, reason='no Chromium installed (Debian: apt-get install chromium)')


def test_the_page_streams_a_reply_and_runs_a_tool_round_trip(tmp_path):
    assert check_chat_page.check(tmp_path, find_chromium()) == []
    assert {p.name for p in tmp_path.iterdir()} == {'chat_page.png', 'chat_page_tools.png'}


def test_a_console_error_on_the_page_fails_the_check(tmp_path, monkeypatch):
    import minimind.serve as serve
    broken = tmp_path / 'chat.html'
    broken.write_text(serve.CHAT_PAGE.read_text().replace('start();', 'start(); console.error("planted error");'))
    monkeypatch.setattr(serve, 'CHAT_PAGE', broken)
    problems = check_chat_page.check(tmp_path / 'shots', find_chromium(), timeout=15)
    assert any('planted error' in p for p in problems), problems


def test_a_page_that_shows_no_reply_fails_the_check(tmp_path, monkeypatch):
    import minimind.serve as serve
    silent = tmp_path / 'chat.html'
    silent.write_text(serve.CHAT_PAGE.read_text().replace('if (params.has("ask")) await send(params.get("ask"));', ''))
    monkeypatch.setattr(serve, 'CHAT_PAGE', silent)
    problems = check_chat_page.check(tmp_path / 'shots', find_chromium(), timeout=5)
    assert any('plain chat' in p for p in problems) and any('tool chat' in p for p in problems), problems
