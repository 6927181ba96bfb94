#!/usr/bin/env python3
"""The chat page of `minimind_serve` in headless Chromium, as a user would use it.

    python tools/check_chat_page.py --screenshots shots/

Two servers, each in this process on a free localhost port:
  1. a fresh tiny model: the page loads, sends a question (its `?ask=` link), streams the reply into an assistant
     bubble and finishes it; no console error, no uncaught exception; the screenshot is not blank;
  2. a stand-in for a tool-trained model (it calls person_age, then answers with the result), served with the toy
     world's tools: the page shows the call, runs it through the server (/v1/tools/call), shows the result and the
     answer that quotes it.
Exit 0 when both hold, 1 with one line per problem otherwise."""
import argparse, base64, json, os, re, subprocess, sys, tempfile, time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_site import blank_reason, find_chromium   # noqa: E402


class Browser:
    "Headless Chromium driven over `--remote-debugging-pipe` (DevTools JSON, NUL-separated, fd 3 in and fd 4 out): no extra package."
    def __init__(self, browser:str):
        to_child, from_child = os.pipe(), os.pipe()
        child_in, child_out = os.dup(to_child[0]), os.dup(from_child[1])   # above 4: the dup2s below cannot clobber them
        def wire(): os.dup2(child_in, 3); os.dup2(child_out, 4)
        self.profile = tempfile.TemporaryDirectory(prefix='chromium-profile-')
        self.proc = subprocess.Popen([browser, '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                                      '--disable-background-networking', '--no-first-run', '--disable-extensions', '--disable-sync',
                                      '--remote-debugging-pipe', f'--user-data-dir={self.profile.name}', 'about:blank'],
                                     preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (*to_child, *from_child, child_in, child_out):
            if fd not in (to_child[1], from_child[0]): os.close(fd)
        self.out, self.inp, self.buffer, self.last, self.events = to_child[1], from_child[0], b'', 0, []

    def _message(self) -> dict:
        while b'\0' not in self.buffer:
            chunk = os.read(self.inp, 1 << 16)
            if not chunk: raise RuntimeError('chromium closed its DevTools pipe (it crashed or could not start)')
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b'\0', 1)
        return json.loads(raw)

    def send(self, method:str, session:str=None, **params) -> dict:
        "Send one DevTools command and return its result; events that arrive meanwhile are kept in `events`."
        self.last += 1
        os.write(self.out, json.dumps({'id': self.last, 'method': method, 'params': params, **({'sessionId': session} if session else {})}).encode() + b'\0')
        while True:
            reply = self._message()
            if reply.get('id') == self.last:
                if 'error' in reply: raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get('result', {})
            self.events.append(reply)

    def open(self, url:str, width:int=1000, height:int=800) -> str:
        "A new page at `url` with console and exception events on; returns its session id."
        target = self.send('Target.createTarget', url='about:blank')['targetId']
        session = self.send('Target.attachToTarget', targetId=target, flatten=True)['sessionId']
        for domain in ('Runtime', 'Page'): self.send(f'{domain}.enable', session)
        self.send('Emulation.setDeviceMetricsOverride', session, width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.send('Page.navigate', session, url=url)
        return session

    def evaluate(self, session:str, expression:str):
        return self.send('Runtime.evaluate', session, expression=expression, returnByValue=True).get('result', {}).get('value')

    def errors(self) -> list:
        "Console errors and uncaught exceptions seen so far."
        out = []
        for e in self.events:
            if e.get('method') == 'Runtime.consoleAPICalled' and e['params'].get('type') == 'error':
                out.append('console.error: ' + ' '.join(str(a.get('value', a.get('description', ''))) for a in e['params'].get('args', [])))
            if e.get('method') == 'Runtime.exceptionThrown':
                out.append('exception: ' + e['params']['exceptionDetails'].get('exception', {}).get('description', e['params']['exceptionDetails'].get('text', '')))
        return out

    def screenshot(self, session:str, png:Path):
        png.write_bytes(base64.b64decode(self.send('Page.captureScreenshot', session, format='png')['data']))

    def close(self):
        try: self.send('Browser.close')
        except (RuntimeError, OSError): pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill()
        for fd in (self.out, self.inp): os.close(fd)
        self.profile.cleanup()


BUBBLES = "JSON.stringify({state: document.body.dataset.state, bubbles: [...document.querySelectorAll('.msg')].map(b => ({role: b.className.split(' ').pop(), text: b.innerText, done: b.dataset.done || ''}))})"

def chat_until_idle(browser:Browser, url:str, answers:int, timeout:float=120) -> tuple:
    "Open the page at `url` (it sends its `?ask=`), wait until `answers` assistant replies are done and the page is idle: `(session, bubbles)`."
    session, deadline = browser.open(url), time.monotonic() + timeout
    while True:
        page = json.loads(browser.evaluate(session, BUBBLES) or '{"bubbles": []}')
        finished = [b for b in page['bubbles'] if b['role'] == 'assistant' and b['done'] == '1']
        if (page.get('state') == 'idle' and len(finished) >= answers) or time.monotonic() > deadline: return session, page['bubbles']
        time.sleep(0.2)


def tool_using_model(model, tok, person:str):
    "The tiny model's weights, replying from a script: a person_age call, or an answer quoting the last tool result."
    import torch
    from minimind.model import MiniMindForCausalLM
    class ToolUsingLM(MiniMindForCausalLM):
        def stream_generate(self, input_ids, max_new_tokens=256, eos_token_id=None, **sampling):
            prompt = tok.decode(input_ids[0].tolist())
            if '<tool_response>' in prompt.rsplit('<|im_start|>user', 1)[-1]:
                reply = f"{person} is {prompt.rsplit('<tool_response>' + chr(10), 1)[1].split(chr(10) + '</tool_response>')[0]} years old."
            else: reply = f'<tool_call>\n{{"name": "person_age", "arguments": {{"name": "{person}"}}}}\n</tool_call>'
            for i in tok.encode(reply) + [eos_token_id]: yield torch.tensor([i])
    scripted = ToolUsingLM(model.config).eval(); scripted.load_state_dict(model.state_dict())
    return scripted


def check(out:Path, browser_path:str, timeout:float=120) -> list:
    "Both scenarios; one line per problem (empty: the page works). `timeout`: seconds to wait for each conversation."
    import torch
    from minimind.config import MiniMindConfig
    from minimind.corpus import ToyWorld
    from minimind.model import MiniMindForCausalLM
    from minimind.serve import BackgroundServer, create_app
    from minimind.tokenizer import load_tokenizer
    from minimind.tools import world_tools
    problems, out = [], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer()
    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig.from_preset('tiny', vocab_size=tok.vocab_size)).eval()
    world = ToyWorld(); person = world.people[0].en; age = world.lookup('age', world.people[0]).obj.en
    browser = Browser(browser_path)
    try:
        with BackgroundServer(create_app(model, tok, model_name='tiny')) as server:
            session, bubbles = chat_until_idle(browser, f"{server.url}/?ask={quote('Who is ' + person + '?')}&max_tokens=12&temperature=0", 1, timeout)
            roles = [b['role'] for b in bubbles]
            if roles[:2] != ['user', 'assistant']: problems.append(f"plain chat: the page shows {roles or 'no messages'}, not a question and a reply")
            elif bubbles[1]['done'] != '1' or not bubbles[1]['text'].replace('assistant', '', 1).strip():
                problems.append(f"plain chat: the reply never finished, or is empty ({bubbles[1]})")
            browser.screenshot(session, out / 'chat_page.png')
            if (reason := blank_reason(out / 'chat_page.png')): problems.append(f"{out / 'chat_page.png'} looks blank: {reason}")
        with BackgroundServer(create_app(tool_using_model(model, tok, person), tok, model_name='tools', tools=world_tools(world))) as server:
            session, bubbles = chat_until_idle(browser, f"{server.url}/?ask={quote('How old is ' + person + '?')}&temperature=0", 2, timeout)
            roles = [b['role'] for b in bubbles]
            if roles != ['user', 'assistant', 'tool', 'assistant']:
                problems.append(f"tool chat: the page shows {roles}, not question, call, result, answer")
            else:
                call, result, answer = (re.sub(r'\s+', ' ', b['text']) for b in bubbles[1:])
                if f'person_age({{"name": "{person}"}})' not in call: problems.append(f"tool chat: the call is not shown ({call!r})")
                if f'person_age: {age}' not in result: problems.append(f"tool chat: the result is not shown ({result!r})")
                if f'{person} is {age} years old.' not in answer: problems.append(f"tool chat: the answer does not quote the result ({answer!r})")
            browser.screenshot(session, out / 'chat_page_tools.png')
            if (reason := blank_reason(out / 'chat_page_tools.png')): problems.append(f"{out / 'chat_page_tools.png'} looks blank: {reason}")
        problems += [f"the page logged {e}" for e in browser.errors()]
    finally: browser.close()
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--screenshots', default='_proc/screenshots', help='folder for the screenshots of the chat page')
    args = p.parse_args(argv)
    browser = find_chromium()
    if browser is None:
        print("check_chat_page: no Chromium found (Debian: apt-get install chromium)", file=sys.stderr); return 1
    problems = check(Path(args.screenshots), browser)
    for line in problems: print(f"check_chat_page: {line}", file=sys.stderr)
    if not problems: print(f"ok: the chat page streams a reply and runs a tool round trip in {browser}; screenshots in {args.screenshots}")
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
