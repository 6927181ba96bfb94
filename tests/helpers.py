"Helpers the test files share: running a console script in a subprocess, a free local port, a fresh tiny model saved to a folder."
import json, os, socket, subprocess, sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / 'tests' / 'dist_scripts' / 'cli.py'
BIN = Path(sys.executable).parent
DIST_VARS = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def run(command:str, *args, cache=None, launcher=(), timeout:float=300, input:str=None, env:dict=None):
    """Run console script `command` (`'minimind.sft:minimind_sft'`: its module and function, so the package need not be
    installed) with `args` from the repository root, one CPU thread, no inherited process-group variables, and
    `MINIMIND_CACHE=cache` when given; `launcher` (e.g. torchrun's command line) runs it instead of this Python."""
    full_env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **(env or {}))
    for k in DIST_VARS: full_env.pop(k, None)
    if cache: full_env['MINIMIND_CACHE'] = str(cache)  # token shards of the test data stay in the test's folder
    prog = [str(CLI), command] if launcher else [sys.executable, str(CLI), command]
    return subprocess.run([*map(str, launcher), *prog, *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=REPO, input=input)


def torchrun_launcher(nproc:int=2) -> list:
    "torchrun's command line for `nproc` CPU processes on this machine, with a rendezvous on a free local port."
    return [BIN / 'torchrun', '--nnodes', '1', '--nproc_per_node', str(nproc), '--rdzv_backend', 'c10d',
            '--rdzv_endpoint', f'127.0.0.1:{free_port()}']


def free_port() -> int:
    "A TCP port on 127.0.0.1 that is free now (for torchrun's rendezvous and the test servers)."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def save_fresh_tiny(folder, with_tokenizer:bool=True, seed:int=0, preset:str='tiny') -> Path:
    "A freshly initialised `preset` model (seeded) saved to `folder`, with the shipped tokenizer beside it unless told not to."
    from minimind.config import MiniMindConfig
    from minimind.model import MiniMindForCausalLM
    from minimind.tokenizer import load_tokenizer
    tok = load_tokenizer()
    torch.manual_seed(seed)
    MiniMindForCausalLM(MiniMindConfig.from_preset(preset, vocab_size=tok.vocab_size)).save_pretrained(folder)
    if with_tokenizer: tok.save_pretrained(folder)
    return Path(folder)


def minimind2_pth(folder, name:str='dense_tiny', prefix:str='module.') -> Path:
    """A checkpoint in MiniMind2's own `.pth` layout, made from the reference fixture `name`: `torch.save` of every
    state-dict tensor in fp16 (`lm_head.weight` included, tied to the embedding), keys `prefix`ed as a DDP-wrapped
    model saves them, with the fixture's config.json and the MiniMind2 tokenizer beside it. Returns the .pth path."""
    import pytest, shutil
    from safetensors.torch import load_file
    from minimind.config import fixtures_dir
    fixtures = fixtures_dir()
    if fixtures is None: pytest.skip('MiniMind2 reference fixtures not found')
    ref, folder = fixtures / 'minimind2', Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = load_file(str(ref / f'{name}.weights.safetensors'))
    state['lm_head.weight'] = state['model.embed_tokens.weight']
    path = folder / f"full_sft_{state['model.embed_tokens.weight'].shape[1]}.pth"
    torch.save({prefix + k: v.half() for k, v in state.items()}, path)
    shutil.copy(ref / f'{name}.config.json', folder / 'config.json')
    for tok_file in ('tokenizer.json', 'tokenizer_config.json'): shutil.copy(ref / tok_file, folder / tok_file)
    return path


def minimind2_lora(path, model, rank:int=8, seed:int=0, scale:float=0.2) -> dict:
    """A `lora_*.pth` adapter in MiniMind2's layout for `model`: `<layer>.lora.A.weight` (rank, in) and
    `<layer>.lora.B.weight` (out, rank) for every square nn.Linear (its model_lora.py's rule), random nonzero B.
    Saved with torch.save to `path`; returns the dict."""
    g = torch.Generator().manual_seed(seed)
    adapter = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and m.weight.shape[0] == m.weight.shape[1]:
            adapter[f'{name}.lora.A.weight'] = torch.randn(rank, m.in_features, generator=g) * scale
            adapter[f'{name}.lora.B.weight'] = torch.randn(m.out_features, rank, generator=g) * scale
    torch.save(adapter, path)
    return adapter


def merge_by_hand(model, adapter:dict):
    "`model` with MiniMind2's adapter dict folded in as its forward computes it: W + B A, no scale. In place; returns it."
    with torch.no_grad():
        for name, m in model.named_modules():
            if f'{name}.lora.A.weight' in adapter:
                m.weight += adapter[f'{name}.lora.B.weight'] @ adapter[f'{name}.lora.A.weight']
    return model


def reference_chat_input(conversations:list) -> tuple:
    """(messages, tools) of a record's `conversations` as MiniMind's loaders hand them to the chat template (the facts,
    written out independently of the package): MiniMind2 (83e52f6) passes the messages as they are, with
    `conversations[0]['functions']` as `tools` when the first turn is a system turn that has them; minimind-3 parses a
    system turn's `tools` and an assistant's `tool_calls` with `json.loads` when they are strings."""
    first = conversations[0] if conversations else {}
    if first.get('role') == 'system' and first.get('functions'): return conversations, first['functions']
    messages, tools = [], None
    for message in conversations:
        message = dict(message)
        if message.get('role') == 'system' and message.get('tools'):
            tools = json.loads(message['tools']) if isinstance(message['tools'], str) else message['tools']
        if message.get('tool_calls') and isinstance(message['tool_calls'], str): message['tool_calls'] = json.loads(message['tool_calls'])
        messages.append(message)
    return messages, tools
