"""The reward model (chapter 17a) and `--reward_model` (chapter 15a): `minimind_reward` end to end and exact resume, its
folder read by transformers itself, GRPO and PPO scoring with it, and the unusable folders named in one line."""
import json

import pytest
import torch

from helpers import run, save_fresh_tiny
from minimind.trainer import read_metrics

REWARD, GRPO, PPO = 'minimind.reward:minimind_reward', 'minimind.grpo:minimind_grpo', 'minimind.ppo:minimind_ppo'


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('rm')
    save_fresh_tiny(root / 'init')
    common = ['--init', root / 'init', '--batch_size', '4', '--save_every', '2', '--log_every', '1', '--lr', '1e-3',
              '--warmup_steps', '1', '--min_lr', '1e-3', '--eval_every', '0']
    r = run(REWARD, *common, '--out', root / 'rm', '--steps', '3', cache=root / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    prompts = root / 'rlaif.jsonl'
    prompts.write_text('\n'.join(json.dumps(dict(conversations=[dict(role='user', content=f'Tell me about {w}.'), dict(role='assistant', content='')]))
                                 for w in ('Toma', 'Lin', 'the sea', 'cats')) + '\n')
    return dict(root=root, common=common, rm=root / 'rm', prompts=prompts, stdout=r.stdout)


def test_reward_end_to_end_and_exact_resume(trained, tmp_path):
    from safetensors.torch import load_file
    assert 'done: step 3/3' in trained['stdout'] and 'pair accuracy' in trained['stdout'], trained['stdout'][-1500:]
    cfg = json.loads((trained['rm'] / 'config.json').read_text())
    assert cfg['architectures'] == ['LlamaForSequenceClassification'] and cfg['num_labels'] == 1
    out = tmp_path / 'resumed'
    assert run(REWARD, *trained['common'], '--out', out, '--steps', '2', cache=trained['root'] / 'cache').returncode == 0
    r = run(REWARD, *trained['common'], '--out', out, '--steps', '3', '--resume', cache=trained['root'] / 'cache')
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(trained['rm'] / 'model.safetensors')), load_file(str(out / 'model.safetensors'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a['score.weight'].abs().sum() > 0


def test_transformers_reads_the_same_scores(trained):
    "transformers' own LlamaForSequenceClassification gives the scorer's numbers (right padding, the last real token)."
    from transformers import AutoModelForSequenceClassification
    from minimind.reward import RewardScorer
    from minimind.stage import load_checkpoint_folder
    hf = AutoModelForSequenceClassification.from_pretrained(str(trained['rm'])).eval()
    ours = RewardScorer(load_checkpoint_folder(trained['root'] / 'init', tokenizer=False)[0].config)
    from safetensors.torch import load_file
    ours.load_state_dict(load_file(str(trained['rm'] / 'model.safetensors'))); ours.eval()
    ids = torch.randint(5, 500, (3, 9)); mask = torch.ones_like(ids); mask[1, 6:] = 0; ids[1, 6:] = 0
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids, attention_mask=mask).logits[:, 0], ours(ids, mask).scores, atol=1e-4)


@pytest.mark.parametrize('script', [GRPO, PPO])
def test_rl_with_the_reward_model(trained, tmp_path, script):
    out = tmp_path / 'rl'
    r = run(script, '--init', trained['root'] / 'init', '--data', trained['prompts'], '--out', out, '--steps', '2', '--batch_size', '2',
            '--num_generations', '2', '--max_new_tokens', '8', '--reward_model', trained['rm'], '--log_every', '1')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'rewards: format, length, repetition, model' in r.stdout, r.stdout[-1500:]
    recs = read_metrics(out)
    assert all(0 < m['model_reward'] < 1 for m in recs)
    assert json.loads((out / 'rewards.json').read_text())['rewards'][-1] == 'model'


def test_unusable_reward_models_are_named(trained, tmp_path):
    base = ['--init', trained['root'] / 'init', '--data', trained['prompts'], '--out', tmp_path / 'out']
    r = run(GRPO, *base, '--reward', 'format,model')
    assert r.returncode == 2 and '--reward model: give the reward model' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    r = run(GRPO, *base, '--reward_model', tmp_path)
    assert r.returncode == 1 and 'no reward model there (no config.json)' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    pickled = tmp_path / 'pickled'; pickled.mkdir()
    (pickled / 'config.json').write_text((trained['rm'] / 'config.json').read_text()); (pickled / 'pytorch_model.bin').write_bytes(b'x')
    r = run(GRPO, *base, '--reward_model', pickled)
    assert r.returncode == 1 and 'no *.safetensors weights' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not (tmp_path / 'out').exists()
