"""`minimind_reason` end to end (chapter 15): a tiny run from a fresh tiny model on a MiniMind-format r1 file,
resume, --help, a missing --init."""
from helpers import run
from minimind.trainer import read_metrics

REASON = 'minimind.reason:minimind_reason'


def test_help_lists_the_flags():
    r = run(REASON, '--help')
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ('--init', '--data', '--out', '--steps', '--batch-size', '--lr', '--max-seq-len', '--resume', '--tag-weight',
                 '--deepspeed', '--tokenizer'):
        assert flag in r.stdout, flag


def test_reason_on_a_minimind_r1_file_and_resume(tmp_path, reasoning_files):
    out = tmp_path / 'reason'
    common = ['--init', reasoning_files['init'], '--data', reasoning_files['r1'], '--out', out, '--batch_size', '4', '--max_seq_len', '96',
              '--log_every', '1', '--save_every', '2', '--eval_every', '2']
    r = run(REASON, *common, '--steps', '2', cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 2/2' in r.stdout
    recs = read_metrics(out)
    assert [m['step'] for m in recs if 'loss' in m] == [1, 2]
    assert all(m['weighted_ce'] > 0 for m in recs if 'loss' in m) and any('val_loss' in m for m in recs)
    from minimind.model import MiniMindForCausalLM
    from minimind.tokenizer import load_tokenizer
    assert MiniMindForCausalLM.from_pretrained(out).config.hidden_size == 128
    assert load_tokenizer(out).vocab_size == 6400
    r = run(REASON, *common, '--steps', '3', '--resume', cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m['step'] for m in read_metrics(out) if 'loss' in m] == [1, 2, 3]
    assert (out / 'latest').read_text().strip() == 'step-0000003'


def test_reason_without_an_init_model_says_what_to_do(tmp_path):
    r = run(REASON, '--init', tmp_path / 'nothing', '--out', tmp_path / 'out', '--steps', '1')
    assert r.returncode != 0 and 'nothing' in r.stderr and 'minimind_sft' in r.stderr, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr
