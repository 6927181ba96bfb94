"Helpers the test files share: a free local port, and a fresh tiny model saved to a folder."
import socket
from pathlib import Path

import torch


def free_port() -> int:
    "A TCP port on 127.0.0.1 that is free now (for torchrun's rendezvous and the test servers)."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def save_fresh_tiny(folder, with_tokenizer:bool=True, seed:int=0) -> Path:
    "A freshly initialised `tiny` model (seeded) saved to `folder`, with the shipped tokenizer beside it unless told not to."
    from minimind.config import MiniMindConfig
    from minimind.model import MiniMindForCausalLM
    from minimind.tokenizer import load_tokenizer
    tok = load_tokenizer()
    torch.manual_seed(seed)
    MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=tok.vocab_size)).save_pretrained(folder)
    if with_tokenizer: tok.save_pretrained(folder)
    return Path(folder)
