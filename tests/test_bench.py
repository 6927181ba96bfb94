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


def test_data_scale_writes_sized_files_and_their_report(tmp_path):
    "`--data_scale`: MiniMind-format files of the sizes asked, each tokenized cold, its batch-encode ceiling, a second start."
    out, work = tmp_path / 'scale.json', tmp_path / 'work'
    r = run(BENCH, '--data_scale', '--pretrain_mb', '0.5,1', '--sft_mb', '0.5', '--workdir', work, '--preset', 'tiny',
            '--batch_size', '2', '--seq_len', '64', '--out', out, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(row['kind'], row['size_mb']) for row in report['rows']] == [('pretrain', 0.5), ('pretrain', 1.0), ('sft', 0.5)]
    files = {row['file']: row for row in report['rows']}
    for name, row in files.items():
        path = work / name
        size = path.stat().st_size
        assert row['size_mb'] * 1e6 <= size < row['size_mb'] * 1e6 + 20_000        # the size asked, to within a line
        first = json.loads(path.open(encoding='utf-8').readline())
        assert ('text' in first) if row['kind'] == 'pretrain' else isinstance(first['conversations'], list)
        t = row['tokenize']
        assert t['file_bytes'] == size and t['tokens'] > t['documents'] > 0 and t['cache_bytes'] > 0 and t['peak_rss_mb'] > 0
        assert row['ratio'] == pytest.approx(t['mb_per_s'] / row['encode']['mb_per_s'])
        assert row['load']['train_rows'] > 0 and row['load']['tokens_per_s'] > 0
    half, one = (files[f'pretrain-seed0-{s}MB.jsonl'] for s in ('0.5', '1'))
    assert (work / half['file']).read_bytes() == (work / one['file']).read_bytes()[:(work / half['file']).stat().st_size]  # a prefix
    assert report['need']['preset'] == 'tiny' and report['need']['cpu_tokens_per_s'] > 0
    table = out.with_suffix('.md').read_text()
    assert table.startswith('| file | MB | documents |') and table.count('\n| pretrain |') == 2 and table.strip() in r.stdout
