"""Agentic RL (chapter 15e): MiniMind's agent RL files read (and bad lines named), a scripted episode through the
real chat template, the direction of one step on a rewarded episode, `minimind_agent` end to end with exact
resume, a plugged-in rollout engine, bad flags, and two processes."""
import json

import pytest
import torch

from helpers import run, save_fresh_tiny, torchrun_launcher
from minimind.trainer import read_metrics

AGENT = 'minimind.agent:minimind_agent'


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    from minimind.agent import agent_tasks
    root = tmp_path_factory.mktemp('agent')
    save_fresh_tiny(root / 'init')
    data = root / 'agent_rl.jsonl'
    rows = []
    for t in agent_tasks(12):
        rows.append(dict(conversations=[{'role': 'system', 'content': t['messages'][0]['content'], 'tools': json.dumps(t['tools'], ensure_ascii=False)},
                                        t['messages'][1], {'role': 'assistant', 'content': ''}], gt=t['gt']))
    data.write_text('\n'.join(json.dumps(r, ensure_ascii=False) for r in rows) + '\n', encoding='utf-8')
    engine = root / 'engine.py'   # a plugged-in backend: it answers every prompt with one fixed (end-of-turn) reply, and counts syncs
    engine.write_text('''
from minimind.agent import RolloutEngine
class Fixed(RolloutEngine):
    def __init__(self, tok): self.tok, self.syncs = tok, 0
    def sync(self, model): self.syncs += 1
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_p=1.0):
        return [self.tok.encode('It is 28.') + [self.tok.eos_token_id] for _ in prompts]
def make_engine(model, tokenizer): return Fixed(tokenizer)
''')
    return dict(init=root / 'init', data=data, engine=engine, root=root)


def test_tool_turn_ids_follow_the_template_for_both_generations():
    "The ids appended after a call are what the template renders after the assistant's end of turn, for MiniMind2's and minimind-3's templates."
    from pathlib import Path
    from minimind.agent import tool_turn_ids
    from minimind.tokenizer import load_tokenizer
    from minimind.tools import world_tools
    schemas = [world_tools().schemas['person_age']]
    history = [{'role': 'user', 'content': 'How old is Ann?'}]
    assistant = {'role': 'assistant', 'content': '', 'tool_calls': [{'type': 'function', 'function': {'name': 'person_age', 'arguments': {'name': 'Ann'}}}]}
    results = [{'role': 'tool', 'name': 'person_age', 'content': '31'}]
    fixtures = Path(__file__).resolve().parents[2] / 'shared' / 'fixtures' / 'minimind3'
    toks = [load_tokenizer()] + ([load_tokenizer(fixtures)] if (fixtures / 'tokenizer.json').exists() else [])
    for tok in toks:
        ids = tool_turn_ids(tok, history, assistant, results, schemas)
        text = tok.decode(ids)
        assert '31' in text and text.rindex('<|im_start|>assistant') > text.index('31'), repr(text)   # the result, then the next prompt
        full = tok.apply_chat_template(history + [assistant] + results, add_generation_prompt=True, tools=schemas, tokenize=True)
        base = tok.apply_chat_template(history + [assistant], tools=schemas, tokenize=True)
        cut = len(base) - base[::-1].index(tok.eos_token_id)          # up to and including the assistant's <|im_end|>
        assert base[:cut] + ids == full, repr(tok.decode(full))


def test_a_rewarded_episode_gains_probability():
    "Two episodes of one task, one answered right: a GRPO step raises the log-prob of the right one's model tokens, and only they (not the tool turn) carry gradient."
    import copy
    from minimind.agent import Episode, pack_episodes
    from minimind.grpo import grpo_loss, token_logprobs, group_advantages
    from minimind.config import MiniMindConfig
    from minimind.model import MiniMindForCausalLM
    torch.set_num_threads(1); torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=64, num_hidden_layers=2))
    eps = []
    for reply in ([10, 11, 2, 30, 31, 32, 12, 2], [10, 11, 2, 30, 31, 32, 13, 2]):   # call, tool turn (context), answer
        e = Episode(dict(gt=['x']), [], [5, 6, 7] + reply, 3); e.mask = [1, 1, 1, 0, 0, 0, 1, 1]; eps.append(e)
    s = pack_episodes(eps, pad_id=0)
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2)
    n = s['replies'].shape[1]
    logp = token_logprobs(model, s['seqs'], s['full_mask'], n)
    own = lambda lp: (lp * s['mask']).sum(dim=1)
    before = own(logp).detach()
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), adv, s['mask'], beta=0.0)
    grads = torch.autograd.grad(loss, logp)[0]
    assert (grads[s['mask'] == 0] == 0).all() and (grads[s['mask'] == 1] != 0).any()   # the tool turn is context only
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), adv, s['mask'], beta=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.02); opt.zero_grad(); loss.backward(); opt.step()
    after = own(token_logprobs(model, s['seqs'], s['full_mask'], n)).detach()
    assert after[0] - before[0] > after[1] - before[1], (before, after)


def test_help_and_bad_flags(tmp_path, files):
    r = run(AGENT, '--help')
    assert r.returncode == 0 and all(f in r.stdout for f in ('--tools', '--engine', '--max-turns', '--algo', '--updates', '--reward')), r.stdout
    for flags, says in ((['--algo', 'ppo'], '--algo'), (['--max_turns', '0'], '--max-turns'), (['--reward', 'format'], 'unknown agent reward'),
                        (['--engine', 'nope.txt', '--init', files['init'], '--data', files['data']], '--engine nope.txt'),
                        (['--tools', 'nope.txt'], '--tools nope.txt')):
        r = run(AGENT, '--out', tmp_path / 'out', *flags)
        assert r.returncode in (1, 2) and says in r.stderr and 'Traceback' not in r.stderr, (flags, r.stderr)
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(files['data'].read_text().splitlines()[0] + '\n{"conversations": [{"role": "user", "content": "hi"}]}\n')
    r = run(AGENT, '--init', files['init'], '--data', bad, '--out', tmp_path / 'out')
    assert r.returncode == 1 and 'bad.jsonl:2:' in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_agent_end_to_end_and_exact_resume(tmp_path, files):
    from safetensors.torch import load_file
    common = ['--init', files['init'], '--data', files['data'], '--batch_size', '2', '--num_generations', '2', '--max_new_tokens', '8',
              '--max_turns', '2', '--save_every', '2', '--log_every', '1', '--lr', '1e-3', '--warmup_steps', '1', '--min_lr', '1e-3',
              '--updates', '2', '--reward', 'repetition,calls']
    r = run(AGENT, *common, '--out', tmp_path / 'straight', '--steps', '3')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'done: step 3/3' in r.stdout and 'tools: add, convert_units, person_age' in r.stdout, r.stdout[-1500:]
    recs = read_metrics(tmp_path / 'straight')
    assert {'repetition_reward', 'calls_reward', 'turns_reward', 'tool_calls_reward', 'kept', 'updates'} <= set(recs[0])
    assert run(AGENT, *common, '--out', tmp_path / 'resumed', '--steps', '2').returncode == 0
    r = run(AGENT, *common, '--out', tmp_path / 'resumed', '--steps', '3', '--resume')
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (load_file(str(tmp_path / d / 'model.safetensors')) for d in ('straight', 'resumed'))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_plugged_in_engine_plays_the_episodes(tmp_path, files):
    "The engine file's fixed reply '28' is every final answer: the answer reward counts the tasks whose gt is 28, nothing else."
    out = tmp_path / 'engine'
    r = run(AGENT, '--init', files['init'], '--data', files['data'], '--out', out, '--steps', '2', '--batch_size', '2',
            '--num_generations', '2', '--engine', files['engine'], '--log_every', '1')
    assert r.returncode == 0, r.stderr[-3000:]
    recs = read_metrics(out)
    assert all(m['turns_reward'] == 1.0 and m['tool_calls_reward'] == 0 for m in recs)   # one turn, no calls: what the engine wrote
    assert all(m['repetition_reward'] == 1.0 for m in recs)


def test_two_processes(tmp_path, files):
    out = tmp_path / 'ddp'
    r = run(AGENT, '--init', files['init'], '--data', files['data'], '--out', out, '--steps', '2', '--batch_size', '2',
            '--num_generations', '2', '--max_new_tokens', '8', '--max_turns', '2', '--reward', 'repetition', launcher=torchrun_launcher(2))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    state = json.loads((out / 'step-0000002' / 'trainer_state.json').read_text())
    assert state['world_size'] == 2 and state['position'] == 8
