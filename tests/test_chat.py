"""`minimind_chat` end to end (chapter 16): the terminal chat through a pipe (streamed replies, history, /reset),
a LoRA adapter, a MiniMind2 transformers-format folder, and the error messages."""
import json, os, shutil, subprocess, sys
from pathlib import Path

import pytest
import torch

from fastcore.script import CliError
from minimind.config import MiniMindConfig, fixtures_dir, run_cli
from minimind.model import MiniMindForCausalLM
from minimind.chat import ChatStream, chat_cli, split_reasoning
from minimind.stage import load_checkpoint_folder

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / 'tests' / 'dist_scripts' / 'cli.py'


def chat(args, stdin='', timeout=120):
    "Run `minimind_chat` (before installation, through cli.py) with `stdin` piped in."
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, str(CLI), 'minimind.chat:minimind_chat', *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A fresh tiny model saved to a folder (no tokenizer in it: the shipped one is used)."
    folder = tmp_path_factory.mktemp('tiny')
    torch.manual_seed(0)
    # an untied head: an untrained tied model just repeats its last input token; this one babbles varied text
    MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=6400, tie_word_embeddings=False)).save_pretrained(folder)
    return folder


def reply(model, tok, messages, n=8):
    return ''.join(ChatStream(model, tok, messages, n, temperature=0))


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit: run_cli(chat_cli, ['--help'])
    assert exit.value.code == 0
    shown = capsys.readouterr().out
    for flag in ('checkpoint folder', '--lora', '--temperature', '--top-p', '--max-new-tokens', '--system', '--think', '--no-think'):
        assert flag in shown, flag


def test_terminal_chat_streams_keeps_history_and_resets(tiny):
    r = chat([tiny, '--temperature', '0', '--max_new_tokens', '8'], 'Hello!\nAnd then?\n/reset\nHello!\n')
    assert r.returncode == 0, r.stderr[-2000:]
    model, tok = load_checkpoint_folder(tiny)
    first = reply(model, tok, [{'role': 'user', 'content': 'Hello!'}])
    second = reply(model, tok, [{'role': 'user', 'content': 'Hello!'}, {'role': 'assistant', 'content': split_reasoning(first)[1]},
                                {'role': 'user', 'content': 'And then?'}])
    assert second != reply(model, tok, [{'role': 'user', 'content': 'And then?'}])  # the history changes the answer
    assert r.stdout == f'{first}\n{second}\n(history cleared)\n{first}\n'
    assert 'chatting with' in r.stderr and 'Traceback' not in r.stderr


def test_lora_adapter_changes_the_replies(tiny, tmp_path):
    from minimind.lora import apply_lora, save_adapter
    torch.manual_seed(1)
    adapted = apply_lora(MiniMindForCausalLM.from_pretrained(tiny), rank=4, alpha=8)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if 'lora_B' in name: p.normal_(0, 0.5)  # a freshly initialised B is zero: make the adapter do something
    save_adapter(adapted, tmp_path / 'adapter', base=str(tiny))
    model, tok = load_checkpoint_folder(tiny, lora=tmp_path / 'adapter')
    base, base_tok = load_checkpoint_folder(tiny)
    hello = [{'role': 'user', 'content': 'Hello!'}]
    assert reply(model, tok, hello) != reply(base, base_tok, hello)
    r = chat([tiny, '--lora', tmp_path / 'adapter', '--temperature', '0', '--max_new_tokens', '8'], 'Hello!\n')
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == reply(model, tok, hello) + '\n'


def test_bad_folder_or_flags_give_a_message(tmp_path):
    with pytest.raises(CliError, match='no such folder'): chat_cli(str(tmp_path / 'missing'))
    with pytest.raises(CliError, match='no model there'): chat_cli(str(tmp_path))
    with pytest.raises(CliError, match='not both'): chat_cli(str(tmp_path), think=True, no_think=True)


def test_think_flags_set_the_template(tiny):
    model, tok = load_checkpoint_folder(tiny)
    hello = [{'role': 'user', 'content': 'Hi'}]
    no_think = tok.decode(ChatStream(model, tok, hello, enable_thinking=False).prompt_ids)
    assert no_think.endswith('<|im_start|>assistant\n<think>\n\n</think>\n\n')
    assert tok.decode(ChatStream(model, tok, hello).prompt_ids).endswith('<|im_start|>assistant\n')


def test_minimind2_transformers_folder_loads_and_chats(tmp_path):
    fixtures = fixtures_dir()
    if fixtures is None: pytest.skip('MiniMind2 reference fixtures not found')
    ref, folder = fixtures / 'minimind2', tmp_path / 'MiniMind2'
    folder.mkdir()
    config = json.loads((ref / 'dense_tiny.config.json').read_text())
    config.update(architectures=['MiniMindForCausalLM'], model_type='minimind', torch_dtype='float32', transformers_version='4.57.1',
                  auto_map={'AutoConfig': 'model_minimind.MiniMindConfig', 'AutoModelForCausalLM': 'model_minimind.MiniMindForCausalLM'})
    (folder / 'config.json').write_text(json.dumps(config))
    shutil.copy(ref / 'dense_tiny.weights.safetensors', folder / 'model.safetensors')
    for name in ('tokenizer.json', 'tokenizer_config.json'): shutil.copy(ref / name, folder / name)
    model, tok = load_checkpoint_folder(folder)
    assert model.config.hidden_size == 64 and tok.chat_template == json.loads((ref / 'tokenizer_config.json').read_text())['chat_template']
    stream = ChatStream(model, tok, [{'role': 'user', 'content': '你好'}], 10, temperature=0)
    text = ''.join(stream)
    prompt = torch.tensor([stream.prompt_ids])
    direct = model.generate(prompt, max_new_tokens=10, temperature=0, eos_token_id=2)[0, prompt.shape[1]:]
    assert text == tok.decode([t for t in direct.tolist() if t != 2], skip_special_tokens=True)


def _dense_tiny_by_hand(folder):
    "The fixture's dense_tiny model with its weights rounded to fp16, as a MiniMind2 .pth holds them."
    from helpers import minimind2_pth
    pth = minimind2_pth(folder)
    config = MiniMindConfig.load(folder)
    state = {k.removeprefix('module.'): v.float() for k, v in torch.load(pth, weights_only=True).items()}
    model = MiniMindForCausalLM(config); model.load_state_dict(state)
    return pth, model.eval()


def test_minimind2_pth_and_lora_pth_chat(tmp_path):
    "minimind_chat full_sft_64.pth --lora lora_identity_64.pth: MiniMind2's files as published, W + B A as its model_lora.py."
    from helpers import minimind2_lora, merge_by_hand
    pth, by_hand = _dense_tiny_by_hand(tmp_path / 'out')
    adapter = minimind2_lora(tmp_path / 'lora_identity_64.pth', by_hand)
    assert {k.split('.')[-4] for k in adapter} == {'q_proj', 'o_proj'}            # the square Linears of MiniMind2's layout
    model, tok = load_checkpoint_folder(pth, lora=tmp_path / 'lora_identity_64.pth')
    merge_by_hand(by_hand, adapter)
    ids = torch.tensor([tok.encode('你好，世界')])
    with torch.no_grad(): assert (model(ids).logits - by_hand(ids).logits).abs().max().item() < 1e-5
    hello = [{'role': 'user', 'content': '你好'}]
    want = reply(by_hand, tok, hello, 10)
    for source in (pth, pth.parent):                                             # the file, or its folder
        r = chat([source, '--lora', tmp_path / 'lora_identity_64.pth', '--temperature', '0', '--max_new_tokens', '10'], '你好\n')
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout == want + '\n'
    r = chat([tmp_path / 'lora_identity_64.pth', '--temperature', '0'], 'hi\n')   # an adapter is not a model
    assert r.returncode != 0 and 'Traceback' not in r.stderr and 'lora_identity_64.pth' in r.stderr


def test_inference_rope_scaling_flag(tiny):
    "--inference-rope-scaling chats with the reference's YaRN switched on (enable_yarn), which changes the model's outputs."
    from minimind.config import enable_yarn, DEFAULT_YARN
    yarn, tok = load_checkpoint_folder(tiny, inference_rope_scaling=True)
    plain, _ = load_checkpoint_folder(tiny)
    assert yarn.config == enable_yarn(plain.config) and yarn.config.rope_scaling == DEFAULT_YARN
    ids = torch.tensor([tok.encode('Hello there, how are you?')])
    with torch.no_grad(): assert (yarn(ids).logits - plain(ids).logits).abs().max().item() > 1e-5   # float noise is 0 here
    hello = [{'role': 'user', 'content': 'Hello!'}]
    r = chat([tiny, '--inference-rope-scaling', '--temperature', '0', '--max_new_tokens', '8'], 'Hello!\n')
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == reply(yarn, tok, hello) + '\n' and 'YaRN on: 16 x 2048 positions' in r.stderr


def test_tools_flag(tiny, tmp_path):
    "--tools toy runs the turn through the tool loop (a fresh model makes no call: its reply is printed whole); a bad --tools is one line, exit 2."
    r = chat([tiny, '--temperature', '0', '--max_new_tokens', '8', '--tools', 'toy'], 'How old is Liko?\n')
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() and 'Traceback' not in r.stderr
    bad = chat([tiny, '--tools', tmp_path / 'missing.txt'], 'hi\n')
    assert bad.returncode == 2 and '--tools' in bad.stderr and 'Traceback' not in bad.stderr, bad.stderr
    (tmp_path / 'none.py').write_text('x = 1\n')
    empty = chat([tiny, '--tools', tmp_path / 'none.py'], 'hi\n')
    assert empty.returncode == 2 and 'defines no TOOLS' in empty.stderr, empty.stderr
