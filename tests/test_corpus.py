"""End-to-end tests of the `minimind_data` console script: generating a corpus and checking JSONL files.

The notebook `nbs/01_corpus.ipynb` tests the library in-process; these run the installed script the way a user
does, in a subprocess, and look at files, exit codes and printed messages.
"""
import json, os, subprocess, sys
from pathlib import Path

import pytest

from minimind.corpus import (CORPUS_FILES, CORPUS_VERSION, CorpusConfig, ToyWorld, corrupted_sample, expected_counts,
                             find_leaks, sha256_file)

SCRIPT = Path(sys.executable).parent / 'minimind_data'


def run_data(*args, env=None, cwd=None):
    "Run `minimind_data ARGS` and return the completed process (text output)"
    if not SCRIPT.exists():
        pytest.fail(f'{SCRIPT} not found: install the package with `pip install -e .` so the console script exists')
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture(scope='module')
def tiny_corpus(tmp_path_factory):
    "A tiny corpus generated once by the CLI for the tests that only read it"
    out = tmp_path_factory.mktemp('corpus')
    proc = run_data('--out', out, '--size', 'tiny', '--quiet')
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_generate_writes_every_file_and_manifest(tiny_corpus):
    out, proc = tiny_corpus
    manifest = json.loads((out / 'manifest.json').read_text(encoding='utf-8'))
    cfg = CorpusConfig.from_size('tiny')
    assert manifest['version'] == CORPUS_VERSION
    assert manifest['config'] == {**cfg.__dict__}
    expected = expected_counts(cfg, ToyWorld(cfg.seed, cfg.n_people, cfg.heldout_fraction))
    for kind, name in CORPUS_FILES.items():
        path, entry = out / name, manifest['files'][kind]
        assert path.is_file(), f'{name} missing'
        lines = path.read_text(encoding='utf-8').splitlines()
        assert len(lines) == entry['records'] == expected[kind], kind
        assert all(json.loads(line) for line in lines)
        assert entry['bytes'] == path.stat().st_size and entry['sha256'] == sha256_file(path)
    assert not [p.name for p in out.iterdir() if p.name.endswith('.tmp')], 'temporary files left behind'
    # the summary table names every file and ends with a total
    for name in CORPUS_FILES.values(): assert name in proc.stdout
    assert 'total' in proc.stdout


def test_generate_is_deterministic_across_processes(tmp_path):
    # different hash seeds: nothing in the generator may depend on set or dict-of-str ordering
    a = run_data('--out', tmp_path / 'a', '--size', 'tiny', '--quiet', env={'PYTHONHASHSEED': '1'})
    b = run_data('--out', tmp_path / 'b', '--size', 'tiny', '--quiet', env={'PYTHONHASHSEED': '2'})
    c = run_data('--out', tmp_path / 'c', '--size', 'tiny', '--seed', '7', '--quiet')
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr + b.stderr + c.stderr
    for name in [*CORPUS_FILES.values(), 'manifest.json']:
        assert (tmp_path / 'a' / name).read_bytes() == (tmp_path / 'b' / name).read_bytes(), name
    assert (tmp_path / 'a' / 'sft.jsonl').read_bytes() != (tmp_path / 'c' / 'sft.jsonl').read_bytes()


def test_generated_corpus_keeps_eval_held_out(tiny_corpus):
    out, _ = tiny_corpus
    assert find_leaks({kind: out / name for kind, name in CORPUS_FILES.items()}) == []


def test_default_goes_to_the_cache(tmp_path):
    cache = tmp_path / 'cache'
    proc = run_data('--size', 'tiny', '--quiet', env={'MINIMIND_CACHE': str(cache)})
    assert proc.returncode == 0, proc.stderr
    folder = cache / f'corpus-v{CORPUS_VERSION}-tiny-seed0'
    assert (folder / 'manifest.json').is_file()
    assert str(folder) in proc.stdout


@pytest.mark.parametrize('kind', ['pretrain', 'sft', 'identity', 'dpo', 'reason', 'rl', 'eval_facts', 'eval_preference'])
def test_check_passes_on_generated_files(tiny_corpus, kind):
    out, _ = tiny_corpus
    proc = run_data('--check', out / CORPUS_FILES[kind], '--quiet')  # kind guessed from the first record
    assert proc.returncode == 0, proc.stderr
    assert ' 0 skipped, 0 warnings' in proc.stdout


# the corrupted sample's bad lines: category -> what the message must say
REASONS = {'bad utf-8': 'bad UTF-8', 'invalid json': 'invalid JSON', 'missing field': "missing field 'conversations'",
           'unknown role': "unknown role 'bot'", 'empty content': 'empty content'}


def test_check_strict_stops_at_first_bad_line(tmp_path):
    bad = tmp_path / 'bad_sft.jsonl'
    where = corrupted_sample(bad)
    proc = run_data('--check', bad, '--kind', 'sft', '--quiet')
    assert proc.returncode == 1
    first = min(where.values())
    assert f'{bad}:{first}: bad UTF-8' in proc.stderr
    assert '--skip' in proc.stderr  # tells the user what to do


@pytest.mark.parametrize('category', list(REASONS))
def test_check_strict_reports_each_problem_with_its_line(tmp_path, category):
    # good, good, BAD, good: every kind of problem must be reported at line 3 with its own reason
    sample = tmp_path / 'sample.jsonl'
    where = corrupted_sample(sample)
    lines = sample.read_bytes().split(b'\n')
    good, bad_line = lines[0], lines[where[category] - 1]
    path = tmp_path / f'one_{category.replace(" ", "_")}.jsonl'
    path.write_bytes(b'\n'.join([good, good, bad_line, good]) + b'\n')
    proc = run_data('--check', path, '--kind', 'sft', '--quiet')
    assert proc.returncode == 1, proc.stdout
    message = proc.stderr.splitlines()[0]
    assert message.startswith(f'{path}:3: ') and REASONS[category] in message, proc.stderr


def test_check_skip_counts_by_reason(tmp_path):
    bad = tmp_path / 'bad_sft.jsonl'
    where = corrupted_sample(bad)
    proc = run_data('--check', bad, '--kind', 'sft', '--skip', '--quiet')
    assert proc.returncode == 0, proc.stderr
    assert '9 lines, 3 valid, 1 blank, 5 skipped' in proc.stdout
    for category, line in where.items():
        assert f'skipped           1  {category}' in proc.stdout
        assert f'{bad}:{line}: ' in proc.stdout  # the first problems are listed with their lines


TOOL_FILES = {'minimind2': Path(__file__).resolve().parent / 'data' / 'sft_functions_minimind2.jsonl',
              'minimind3': Path(__file__).resolve().parent / 'data' / 'sft_tools_minimind3.jsonl'}


@pytest.mark.parametrize('which', list(TOOL_FILES))
def test_check_tool_files(tmp_path, which):
    "Both tool formats pass the check; a tool list or call that is not the template's shape is one line naming file and line."
    path = TOOL_FILES[which]
    proc = run_data('--check', path, '--quiet')   # the kind is guessed: sft
    assert proc.returncode == 0, proc.stderr
    assert f'{path} (sft): 8 lines, 8 valid' in proc.stdout
    lines = path.read_text(encoding='utf-8').splitlines()
    record = json.loads(lines[1])
    if which == 'minimind2': record['conversations'][0]['functions'] = {'name': 'calculate_math'}   # one object, not a list
    else: record['conversations'][2]['tool_calls'] = record['conversations'][2]['tool_calls'][:-1]  # cut short: not JSON
    bad = tmp_path / path.name
    bad.write_text('\n'.join([lines[0], json.dumps(record, ensure_ascii=False), *lines[2:]]) + '\n', encoding='utf-8')
    proc = run_data('--check', bad, '--quiet')
    assert proc.returncode == 1
    reason = "conversations[1] 'functions' should be a list" if which == 'minimind2' else "conversations[3] 'tool_calls' is not valid JSON"
    assert proc.stderr.splitlines()[0].startswith(f'{bad}:2: {reason}'), proc.stderr
    proc = run_data('--check', bad, '--skip', '--quiet')
    assert proc.returncode == 0 and '8 lines, 7 valid' in proc.stdout, proc.stdout


def test_check_skip_with_nothing_valid_fails(tmp_path):
    path = tmp_path / 'all_bad.jsonl'
    path.write_text('not json\n{"text": ""}\n', encoding='utf-8')
    proc = run_data('--check', path, '--kind', 'pretrain', '--skip', '--quiet')
    assert proc.returncode == 1
    assert 'no valid pretrain records' in proc.stderr


def test_check_reason_without_tags_is_a_warning(tmp_path):
    path = tmp_path / 'r1_mix.jsonl'
    records = [{'conversations': [{'role': 'user', 'content': '1+1?'},
                                  {'role': 'assistant', 'content': '<think>\n1+1=2\n</think>\n<answer>\n2\n</answer>'}]},
               {'conversations': [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]}]
    path.write_text(''.join(json.dumps(r) + '\n' for r in records), encoding='utf-8')
    proc = run_data('--check', path, '--kind', 'reason', '--quiet')
    assert proc.returncode == 0, proc.stderr
    assert '2 valid' in proc.stdout and 'no think/answer tags' in proc.stdout and f'{path}:2: warning' in proc.stdout


def test_check_usage_errors(tmp_path):
    missing = run_data('--check', tmp_path / 'nope.jsonl', '--quiet')
    assert missing.returncode == 1 and 'no such file' in missing.stderr
    (tmp_path / 'x.jsonl').write_text('{"text": "hi"}\n', encoding='utf-8')
    wrong_kind = run_data('--check', tmp_path / 'x.jsonl', '--kind', 'chat', '--quiet')
    assert wrong_kind.returncode == 1 and 'unknown --kind' in wrong_kind.stderr
    wrong_size = run_data('--out', tmp_path / 'o', '--size', 'huge', '--quiet')
    assert wrong_size.returncode == 1 and 'tiny, small, default, large' in wrong_size.stderr


def test_help_lists_every_flag():
    proc = run_data('--help')
    assert proc.returncode == 0
    for flag in ('--out', '--seed', '--size', '--check', '--kind', '--skip', '--quiet'): assert flag in proc.stdout


@pytest.mark.parametrize('name,n', [('rlaif_mini_minimind2.jsonl', 24), ('rlaif_minimind3.jsonl', 20)])
def test_check_reads_minimind_rlaif_files(name, n):
    "MiniMind's RL prompt files (an empty, 'None' or '无' reply slot; roles by position where a turn has none) are the rlaif kind."
    proc = run_data('--check', Path(__file__).parent / 'data' / name, '--quiet')
    assert proc.returncode == 0, proc.stderr
    assert f'(rlaif): {n} lines, {n} valid' in proc.stdout, proc.stdout


def test_check_rlaif_names_a_record_without_a_reply_slot(tmp_path):
    path = tmp_path / 'rlaif.jsonl'
    lines = [{'conversations': [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': ''}]},
             {'conversations': [{'content': 'q'}, {'content': 'a'}, {'content': 'follow-up'}]}]   # 3rd turn: a user's, by position
    path.write_text(''.join(json.dumps(r) + '\n' for r in lines), encoding='utf-8')
    proc = run_data('--check', path, '--quiet')
    assert proc.returncode == 1
    assert f'{path}:2: conversations[3] (user) should be the reply slot' in proc.stderr, proc.stderr
