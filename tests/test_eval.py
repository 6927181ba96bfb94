"""`minimind_eval` (chapter 18): the CLI end to end on a fresh tiny model, perplexity against a hand computation,
the repetition measures on hand strings, the multiple-choice scorer on rigged models, clear errors."""
import json, math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from minimind.config import MiniMindConfig
from minimind.corpus import default_corpus, cache_root
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import load_tokenizer
from minimind.eval import (perplexity, distinct_n, repeated_ngram_rate, is_looping, repetition_report, read_multiple_choice,
                           multiple_choice_accuracy, mc_prompt, results_table, parse_tasks, MC_LETTERS)

from helpers import run

REPO = Path(__file__).resolve().parents[1]
EVAL = 'minimind.eval:minimind_eval'
MC_FILE = REPO / 'tests' / 'data' / 'eval_mc.jsonl'
DOCS = ["Toma lives in Saltport. Toma is a baker and has a cat.", "Lina has a dog.", "托马住在盐港。托马是面包师。"]
torch.set_num_threads(1)


@pytest.fixture(scope='module')
def tok(): return load_tokenizer()


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory, tok):
    "A fresh tiny model saved with its tokenizer, plus a cache folder that shares the embedded corpus but not its token shards."
    root = tmp_path_factory.mktemp('eval')
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=tok.vocab_size)).eval()
    model.save_pretrained(root / 'model'); tok.save_pretrained(root / 'model')
    default_corpus()  # built once in the real cache; the subprocesses see it through a link
    (root / 'cache').mkdir()
    for entry in cache_root().iterdir():
        if entry.name.startswith('corpus-'): (root / 'cache' / entry.name).symlink_to(entry)
    (root / 'docs.jsonl').write_text(''.join(json.dumps({'text': d}, ensure_ascii=False) + '\n' for d in DOCS))
    return SimpleNamespace(root=root, dir=root / 'model', model=model, cache=root / 'cache', docs=root / 'docs.jsonl')


def hand_ppl(model, tok, docs, window):
    "exp of the token-weighted mean of the model's own loss over each document's windows (bos + text + eos)."
    total = count = 0
    for d in docs:
        ids = [tok.bos_token_id] + tok.encode(d) + [tok.eos_token_id]
        for s in range(0, len(ids), window):
            chunk = torch.tensor([ids[s:s + window]])
            if chunk.shape[1] < 2: continue
            with torch.no_grad(): total += model(chunk, labels=chunk).loss.item() * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    return math.exp(total / count), count


def test_cli_end_to_end_with_json(ckpt, tok):
    out = ckpt.root / 'results.json'
    r = run(EVAL, ckpt.dir, '--data', ckpt.docs, '--task', 'ppl,cloze,facts,format,repetition,mc', '--limit', '3',
             '--max_new_tokens', '8', '--json', out, '--device', 'cpu', cache=ckpt.cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '| model | ppl ↓ |' in r.stdout                       # the markdown table is printed
    results = json.loads(out.read_text())
    assert list(results['tasks']) == ['ppl', 'cloze', 'facts', 'format', 'repetition', 'mc']
    for task in ('cloze', 'facts', 'format', 'mc'):
        assert results['tasks'][task]['n'] == 3 and 0 <= results['tasks'][task]['accuracy'] <= 1
    assert results['tasks']['repetition']['n'] == 6              # the replies of facts and format
    expected, count = hand_ppl(ckpt.model, tok, DOCS, 256)
    assert results['tasks']['ppl']['tokens'] == count
    assert results['tasks']['ppl']['ppl'] == pytest.approx(expected, rel=1e-4)
    assert abs(math.log(expected) - math.log(tok.vocab_size)) < 0.5  # untrained: about a uniform guess


def test_perplexity_equals_the_models_loss_with_windows(ckpt, tok):
    for window in (256, 8):  # 8: every document is cut into windows whose first token is not scored
        got = perplexity(ckpt.model, tok, ckpt.docs, max_seq_len=window, cache_dir=ckpt.root / 'tokens', progress=False)
        expected, count = hand_ppl(ckpt.model, tok, DOCS, window)
        assert got['tokens'] == count and got['ppl'] == pytest.approx(expected, rel=1e-4)


def test_chat_perplexity_scores_only_the_replies(ckpt, tok):
    chat = ckpt.root / 'chat.jsonl'
    reply = 'Toma lives in Saltport.'
    chat.write_text(json.dumps({'conversations': [{'role': 'user', 'content': 'Where does Toma live?'},
                                                  {'role': 'assistant', 'content': reply}]}) + '\n')
    got = perplexity(ckpt.model, tok, chat, cache_dir=ckpt.root / 'tokens', progress=False)
    ids = tok.encode(tok.apply_chat_template([{'role': 'user', 'content': 'Where does Toma live?'}], add_generation_prompt=True))
    target = tok.encode(reply) + [tok.eos_token_id]
    with torch.no_grad():
        logprobs = ckpt.model(torch.tensor([ids + target])).logits[0].log_softmax(-1)
    nll = -sum(logprobs[len(ids) - 1 + k, t].item() for k, t in enumerate(target)) / len(target)
    assert got['kind'] == 'sft' and got['tokens'] == len(target)
    assert got['nll'] == pytest.approx(nll, rel=1e-4)


def test_distinct_n_and_repeated_ngrams_by_hand():
    assert distinct_n(['the cat the cat'], 1) == 2 / 4
    assert distinct_n(['the cat the cat'], 2) == 2 / 3
    assert distinct_n(['a b c', 'a b d'], 2) == 3 / 4 and distinct_n(['a b c', 'd e f'], 3) == 1.0
    assert repeated_ngram_rate(['a b a b a b'], 2) == 3 / 5
    assert repeated_ngram_rate(['a b c d', 'a b c d'], 2) == 0.0   # repeating another reply is no loop
    assert repeated_ngram_rate(['x x x x'], 1) == 3 / 4
    assert is_looping('I am MiniMind . I am MiniMind . I am MiniMind . I am')
    assert not is_looping('I am MiniMind . I am MiniMind . I am MiniMind . I am', ended=True)
    assert not is_looping('one two three four five six seven eight nine ten')
    report = repetition_report(['I am MiniMind.<|im_end|>', 'ha ha ha ha ha ha ha ha ha ha'])
    assert report['looping'] == 0.5 and report['ended'] == 0.5 and report['distinct_1'] == 4 / 13


class Oracle(torch.nn.Module):
    "A rigged model: at each row's last position it prefers the letter `choose(question)`, read from the prompt it is given."
    def __init__(self, tok, records, choose):
        super().__init__(); self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.letter_of = tok, {r['question']: choose(r) for r in records}
    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kw):
        logits = torch.zeros(*input_ids.shape, self.tok.vocab_size)
        for b, row in enumerate(input_ids.tolist()):
            text = self.tok.decode([t for t in row if t != self.tok.pad_token_id])
            letter = next(l for q, l in self.letter_of.items() if q in text)
            logits[b, :, self.tok.encode(letter)[0]] = 10.0
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def test_multiple_choice_scorer_on_rigged_models(tok):
    records = read_multiple_choice(MC_FILE)
    assert [MC_LETTERS[r['answer']] for r in records] == list('BCABBD')
    assert mc_prompt(records[0]).endswith('D. Rockholm\nAnswer:') and mc_prompt(records[3]).endswith('答案：')
    right = Oracle(tok, records, lambda r: MC_LETTERS[r['answer']])
    wrong = Oracle(tok, records, lambda r: MC_LETTERS[(r['answer'] + 1) % len(r['options'])])
    always_b = Oracle(tok, records, lambda r: 'B')
    for chat in (False, True):
        assert multiple_choice_accuracy(right, tok, records, chat=chat, batch_size=4)[0] == 1.0  # batches of 4: left padding
        assert multiple_choice_accuracy(wrong, tok, records, chat=chat)[0] == 0.0
    acc, rows = multiple_choice_accuracy(always_b, tok, records)
    assert acc == 3 / 6 and {r['pred'] for r in rows} == {'B'}


def test_bad_multiple_choice_answer_is_named(tmp_path, tok):
    bad = tmp_path / 'bad.jsonl'
    bad.write_text(MC_FILE.read_text().splitlines()[0] + '\n' + json.dumps({'question': 'q', 'A': 'x', 'B': 'y', 'answer': 'E'}) + '\n')
    with pytest.raises(ValueError, match=r'bad.jsonl:2: answer'): read_multiple_choice(bad)


def test_clear_errors(ckpt):
    r = run(EVAL, ckpt.root / 'no_such_model', cache=ckpt.cache)
    assert r.returncode != 0 and 'no such folder' in r.stderr and 'Traceback' not in r.stderr
    r = run(EVAL, ckpt.dir, '--data', ckpt.root / 'missing.jsonl', '--task', 'mc', cache=ckpt.cache)
    assert r.returncode != 0 and 'missing.jsonl: no such file' in r.stderr and 'Traceback' not in r.stderr
    with pytest.raises(ValueError, match='unknown task'): parse_tasks('ppl,speed')


def test_help_lists_the_flags():
    r = run(EVAL, '--help', cache=cache_root())
    assert r.returncode == 0
    for flag in ('ckpt_dir', '--data', '--task', '--limit', '--max-new-tokens', '--batch-size', '--json', '--device', '--max-seq-len'):
        assert flag in r.stdout, flag


def test_results_table_rows_per_model():
    record = {'model': 'x', 'tasks': {'ppl': {'ppl': 12.34}, 'facts': {'accuracy': 0.5}, 'mc': {'accuracy': 0.25}}}
    table = results_table({'pretrain': record, 'sft': record}).splitlines()
    assert table[0] == '| model | ppl ↓ | facts | mc |'
    assert table[2] == '| pretrain | 12.3 | 50.0% | 25.0% |' and len(table) == 4


# ---------------------------------------------------------------- C-Eval and CMMLU files, as published

DATA = REPO / 'tests' / 'data'


@pytest.fixture(scope='module')
def minimind2_model(tmp_path_factory):
    "MiniMind2's own .pth layout (the reference dense_tiny weights, fp16) with its tokenizer, and the model loaded by hand."
    from helpers import minimind2_pth
    from minimind.stage import checkpoint_tokenizer
    pth = minimind2_pth(tmp_path_factory.mktemp('mm2') / 'out')
    model = MiniMindForCausalLM(MiniMindConfig.load(pth.parent))
    model.load_state_dict({k.removeprefix('module.'): v.float() for k, v in torch.load(pth, weights_only=True).items()})
    return pth, model.eval(), checkpoint_tokenizer(pth.parent)


def _read_csv_by_hand(path):
    "(question, options, answer letter) rows of a C-Eval or CMMLU CSV, by the csv module alone."
    import csv
    with open(path, newline='', encoding='utf-8-sig') as f: rows = list(csv.reader(f))
    names = [h.lower() for h in rows[0]]
    return [(r[names.index('question')], [r[names.index(l.lower())] for l in 'ABCD'], r[names.index('answer')]) for r in rows[1:]]


def _accuracy_by_hand(model, tok, path, dev_path=None, shots=0):
    "A subject's accuracy computed from scratch: k solved dev examples, the question, the letter with the largest next-token logit."
    block = lambda q, opts: '\n'.join([q] + [f'{l}. {o}' for l, o in zip('ABCD', opts)] + ['答案：'])
    prefix = ''.join(block(q, o) + a + '\n\n' for q, o, a in _read_csv_by_hand(dev_path)[:shots]) if shots else ''
    letters = [tok.encode(l)[0] for l in 'ABCD']
    right = 0
    for q, opts, answer in _read_csv_by_hand(path):
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(prefix + block(q, opts))])
        with torch.no_grad(): logits = model(ids).logits[0, -1]
        right += 'ABCD'[int(logits[letters].argmax())] == answer
    return right / len(_read_csv_by_hand(path))


@pytest.mark.parametrize('bench,data,dev,shots', [('ceval', 'ceval/val', 'ceval/dev', 2), ('cmmlu', 'cmmlu/test', 'cmmlu/dev', 2),
                                                  ('ceval', 'ceval/val/computer_network_val.csv', None, 0)])
def test_benchmark_files_through_the_cli(minimind2_model, tmp_path, bench, data, dev, shots):
    "minimind_eval full_sft_64.pth --data <C-Eval or CMMLU folder> --dev <dev folder> --shots k: each subject, the average."
    pth, model, tok = minimind2_model
    out = tmp_path / 'r.json'
    r = run(EVAL, pth, '--data', DATA / data, *(('--dev', DATA / dev, '--shots', shots) if dev else ()), '--json', out)
    assert r.returncode == 0, r.stderr[-3000:]
    mc = json.loads(out.read_text())['tasks']['mc']
    files = [DATA / data] if data.endswith('.csv') else sorted((DATA / data).glob('*.csv'))
    want = {}
    for f in files:
        subject = f.stem.removesuffix('_val')
        dev_path = (DATA / dev / (f'{subject}_dev.csv' if bench == 'ceval' else f.name)) if dev else None
        want[subject] = _accuracy_by_hand(model, tok, f, dev_path, shots)
    assert {s: v['accuracy'] for s, v in mc['subjects'].items()} == pytest.approx(want)
    assert mc['accuracy'] == pytest.approx(sum(want.values()) / len(want))        # the mean over subjects
    assert mc['n'] == sum(len(_read_csv_by_hand(f)) for f in files) and mc['shots'] == shots
    if len(files) > 1: assert 'average' in r.stdout and all(s in r.stdout for s in want)


def test_bad_benchmark_csv_gets_one_line(tmp_path, ckpt):
    "A missing column or an answer that is no option letter: one line naming the file and line, no traceback."
    folder = tmp_path / 'val'; folder.mkdir()
    cases = {'no_answer_val.csv': ('id,question,A,B,C,D\n0,q,a,b,c,d\n', ':1: header', "no column answer"),
             'bad_letter_val.csv': ('id,question,A,B,C,D,answer\n0,q,a,b,c,d,A\n1,"two\nlines",a,b,c,d,E\n', ':3: answer', "'E' is not one of A, B, C, D"),
             'short_row_val.csv': ('id,question,A,B,C,D,answer\n0,q,a,b,c,A\n', ':2:', '6 fields, the header has 7')}
    for name, (text, where, what) in cases.items():
        (folder / name).write_text(text, encoding='utf-8')
        r = run(EVAL, ckpt.dir, '--data', folder / name, cache=ckpt.cache)
        err = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(err) == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
        assert f'{folder / name}{where}' in err[0] and what in err[0], err[0]
    r = run(EVAL, ckpt.dir, '--data', DATA / 'ceval' / 'val', '--shots', '5', cache=ckpt.cache)
    assert r.returncode == 2 and '--shots 5 needs --dev' in r.stderr


def test_eval_inference_rope_scaling(ckpt, tok):
    "--inference-rope-scaling scores the model with YaRN on: the perplexity changes from the plain run's and equals the in-process YaRN model's."
    from minimind.eval import evaluate
    args = ('--data', ckpt.docs, '--task', 'ppl', '--json')
    results = {}
    for flag in ((), ('--inference-rope-scaling',)):
        out = ckpt.root / f"ppl{len(flag)}.json"
        r = run(EVAL, ckpt.dir, *args, out, *flag, cache=ckpt.cache)
        assert r.returncode == 0, r.stderr[-2000:]
        results[flag] = json.loads(out.read_text())['tasks']['ppl']['ppl']
    assert results[()] != results[('--inference-rope-scaling',)]
    here = evaluate(str(ckpt.dir), tasks='ppl', data=ckpt.docs, inference_rope_scaling=True, progress=False, cache_dir=ckpt.cache)
    assert here['tasks']['ppl']['ppl'] == pytest.approx(results[('--inference-rope-scaling',)], rel=1e-5)
