"""Bad numbers on the command line (issue 11): every console script checks its flags before any work starts and
names the flag in one line, with argparse's exit code for bad usage (2); nothing is written. One console script
runs in a subprocess as a user would call it; the others run in process through the same `run_cli`."""
import pytest

from helpers import run
from minimind.config import run_cli

STAGES = {'pretrain': 'minimind.pretrain', 'sft': 'minimind.sft', 'lora': 'minimind.lora', 'dpo': 'minimind.dpo',
          'distill': 'minimind.distill', 'reason': 'minimind.reason', 'grpo': 'minimind.grpo'}
BAD = [(['--steps', '-5'], '--steps -5: must be at least 0'),        # silently a full epoch, before
       (['--max_seq_len', '0'], '--max-seq-len 0: must be at least 2'),  # a ZeroDivisionError
       (['--accum', '0'], '--accum 0: must be at least 1'),           # a NaN loss and advice to lower the lr
       (['--batch_size', '0'], '--batch-size 0: must be at least 1'),
       (['--lr=-1e-3'], '--lr -0.001: must be greater than 0'),
       (['--dtype', 'fp8'], "--dtype 'fp8': choose one of")]


def in_process(module:str, func:str, argv:list, capsys) -> tuple:
    "`(exit code, stderr lines)` of `run_cli(module.func, argv)`."
    import importlib
    command = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as stop: run_cli(command, argv)
    return stop.value.code, capsys.readouterr().err.strip().splitlines()


def test_a_console_script_exits_2_with_one_line(tmp_path):
    r = run('minimind.pretrain:minimind_pretrain', '--steps', '-5', '--out', tmp_path / 'out')
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == ["minimind_pretrain: --steps -5: must be at least 0"]
    assert not (tmp_path / 'out').exists()                       # before any work: no folder, no tokenized data


@pytest.mark.parametrize('stage', list(STAGES))
@pytest.mark.parametrize('flags,message', BAD, ids=[b[0][0].split('=')[0] for b in BAD])
def test_every_stage_checks_the_loop_flags(stage, flags, message, tmp_path, capsys):
    extra = ['--teacher', str(tmp_path)] if stage == 'distill' else []
    code, err = in_process(STAGES[stage], f'{stage}_cli', ['--out', str(tmp_path / 'out'), *extra, *flags], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('module,func,flags,message', [
    ('minimind.lora', 'lora_cli', ['--rank', '0'], '--rank 0: must be at least 1'),
    ('minimind.dpo', 'dpo_cli', ['--beta', '0'], '--beta 0.0: must be greater than 0'),
    ('minimind.distill', 'distill_cli', ['--alpha', '1.5', '--teacher', 'x'], '--alpha 1.5: must be at most 1'),
    ('minimind.distill', 'distill_cli', [], '--teacher'),
    ('minimind.grpo', 'grpo_cli', ['--num_generations', '1'], '--num-generations 1: must be at least 2'),
    ('minimind.grpo', 'grpo_cli', ['--top_p', '0'], '--top-p 0.0: must be greater than 0'),
    ('minimind.grpo', 'grpo_cli', ['--reward', 'format,fluency'], "unknown reward 'fluency'; choose from answer, format, length, repetition"),
    ('minimind.pretrain', 'pretrain_cli', ['--preset', 'huge'], "--preset 'huge': choose one of"),
    ('minimind.tools', 'minimind_tool_results', ['--family', 'minimind4'], "--family 'minimind4': choose one of"),
    ('minimind.tools', 'minimind_tool_results', ['--n_per_kind', '1'], '--n-per-kind 1: must be at least 2'),
    ('minimind.sft', 'sft_cli', ['--val_fraction', '0.9'], '--val-fraction 0.9: must be at most 0.5'),
    ('minimind.eval', 'eval_cli', ['ckpt', '--limit', '0'], '--limit 0: must be at least 1'),
    ('minimind.eval', 'eval_cli', ['ckpt', '--max_new_tokens', '-1'], '--max-new-tokens -1: must be at least 1'),
    ('minimind.bench', 'bench_cli', ['--steps', '0'], '--steps 0: must be at least 1'),
    ('minimind.bench', 'bench_cli', ['--device', 'tpu9'], "--device 'tpu9'"),
    ('minimind.bench', 'bench_cli', ['--data_scale', '--pretrain_mb', '100,big'], "--pretrain-mb '100,big'"),
    ('minimind.bench', 'bench_cli', ['--data_scale', '--sft_mb', '-5'], '--sft-mb -5.0: must be greater than 0'),
    *[('minimind.chat', 'chat_cli', ['missing', flag, value], flag) for flag, value in
      (('--temperature', '-1'), ('--top-p', '0'), ('--top-p', '1.5'), ('--top-k', '0'), ('--repetition-penalty', '0'),
       ('--max-new-tokens', '0'), ('--device', 'quantum'))],
    *[('minimind.serve', 'serve_cli', ['missing', flag, value], flag) for flag, value in
      (('--port', '99999'), ('--port', '0'), ('--max-concurrent', '0'), ('--threads', '0'), ('--max-tokens-limit', '0'),
       ('--max-request-bytes', '0'), ('--request-timeout', '0'), ('--device', 'quantum'))],
])
def test_each_command_checks_its_own_flags(module, func, flags, message, capsys):
    code, err = in_process(module, func, flags, capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_value_argparse_cannot_read_is_one_line_too(capsys):
    code, err = in_process('minimind.sft', 'sft_cli', ['--steps', 'many'], capsys)
    assert code == 2 and len(err) == 1 and '--steps' in err[0] and 'many' in err[0], err
