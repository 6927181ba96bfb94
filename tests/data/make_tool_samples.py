"Writes the two tool-calling sample files of tests/data (run once; the files are committed)."
import json
from pathlib import Path

def fn(name, description, properties, required):
    return {'name': name, 'description': description,
            'parameters': {'type': 'object', 'properties': properties, 'required': required}}

WEATHER = fn('get_weather', '查询指定城市的实时天气', {'city': {'type': 'string', 'description': '城市名称，例如 北京'}}, ['city'])
MATH = fn('calculate_math', 'Evaluate a math expression and return the result', {'expression': {'type': 'string', 'description': 'e.g. 256 * 37'}}, ['expression'])
TRANSLATE = fn('translate_text', '把文本翻译成目标语言', {'text': {'type': 'string'}, 'target_language': {'type': 'string', 'description': 'english, chinese, ...'}}, ['text', 'target_language'])
TIME = fn('get_current_time', 'Get the current time in a timezone', {'timezone': {'type': 'string', 'description': 'IANA name, e.g. Asia/Shanghai'}}, ['timezone'])

def call_text(name, arguments):
    "A call as MiniMind2's replies write it: the template's <tool_call> block, typed in the assistant's content."
    return '<tool_call>\n' + json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False) + '\n</tool_call>'

def system2(content, *functions): return {'role': 'system', 'content': content, 'functions': list(functions)}
def turn(role, content): return {'role': role, 'content': content}

minimind2 = [
    [system2('你是一个智能助手，可以调用工具来回答问题。', WEATHER, TIME), turn('user', '北京今天天气怎么样？'),
     turn('assistant', call_text('get_weather', {'city': '北京'}))],
    [system2('You are a helpful assistant with access to tools.', MATH), turn('user', 'What is 256 times 37?'),
     turn('assistant', call_text('calculate_math', {'expression': '256 * 37'}))],
    [system2('你是MiniMind，一个会使用工具的小模型。', TRANSLATE, WEATHER), turn('user', "把'你好世界'翻译成english"),
     turn('assistant', call_text('translate_text', {'text': '你好世界', 'target_language': 'english'}))],
    [system2('You are a helpful assistant with access to tools.', TIME, MATH), turn('user', '现在上海几点了？'),
     turn('assistant', call_text('get_current_time', {'timezone': 'Asia/Shanghai'}))],
    [system2('你是一个智能助手，可以调用工具来回答问题。', WEATHER), turn('user', '你好，你能做什么？'),
     turn('assistant', '你好！我可以帮你查询各个城市的天气。'), turn('user', '那查一下广州的天气吧。'),
     turn('assistant', call_text('get_weather', {'city': '广州'}))],
    [system2('You are a helpful assistant with access to tools.', WEATHER, TRANSLATE), turn('user', 'Is it raining in Paris?'),
     turn('assistant', 'Let me check the weather in Paris.\n' + call_text('get_weather', {'city': 'Paris'}))],
    [system2('你是MiniMind，一个会使用工具的小模型。', MATH), turn('user', '1加1等于几？'), turn('assistant', '1加1等于2，这个不需要调用工具。')],
    [turn('user', '介绍一下你自己。'), turn('assistant', '我是MiniMind，一个小巧的语言模型。')],
]

def system3(content, *functions):
    "minimind-3's system turn: the tool list as JSON text in `tools`."
    return {'role': 'system', 'content': content, 'tools': json.dumps([{'type': 'function', 'function': f} for f in functions], ensure_ascii=False)}
def calls(*pairs):
    "minimind-3's assistant turn that calls tools: empty content, the calls as JSON text in `tool_calls`."
    return {'role': 'assistant', 'content': '', 'tool_calls': json.dumps([{'name': n, 'arguments': a} for n, a in pairs], ensure_ascii=False, separators=(',', ':'))}
def result(value): return turn('tool', json.dumps(value, ensure_ascii=False, separators=(',', ':')))

minimind3 = [
    [system3('你是一个智能助手，可以调用工具。', WEATHER, TIME), turn('user', 'What is the weather in Paris?'),
     calls(('get_weather', {'city': 'Paris'})), result({'city': 'Paris', 'weather': 'sunny', 'temp': 18}),
     turn('assistant', 'Paris is sunny today, 18 °C.')],
    [system3('You are MiniMind, a helpful assistant that can use tools.', MATH), turn('user', '帮我算一下 256 乘以 37 等于多少'),
     calls(('calculate_math', {'expression': '256 * 37'})), result({'result': '9472'}), turn('assistant', '256 乘以 37 等于 9472。')],
    [system3('你是MiniMind，一个会使用工具的小模型。', TRANSLATE), turn('user', "把'你好世界'翻译成english"),
     calls(('translate_text', {'text': '你好世界', 'target_language': 'english'})), result({'translated_text': 'Hello World'}),
     turn('assistant', 'Hello World')],
    [system3('You are a helpful assistant.', WEATHER), turn('user', '北京和上海哪个更热？'),
     calls(('get_weather', {'city': '北京'}), ('get_weather', {'city': '上海'})),
     result({'city': '北京', 'temp': 21}), result({'city': '上海', 'temp': 25}), turn('assistant', '上海更热：25 °C，北京是 21 °C。')],
    [system3('你是一个智能助手，可以调用工具。', TIME, MATH), turn('user', '现在几点了？'),
     calls(('get_current_time', {'timezone': 'Asia/Shanghai'})), result({'datetime': '2026-03-15 17:18:22', 'timezone': 'Asia/Shanghai'}),
     turn('assistant', '现在是2026年3月15日17时18分22秒。'), turn('user', 'And 71 squared?'),
     calls(('calculate_math', {'expression': '71**2'})), result({'result': '5041'}), turn('assistant', '71 squared is 5041.')],
    [system3('You are a helpful assistant.', WEATHER, TRANSLATE), turn('user', 'Translate "good morning" into Chinese.'),
     {'role': 'assistant', 'content': 'Sure, let me translate it.', 'tool_calls': json.dumps([{'name': 'translate_text', 'arguments': {'text': 'good morning', 'target_language': 'chinese'}}])},
     result({'translated_text': '早上好'}), turn('assistant', '"good morning" 的中文是"早上好"。')],
    [system3('你是一个助手。', WEATHER), turn('user', '你好！'), turn('assistant', '你好！有什么可以帮你的吗？')],
    [turn('user', '你好'), turn('assistant', '你好！'), turn('user', '再见'), turn('assistant', '再见！')],
]

out = Path(__file__).resolve().parent
for name, records in [('sft_functions_minimind2.jsonl', minimind2), ('sft_tools_minimind3.jsonl', minimind3)]:
    (out / name).write_text(''.join(json.dumps({'conversations': c}, ensure_ascii=False) + '\n' for c in records), encoding='utf-8')
