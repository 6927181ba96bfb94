"`minimind_tool_results` end to end, shrunk (`--scale`): chapter 15b's minimind-3 chain (tiny3 with minimind-3's course tokenizer: pretrain, SFT, tool SFT) trains from a cold cache and is measured; bad flags."
import json

from helpers import run
from minimind.config import MiniMindConfig
from minimind.tokenizer import MINIMIND3_CHAT_TEMPLATE, load_tokenizer

RESULTS = 'minimind.tools:minimind_tool_results'


def test_shrunk_minimind3_chain_end_to_end(tmp_path):
    out, root = tmp_path / 'tools.json', tmp_path / 'cache'
    r = run(RESULTS, '--out', out, '--root', root, '--family', 'minimind3', '--scale', '0.01', '--n-per-kind', '2', '--no-progress',
            timeout=900, cache=tmp_path / 'tokens')
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads(out.read_text())
    assert res['command'] == 'minimind_tool_results --n-per-kind 2 --family minimind3 --scale 0.01' and res['scale'] == 0.01
    assert set(res['models']) == {'sft3', 'tools3'} and set(res['stages']) == {'tools3'}
    for m in res['models'].values():
        assert m['effect']['n'] == 10 and 0 <= m['alone'] <= 1 and 0 <= m['with_tools'] <= 1 and set(m['by_kind']) == {'age', 'lives_in', 'job', 'pet', 'sum'}
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ['pretrain3', 'sft3', 'tools3']   # MiniMind2's chain untouched
    for stage in ('pretrain3', 'sft3', 'tools3'):
        assert MiniMindConfig.load(root / stage).family == 'minimind3', stage
        assert load_tokenizer(root / stage).chat_template == MINIMIND3_CHAT_TEMPLATE, stage
        recipe = json.loads((root / stage / 'course_run.json').read_text())
        assert len(recipe['tokenizer']) == 12 and recipe['scale'] == 0.01, stage
    assert 'tools3: alone' in r.stdout and f'results in {out}' in r.stdout


def test_bad_flags(tmp_path):
    for flags, says in ((('--family', 'minimind9'), '--family'), (('--scale', '2'), '--scale'), (('--n-per-kind', '1'), '--n-per-kind'),
                        (('--out', tmp_path), 'a folder')):
        r = run(RESULTS, *flags)
        assert r.returncode == 2 and says in r.stderr and 'Traceback' not in r.stderr, (flags, r.stderr)
