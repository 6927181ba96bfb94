"""`minimind_bench` end to end (chapter 19): a tiny run writes the JSON report and the markdown table with every
field; --skip_baseline, --help, and clear errors. Behaviour only: no timing thresholds."""
import json
from pathlib import Path

import pytest
from helpers import run

REPO = Path(__file__).resolve().parents[1]
BENCH = 'minimind.bench:minimind_bench'
TINY = ['--preset', 'tiny', '--seq_len', '64', '--batch_size', '2', '--steps', '2', '--warmup', '1', '--threads', '1',
        '--gen_tokens', '4', '--gen_batch', '2', '--docs', '64', '--device', 'cpu']


def test_help_lists_every_flag():
    r = run(BENCH, '--help', timeout=600)
    assert r.returncode == 0, r.stderr
    for flag in ('--preset', '--seq-len', '--batch-size', '--steps', '--warmup', '--dist', '--data', '--device', '--dtype',
                 '--compile', '--threads', '--out', '--skip-baseline', '--baseline-attn', '--gen-tokens', '--gen-batch',
                 '--repeats', '--peak-tflops'):
        assert flag in r.stdout, flag


def test_tiny_run_writes_report_and_table(tmp_path):
    out = tmp_path / 'reports' / 'bench.json'
    r = run(BENCH, *TINY, '--out', out, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) == {'settings', 'machine', 'data', 'model', 'ours', 'baseline', 'speedup', 'speedup_epoch', 'generation'}
    s = report['settings']
    assert (s['preset'], s['seq_len'], s['batch_size'], s['steps'], s['device'], s['dtype'], s['threads']) == \
           ('tiny', 64, 2, 2, 'cpu', 'float32', 1)
    assert s['baseline_attn'] == 'eager' and s['isolated'] is True
    for name in ('ours', 'baseline'):
        c = report[name]
        assert c['tokens_per_s'] > 0 and c['peak_memory_mb'] > 0 and c['mfu'] is None  # no MFU on a CPU
        rep = c['repeats'][0]
        assert len(rep['step_s']) == len(rep['data_s']) == len(rep['useful_tokens']) == 2
    assert report['ours']['repeats'][0]['useful_tokens'] == [2 * 63, 2 * 63]             # packed: every target is text
    assert all(0 < n <= 2 * 63 for n in report['baseline']['repeats'][0]['useful_tokens'])  # padded: only the mask
    assert report['speedup'] == pytest.approx(report['ours']['tokens_per_s'] / report['baseline']['tokens_per_s'])
    assert report['speedup_epoch'] > 0 and report['baseline']['rows_per_s'] > 0
    assert sorted(report['generation']) == ['1', '2']
    assert all(g['tokens_per_s'] > 0 and g['new_tokens'] == 4 for g in report['generation'].values())
    d = report['data']
    assert d['documents'] == 64 and 0 <= d['padded_waste'] < 1 and d['tokens'] > 0
    assert report['model']['flops_per_token'] > 6 * report['model']['active_parameters']
    table = out.with_suffix('.md').read_text()
    assert table.startswith('| config | ours tokens/s | baseline tokens/s | ratio | epoch ratio | padding bound |')
    assert 'tiny' in table and 'x |' in table
    assert table.strip() in r.stdout                                                    # printed too


def test_corpus_distribution_with_the_sdpa_baseline(tmp_path):
    out = tmp_path / 'corpus.json'
    r = run(BENCH, *TINY, '--dist', 'corpus', '--baseline_attn', 'sdpa', '--out', out, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report['settings']['baseline_attn'] == 'sdpa' and report['settings']['dist'] == 'corpus'
    assert report['data']['name'] == 'course corpus' and report['data']['documents'] > 1000
    assert report['baseline']['tokens_per_s'] > 0
    assert 'baseline attn sdpa' in out.with_suffix('.md').read_text()


def test_skip_baseline(tmp_path):
    out = tmp_path / 'ours_only.json'
    r = run(BENCH, *TINY, '--skip_baseline', '--out', out, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report['baseline'] is None and report['speedup'] is None and report['speedup_epoch'] is None
    assert report['settings']['baseline_attn'] is None
    assert report['ours']['tokens_per_s'] > 0
    assert '| - |' in out.with_suffix('.md').read_text()


def test_bad_flags_give_clear_errors(tmp_path):
    r = run(BENCH, *TINY, '--preset', 'huge', '--out', tmp_path / 'x.json', timeout=600)
    assert r.returncode != 0 and 'unknown preset' in (r.stdout + r.stderr)
    r = run(BENCH, *TINY, '--data', tmp_path / 'missing.jsonl', '--out', tmp_path / 'x.json', timeout=600)
    assert r.returncode != 0 and 'missing.jsonl' in (r.stdout + r.stderr)
    r = run(BENCH, *TINY, '--docs', '4', '--batch_size', '8', '--out', tmp_path / 'x.json', timeout=600)
    assert r.returncode != 0 and 'fewer than one batch' in (r.stdout + r.stderr)
    r = run(BENCH, *TINY, '--baseline_attn', 'flash', '--out', tmp_path / 'x.json', timeout=600)
    assert r.returncode != 0 and "'eager' or 'sdpa'" in (r.stdout + r.stderr)
    assert not (tmp_path / 'x.json').exists()
