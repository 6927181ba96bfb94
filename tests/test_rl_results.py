"`minimind_rl_results` end to end, shrunk (`--scale`): every run of chapters 15c-15e trains from a cold cache and is measured against its starting model; bad flags."
import json

from helpers import run

RESULTS = 'minimind.agent:minimind_rl_results'


def test_shrunk_family_end_to_end(tmp_path):
    out = tmp_path / 'rl.json'
    r = run(RESULTS, '--out', out, '--root', tmp_path / 'cache', '--scale', '0.005', '--limit', '4', '--n-per-kind', '2', '--no-progress',
            timeout=900, cache=tmp_path / 'tokens')
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads(out.read_text())
    assert set(res['stages']) == {'grpo-2', 'cispo', 'ppo', 'spo', 'agent'} and res['scale'] == 0.005
    assert res['command'] == 'minimind_rl_results --limit 4 --n-per-kind 2 --scale 0.005'
    for name, st in res['stages'].items():
        m = st['metrics'][st['primary']]
        assert m['n'] == 4 and 0 <= m['before'] <= 1 and 0 <= m['after'] <= 1, (name, m)
        assert st['recipe']['scale'] == 0.005 and 'reward' in st['curves'], name
    assert 'explained_variance' in res['stages']['ppo']['curves'] and 'kept' in res['stages']['cispo']['curves']
    assert 'baseline' in res['stages']['spo']['curves']
    assert 'agent: held-out tool questions (4): answered right with tools' in r.stdout, r.stdout


def test_bad_flags(tmp_path):
    for flags, says in ((('--limit', '0'), '--limit'), (('--scale', '2'), '--scale'), (('--n-per-kind', '1'), '--n-per-kind'),
                        (('--out', tmp_path), 'a folder')):
        r = run(RESULTS, *flags)
        assert r.returncode == 2 and says in r.stderr and 'Traceback' not in r.stderr, (flags, r.stderr)
