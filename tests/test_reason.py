"""`minimind_reason` and `minimind_grpo` end to end (chapter 15): tiny runs from a fresh tiny model, resume (GRPO's
sampling included), --help, a MiniMind-format r1 file, a missing --init."""
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from helpers import save_fresh_tiny

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / 'tests' / 'dist_scripts' / 'cli.py'

# MiniMind's r1_mix_1024.jsonl: SFT conversations whose (last) assistant reply carries <think>/<answer> tags;
# some are multi-turn or start with a system prompt, many are Chinese
R1_RECORDS = [
    {"conversations": [{"role": "user", "content": "请计算 12 + 30。"},
                       {"role": "assistant", "content": "<think>\n个位：2 + 0 = 2。\n十位：1 + 3 = 4。\n</think>\n<answer>\n42\n</answer>"}]},
    {"conversations": [{"role": "system", "content": "你是一个乐于助人的助手。"},
                       {"role": "user", "content": "天空为什么是蓝色的？"},
                       {"role": "assistant", "content": "<think>\n嗯，用户问天空的颜色。这和瑞利散射有关。\n</think>\n<answer>\n因为大气对蓝光的散射更强。\n</answer>"}]},
    {"conversations": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
                       {"role": "user", "content": "What is 7 times 6?"},
                       {"role": "assistant", "content": "<think>\nSeven sixes: 6, 12, 18, 24, 30, 36, 42.\n</think>\n<answer>\n42\n</answer>"}]},
    {"conversations": [{"role": "user", "content": "Name a primary colour."},
                       {"role": "assistant", "content": "<think>\nThe primary colours of light are red, green and blue.\n</think>\n<answer>\nRed\n</answer>"}]},
] * 4  # 16 conversations: enough for a train and a validation split


def run(module_func, args, cache=None, timeout=180):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    if cache: env['MINIMIND_CACHE'] = str(cache)  # token shards of the test data stay in the test's folder
    for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'): env.pop(k, None)
    return subprocess.run([sys.executable, str(CLI), module_func, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)

REASON, GRPO = 'minimind.reason:minimind_reason', 'minimind.reason:minimind_grpo'


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A fresh tiny model (with the shipped tokenizer saved beside it), a MiniMind-format r1 file and 16 RL prompts."
    from minimind.corpus import default_corpus
    root = tmp_path_factory.mktemp('reason')
    save_fresh_tiny(root / 'init')
    r1 = root / 'r1_mix_1024.jsonl'
    r1.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in R1_RECORDS), encoding='utf-8')
    rl = root / 'rl.jsonl'
    with open(default_corpus()['rl']) as f: rl.write_text(''.join(next(f) for _ in range(16)))
    return dict(init=root / 'init', r1=r1, rl=rl)


def metrics(out):
    return [json.loads(l) for l in (Path(out) / 'metrics.jsonl').read_text().splitlines() if l.strip()]


def test_help_lists_the_flags():
    r = run(REASON, ['--help'])
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ('--init', '--data', '--out', '--steps', '--batch-size', '--lr', '--max-seq-len', '--resume', '--tag-weight',
                 '--deepspeed', '--tokenizer'):
        assert flag in r.stdout, flag
    r = run(GRPO, ['--help'])
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ('--init', '--data', '--out', '--steps', '--num-generations', '--max-new-tokens', '--beta', '--clip-eps',
                 '--temperature', '--resume'):
        assert flag in r.stdout, flag


def test_reason_on_a_minimind_r1_file_and_resume(tmp_path, files):
    out = tmp_path / 'reason'
    common = ['--init', files['init'], '--data', files['r1'], '--out', out, '--batch_size', '4', '--max_seq_len', '96',
              '--log_every', '1', '--save_every', '2', '--eval_every', '2']
    r = run(REASON, [*common, '--steps', '2'], cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 2/2' in r.stdout
    recs = metrics(out)
    assert [m['step'] for m in recs if 'loss' in m] == [1, 2]
    assert all(m['weighted_ce'] > 0 for m in recs if 'loss' in m) and any('val_loss' in m for m in recs)
    from minimind.model import MiniMindForCausalLM
    from minimind.tokenizer import load_tokenizer
    assert MiniMindForCausalLM.from_pretrained(out).config.hidden_size == 128
    assert load_tokenizer(out).vocab_size == 6400
    r = run(REASON, [*common, '--steps', '3', '--resume'], cache=tmp_path / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m['step'] for m in metrics(out) if 'loss' in m] == [1, 2, 3]
    assert (out / 'latest').read_text().strip() == 'step-0000003'


def test_reason_without_an_init_model_says_what_to_do(tmp_path):
    r = run(REASON, ['--init', tmp_path / 'nothing', '--out', tmp_path / 'out', '--steps', '1'])
    assert r.returncode != 0 and 'nothing' in r.stderr and 'minimind_sft' in r.stderr, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr


def test_grpo_end_to_end_and_resume(tmp_path, files):
    out = tmp_path / 'grpo'
    common = ['--init', files['init'], '--data', files['rl'], '--out', out, '--batch_size', '2', '--num_generations', '3',
              '--max_new_tokens', '8', '--save_every', '2', '--log_every', '1']
    r = run(GRPO, [*common, '--steps', '2'])
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 2/2' in r.stdout and 'mean reward' in r.stdout
    recs = metrics(out)
    assert [m['step'] for m in recs] == [1, 2]
    assert {'reward', 'format_reward', 'answer_reward', 'kl', 'reply_len'} <= set(recs[0])
    assert 0 < recs[0]['reply_len'] <= 8
    assert recs[0]['tokens'] > 0 and recs[0]['tokens_per_s'] > 0  # prompts and replies: the loss function counts them
    r = run(GRPO, [*common, '--steps', '3', '--resume'])
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m['step'] for m in metrics(out)] == [1, 2, 3]
    state = json.loads((out / 'step-0000003' / 'trainer_state.json').read_text())
    assert state['stage'] == 'grpo' and state['position'] == 6  # 3 steps of 2 prompts


def test_grpo_resume_is_exact_on_a_minimind_r1_file(tmp_path, files):
    "Prompts from an r1 file (answer read from <answer>); 3 steps straight = 2 steps + resume, sampling RNG included."
    from safetensors.torch import load_file
    from minimind.reason import grpo
    from minimind.trainer import TrainConfig
    torch.set_num_threads(1)
    def train(out, steps, resume=False):
        cfg = TrainConfig(out_dir=str(out), steps=steps, batch_size=2, lr=1e-3, save_every=2, log_every=1,
                          resume=resume, progress=False, warmup_steps=1, min_lr=1e-3)  # a flat schedule: 2 + 1 == 3
        return grpo(cfg, files['init'], files['r1'], num_generations=3, max_new_tokens=8)
    train(tmp_path / 'straight', 3)
    train(tmp_path / 'resumed', 2)
    train(tmp_path / 'resumed', 3, resume=True)
    a, b = load_file(str(tmp_path / 'straight' / 'model.safetensors')), load_file(str(tmp_path / 'resumed' / 'model.safetensors'))
    init = load_file(str(files['init'] / 'model.safetensors'))
    assert any(not torch.equal(a[k], init[k]) for k in a)  # it trained
    for k in a: assert torch.equal(a[k], b[k]), k
    assert [m['reward'] for m in metrics(tmp_path / 'straight')] == [m['reward'] for m in metrics(tmp_path / 'resumed')]


def test_grpo_on_the_one_digit_prompts(tmp_path, files):
    "`--data one-digit`: the course's prompts (the practised half of the one-digit problems), built in code, no file."
    out = tmp_path / 'grpo'
    r = run(GRPO, ['--init', files['init'], '--data', 'one-digit', '--out', out, '--steps', '1', '--batch_size', '2',
                   '--num_generations', '2', '--max_new_tokens', '4'])
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'on 708 prompts' in r.stdout, r.stdout  # 118 problems x 2 languages x 3 wordings
    assert [m['step'] for m in metrics(out)] == [1]
