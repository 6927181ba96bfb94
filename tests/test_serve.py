"""`minimind_serve` (chapter 16a) on loopback: the official openai client (streaming and not), raw HTTP for the error
cases, the bearer token, stop sequences, reasoning_content, concurrent streams, and a disconnect freeing its slot."""
import json, os, subprocess, sys, threading, time
from pathlib import Path

import httpx
import pytest
import torch

pytest.importorskip('fastapi'); pytest.importorskip('uvicorn'); pytest.importorskip('openai')  # the serve extra
from openai import OpenAI, AuthenticationError

from minimind.config import MiniMindConfig
from minimind.model import CausalLMOutput, MiniMindForCausalLM
from minimind.tokenizer import load_tokenizer
from minimind.config import run_cli
from minimind.serve import BackgroundServer, create_app, serve_cli
from helpers import free_port

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / 'tests' / 'dist_scripts' / 'cli.py'
KEY = 'test-key-123'


def tiny_model(seed=0) -> MiniMindForCausalLM:
    "A fresh tiny model whose <|im_end|> logit is always 0, so greedy replies run to max_tokens (their length is known)."
    torch.manual_seed(seed)
    # an untied head: an untrained tied model just repeats its last input token; this one babbles varied text
    model = MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=6400, tie_word_embeddings=False))
    with torch.no_grad(): model.lm_head.weight[2] = 0  # the eos logit is 0, below the largest of 6400 random logits
    return model.eval()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    "`minimind_serve` in a subprocess (the console script's code path) with --api-key; yields its base URL."
    folder = tmp_path_factory.mktemp('tiny')
    tiny_model().save_pretrained(folder)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    proc = subprocess.Popen([sys.executable, str(CLI), 'minimind.serve:minimind_serve', str(folder), '--port', str(port),
                             '--api-key', KEY, '--max_request_bytes', '200000', '--max_tokens_limit', '512'],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    url = f'http://127.0.0.1:{port}'
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f'{url}/health', timeout=1).status_code == 200: break
        except httpx.HTTPError: pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill(); pytest.fail(f"minimind_serve did not start:\n{proc.stdout.read()}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    try: proc.wait(10)
    except subprocess.TimeoutExpired: proc.kill()


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit: run_cli(serve_cli, ['--help'])
    shown = capsys.readouterr().out
    assert exit.value.code == 0 and all(f in shown for f in ('checkpoint folder', '--host', '--port', '--api-key', '--lora', '--max-concurrent'))
    assert '127.0.0.1' in shown and '8998' in shown


def client(url, key=KEY): return OpenAI(base_url=f'{url}/v1', api_key=key, max_retries=0, timeout=60)
HELLO = [{'role': 'user', 'content': 'Hello!'}]


def test_models_and_both_kinds_of_completion(server):
    c = client(server)
    models = c.models.list().data
    assert len(models) == 1 and models[0].id.startswith('tiny') and models[0].object == 'model'  # the folder's name
    done = c.chat.completions.create(model='any', messages=HELLO, temperature=0, max_tokens=20)
    text = done.choices[0].message.content
    assert done.object == 'chat.completion' and done.choices[0].finish_reason == 'length' and len(text) > 0
    assert (done.usage.completion_tokens, done.usage.total_tokens) == (20, done.usage.prompt_tokens + 20)
    chunks = list(c.chat.completions.create(model='any', messages=HELLO, temperature=0, max_tokens=20, stream=True,
                                            stream_options={'include_usage': True}))
    assert chunks[0].choices[0].delta.role == 'assistant'
    assert ''.join(ch.choices[0].delta.content or '' for ch in chunks if ch.choices) == text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == 'length'
    assert chunks[-1].usage.completion_tokens == 20 and not chunks[-1].choices
    # sampling: a seed makes it repeatable; a different seed (almost surely) changes it
    sample = lambda seed: c.chat.completions.create(model='any', messages=HELLO, temperature=1.0, top_p=0.9, max_tokens=12,
                                                    seed=seed).choices[0].message.content
    assert sample(1) == sample(1) and (sample(1) != sample(2) or sample(1) != sample(3))


def test_raw_stream_is_openai_sse_ending_with_done(server):
    with httpx.stream('POST', f'{server}/v1/chat/completions', headers={'Authorization': f'Bearer {KEY}'}, timeout=60,
                      json={'messages': HELLO, 'temperature': 0, 'max_tokens': 5, 'stream': True}) as r:
        assert r.status_code == 200 and r.headers['content-type'].startswith('text/event-stream')
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith('data: ') for e in events) and events[-1] == 'data: [DONE]'
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c['object'] for c in chunks} == {'chat.completion.chunk'} and len({c['id'] for c in chunks}) == 1


def post(url, body, key=KEY, **kw):
    headers = {'Authorization': f'Bearer {key}'} if key else {}
    if isinstance(body, (bytes, str)): return httpx.post(f'{url}/v1/chat/completions', content=body, headers=headers, timeout=60, **kw)
    return httpx.post(f'{url}/v1/chat/completions', json=body, headers=headers, timeout=60, **kw)


@pytest.mark.parametrize('body,param,code', [
    (b'{"messages": [', None, 'invalid_json'),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', None, 'invalid_json'),
    ({'messages': [{'role': 'wizard', 'content': 'hi'}]}, 'messages[0].role', 'invalid_value'),
    ({'messages': []}, 'messages', 'invalid_value'),
    ({'model': 'x'}, 'messages', 'invalid_value'),
    ({'messages': HELLO, 'temperature': 2.5}, 'temperature', 'invalid_value'),
    ({'messages': HELLO, 'temperature': -1}, 'temperature', 'invalid_value'),
    ({'messages': HELLO, 'top_p': 0}, 'top_p', 'invalid_value'),
    ({'messages': HELLO, 'top_p': 1.5}, 'top_p', 'invalid_value'),
    ({'messages': HELLO, 'max_tokens': 0}, 'max_tokens', 'invalid_value'),
    ({'messages': HELLO, 'max_tokens': 513}, 'max_tokens', 'invalid_value'),   # above --max_tokens_limit
    ({'messages': HELLO, 'max_tokens': 'many'}, 'max_tokens', 'invalid_type'),
    ({'messages': HELLO, 'n': 2}, 'n', 'invalid_value'),
    ({'messages': HELLO, 'stop': ['a', 'b', 'c', 'd', 'e']}, 'stop', 'invalid_value'),
    ({'messages': [{'role': 'user', 'content': 'word ' * 3000}]}, 'messages', 'context_length_exceeded'),  # context 2048
])
def test_bad_requests_get_400_with_openai_error_json(server, body, param, code):
    r = post(server, body)
    assert r.status_code == 400, r.text
    error = r.json()['error']
    assert (error['param'], error['code'], error['type']) == (param, code, 'invalid_request_error')
    assert error['message']


def test_sizes_are_bounded_and_the_key_is_required(server):
    r = post(server, {'messages': [{'role': 'user', 'content': 'x' * 300_000}]})
    assert r.status_code == 413 and r.json()['error']['code'] == 'request_too_large'
    for key in (None, 'wrong-key'):
        r = post(server, {'messages': HELLO, 'max_tokens': 2}, key=key)
        assert r.status_code == 401 and r.json()['error']['code'] == 'invalid_api_key'
        assert httpx.get(f'{server}/v1/models', headers={'Authorization': f'Bearer {key}'} if key else {}).status_code == 401
    with pytest.raises(AuthenticationError): client(server, 'wrong-key').models.list()
    assert httpx.get(f'{server}/v1/nowhere', headers={'Authorization': f'Bearer {KEY}'}).json()['error']['code'] == '404'


def test_concurrent_streams_never_mix(server):
    prompts = ['Hello!', 'What is 2 + 3?', '你好']
    c = client(server)
    alone = {p: c.chat.completions.create(model='m', messages=[{'role': 'user', 'content': p}], temperature=0,
                                          max_tokens=60).choices[0].message.content for p in prompts}
    assert len(set(alone.values())) == len(prompts)   # different prompts, different replies: a mix-up would show
    got, barrier = {}, threading.Barrier(len(prompts), timeout=60)
    def run(p):
        text, waited = '', False
        for ch in client(server).chat.completions.create(model='m', messages=[{'role': 'user', 'content': p}],
                                                         temperature=0, max_tokens=60, stream=True):
            if ch.choices and ch.choices[0].delta.content:
                text += ch.choices[0].delta.content
                if not waited: barrier.wait(); waited = True  # every stream has begun before any reads on
        got[p] = text
    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads: t.start()
    for t in threads: t.join(120)
    assert got == alone


class ScriptedLM(MiniMindForCausalLM):
    "A stand-in model whose greedy reply is always `script` (token ids) then <|im_end|>: the server's text handling, end to end."
    def __init__(self, config, script):
        super().__init__(config); self.script = list(script) + [2]
    def forward(self, input_ids, labels=None, attention_mask=None, past_key_values=None, use_cache=False, logits_to_keep=0):
        step = 0 if past_key_values is None else past_key_values[0]       # reply tokens produced so far
        logits = torch.zeros(input_ids.shape[0], 1, self.config.vocab_size)
        logits[:, :, self.script[min(step, len(self.script) - 1)]] = 1.0
        return CausalLMOutput(logits=logits, past_key_values=[step + 1])


def scripted_server(text, **kw):
    tok = load_tokenizer()
    model = ScriptedLM(MiniMindConfig.from_preset('tiny', vocab_size=6400, num_hidden_layers=1), tok.encode(text))
    return BackgroundServer(create_app(model, tok, 'scripted', **kw))


def test_reasoning_content_and_stop_sequences():
    with scripted_server('<think>\nAdd 2 and 3.\n</think>\n<answer>5</answer>') as s:
        c = client(s.url)
        done = c.chat.completions.create(model='scripted', messages=HELLO, temperature=0)
        message = done.choices[0].message
        assert (message.content, message.model_extra['reasoning_content'], done.choices[0].finish_reason) == ('5', 'Add 2 and 3.', 'stop')
        parts = {'content': '', 'reasoning_content': ''}
        for ch in c.chat.completions.create(model='scripted', messages=HELLO, temperature=0, stream=True):
            for field in parts:
                if ch.choices and getattr(ch.choices[0].delta, field, None): parts[field] += getattr(ch.choices[0].delta, field)
        assert parts == {'content': '5', 'reasoning_content': 'Add 2 and 3.'}
    with scripted_server('Hello world. Goodbye world.') as s:
        c = client(s.url)
        done = c.chat.completions.create(model='scripted', messages=HELLO, temperature=0, stop=['bye', ' world'])
        assert (done.choices[0].message.content, done.choices[0].finish_reason) == ('Hello', 'stop')
        streamed = ''.join(ch.choices[0].delta.content or '' for ch in c.chat.completions.create(
            model='scripted', messages=HELLO, temperature=0, stop='Good', stream=True) if ch.choices)
        assert streamed == 'Hello world.'


def test_a_disconnected_client_frees_its_slot():
    with BackgroundServer(create_app(tiny_model(), load_tokenizer(), 'tiny', max_concurrent=1, max_tokens_limit=2000)) as s:
        health = lambda: httpx.get(f'{s.url}/health').json()
        with httpx.stream('POST', f'{s.url}/v1/chat/completions', timeout=60,
                          json={'messages': HELLO, 'temperature': 0, 'max_tokens': 2000, 'stream': True}) as r:
            lines = r.iter_lines()
            for _ in range(4): next(lines)
            assert health()['active'] == 1
        # the connection is closed after 4 events: the generation must stop long before its 2000 tokens
        deadline = time.monotonic() + 10
        while health()['active'] and time.monotonic() < deadline: time.sleep(0.05)
        assert health() | {'status': 'ok'} == {'status': 'ok', 'active': 0, 'max_concurrent': 1, 'finished': 0, 'cancelled': 1}
        # the single slot is free again: two more requests both get served, one after the other
        results = []
        def ask(): results.append(client(s.url).chat.completions.create(model='tiny', messages=HELLO, max_tokens=5).choices[0].finish_reason)
        threads = [threading.Thread(target=ask) for _ in range(2)]
        for t in threads: t.start()
        for t in threads: t.join(60)
        assert results == ['length', 'length'] and health()['finished'] == 2
