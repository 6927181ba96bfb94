"""`minimind_distill` end to end (chapter 14): a tiny teacher and student from fresh presets of different widths,
a run, its resume, --help, and the errors for a teacher with another vocabulary or no teacher at all."""
from pathlib import Path

import pytest
from helpers import run
from minimind.trainer import read_metrics

REPO = Path(__file__).resolve().parents[1]
DISTILL = 'minimind.distill:minimind_distill'
TINY = ['--steps', '4', '--batch_size', '4', '--max_seq_len', '64', '--save_every', '2', '--eval_every', '2',
        '--log_every', '1', '--lr', '1e-3', '--temperature', '2', '--alpha', '0.5']


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    "200 SFT conversations of the embedded corpus, a 64-wide student, a 128-wide teacher and a teacher with 500 tokens."
    import torch
    from minimind.config import MiniMindConfig
    from minimind.corpus import default_corpus
    from minimind.model import MiniMindForCausalLM
    root = tmp_path_factory.mktemp('distill')
    with open(default_corpus()['sft']) as f: (root / 'sft.jsonl').write_text(''.join(next(f) for _ in range(200)))
    torch.manual_seed(0)
    for name, kw in (('student', dict(hidden_size=64)), ('teacher', dict(hidden_size=128)),
                     ('other_vocab', dict(hidden_size=64, vocab_size=500))):
        MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', num_hidden_layers=1, **kw)).save_pretrained(root / name)
    return root


def test_help_lists_the_flags():
    r = run(DISTILL, '--help')
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ('--teacher', '--temperature', '--alpha', '--init', '--data', '--out', '--steps', '--batch-size',
                 '--max-seq-len', '--resume', '--deepspeed', '--tokenizer'):
        assert flag in r.stdout, flag


def test_tiny_run_distills_and_resumes(models):
    out = models / 'out'
    common = ['--init', models / 'student', '--teacher', models / 'teacher', '--data', models / 'sft.jsonl', '--out', out]
    r = run(DISTILL, *common, *TINY, cache=models / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 4/4' in r.stdout and 'kl ' in r.stdout
    recs = [m for m in read_metrics(out) if 'loss' in m]
    assert [m['step'] for m in recs] == [1, 2, 3, 4]
    for m in recs:  # the logged loss is alpha * T^2 * KL + (1 - alpha) * CE (dense student: no aux loss)
        assert m['kl'] > 0 and abs(m['loss'] - (0.5 * 4 * m['kl'] + 0.5 * m['ce'])) < 1e-3, m
    from minimind.model import MiniMindForCausalLM
    from minimind.tokenizer import load_tokenizer
    student = MiniMindForCausalLM.from_pretrained(out)
    assert student.config.hidden_size == 64                        # the student is saved, never the teacher
    assert load_tokenizer(out).vocab_size == student.config.vocab_size
    assert (out / 'latest').read_text().strip() == 'step-0000004'
    r = run(DISTILL, *common, *TINY, '--steps', '6', '--resume', cache=models / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 6/6' in r.stdout
    assert [m['step'] for m in read_metrics(out) if 'loss' in m] == list(range(1, 7))


def test_teacher_with_another_vocabulary_is_refused(models):
    r = run(DISTILL, '--init', models / 'student', '--teacher', models / 'other_vocab', '--data', models / 'sft.jsonl',
             '--out', models / 'bad', *TINY, cache=models / 'cache')
    assert r.returncode != 0
    assert 'vocabulary sizes differ' in r.stderr and 'same tokenizer' in r.stderr, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr


def test_missing_teacher_and_missing_init(models, tmp_path):
    r = run(DISTILL, '--init', models / 'student', '--data', models / 'sft.jsonl', '--out', tmp_path / 'out', *TINY)
    assert r.returncode != 0 and '--teacher' in r.stderr and 'Traceback' not in r.stderr
    r = run(DISTILL, '--init', tmp_path / 'nothing', '--teacher', models / 'teacher', '--out', tmp_path / 'out', *TINY)
    assert r.returncode != 0 and 'nothing' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
