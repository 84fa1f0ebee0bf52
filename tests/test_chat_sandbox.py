"""The bounds chat templates render under (xllm/chat_sandbox.py): each way a template could
hang or exhaust memory ends in a ValueError naming the template and the bound; ordinary
templates are untouched (test_chat.py compares them with transformers)."""
from pathlib import Path

import pytest

from xllm.chat import ChatTemplate
from xllm.chat_sandbox import RenderLimits

TEMPLATES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "templates"
USER = [{"role": "user", "content": "hi"}]
STEPS, SIZE, CREATED, INT = "steps", "more than the limit of", "in all", "bits"

ATTACKS = {
    "nested loops": ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", STEPS),
    "nested filtered loops": ("{% for a in range(100000) %}{% for b in range(100000) if b < 0 %}"
                              "{% endfor %}{% endfor %}", STEPS),
    "exponential macro": ("{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
                          "{{ f(40) }}", STEPS),
    "recursive loop": ("{% for x in [1] recursive %}{{ loop(range(100000)) }}{% endfor %}", "Recursion"),
    "string repeat": ("{{ 'x' * 10**9 }}", "repeated value of 1,000,000,000 characters"),
    "list repeat": ("{{ [0] * 10**7 }}", "repeated value of 10,000,000 items"),
    "power": ("{{ 9 ** 999999999 }}", INT),
    "squaring": ("{% set ns = namespace(x=3) %}{% for i in range(60) %}{% set ns.x = ns.x * ns.x %}"
                 "{% endfor %}", INT),
    "center": ("{{ 'x'|center(10**9) }}", "padded string"),
    "ljust": ("{{ 'x'.ljust(10**9) }}", "padded string"),
    "str.format width": ("{{ '{:>999999999}'.format(1) }}", "formatted field"),
    "nested format width": ("{{ '{0:>{1}}'.format('x', 999999999) }}", "formatted field"),
    "printf width": ("{{ '%999999999d' % 1 }}", "formatted field"),
    "printf star": ("{{ '%*d' % (999999999, 1) }}", "formatted field"),
    "format filter": ("{{ '%999999999d'|format(1) }}", "formatted field"),
    "doubling list printed": ("{% set ns = namespace(x=[]) %}{% for i in range(60) %}{% set ns.x = [ns.x, ns.x] %}"
                              "{% endfor %}{{ ns.x }}", "prints as more than"),
    "doubling lists compared": ("{% set ns = namespace(x=[], y=[]) %}{% for i in range(60) %}"
                                "{% set ns.x = [ns.x, ns.x] %}{% set ns.y = [ns.y, ns.y] %}{% endfor %}"
                                "{{ ns.x == ns.y }}", "prints as more than"),
    "doubling tuple hashed": ("{% set ns = namespace(t=()) %}{% for i in range(60) %}{% set ns.t = (ns.t, ns.t) %}"
                              "{% endfor %}{{ {ns.t: 1} }}", "prints as more than"),
    "doubling list in a dict view": ("{% set ns = namespace(x=[]) %}{% for i in range(60) %}"
                                     "{% set ns.x = [ns.x, ns.x] %}{% endfor %}{{ {'a': ns.x}.items() }}",
                                     "prints as more than"),
    "concat doubling": ("{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}", "concatenated string"),
    "replace empty": ("{{ ('x' * 1000000)|replace('', 'yyyyyyyyyy') }}", "replaced string"),
    "join": ("{{ ('x' * 100000)|join('y' * 1000) }}", "joined string"),
    "sum of lists": ("{{ ([[0]] * 100000)|sum(start=[]) }}", CREATED),
    "lipsum": ("{{ lipsum(100000000) }}", "lorem ipsum"),
    "slice filter": ("{{ [1]|slice(10**9)|list }}", "slice of"),
    "batch filter": ("{{ [1]|batch(10**9, 0)|list }}", "batch of"),
    "indent": ("{{ ('x\n' * 100000)|indent(100000) }}", "indented string"),
    "expandtabs": ("{{ ('\t' * 100000).expandtabs(100000) }}", "expanded string"),
    "tojson indent": ("{% set ns = namespace(x=[1]) %}{% for i in range(500) %}"
                      "{% set ns.x = [ns.x, range(100)|list] %}{% endfor %}{{ ns.x|tojson(indent=100) }}", "JSON text"),
    "slices copied": ("{% set s = 'x' * 3000000 %}{% for i in range(100000) %}{% set y = s[::-1] %}{% endfor %}",
                      CREATED),
    "captured output": ("{% for i in range(100000) %}{% set x %}{{ messages }}{{ messages }}{% endset %}"
                        "{% endfor %}", STEPS),
    "strftime format": ("{{ strftime_now('%c' * 100000) }}", "strftime_now"),
    "unknown codec": ("{{ 'x'.encode('nope') }}", "LookupError"),
    "deep nesting": ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "cannot be compiled"),
    "nested loops in the source": ("{% for a in [1] %}" * 80 + "{% endfor %}" * 80, "loops nested 21 deep"),
    "nested ifs in the source": ("{% if a %}" * 160 + "{% endif %}" * 160, "blocks nested 101 deep"),
    "huge source": ("{{ 1 }}" * 20000, "140,000 characters, more than the limit of 65,536"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_a_value_error_naming_the_template_and_bound(name):
    source, needle = ATTACKS[name]
    with pytest.raises(ValueError) as info:
        ChatTemplate(source, origin="evil.jinja").render(USER)
    assert str(info.value).startswith("evil.jinja: ") and needle in str(info.value), str(info.value)


def test_output_limit_and_a_long_message():
    big = [{"role": "user", "content": "x" * 5_000_000}]
    with pytest.raises(ValueError, match=r"printed value of 5,000,000 characters"):
        ChatTemplate("{{ messages[0].content }}", origin="t.jinja").render(big)
    limits = RenderLimits(max_chars=10_000_000, max_created=40_000_000)
    assert len(ChatTemplate("{{ messages[0].content }}", limits=limits).render(big)) == 5_000_000


@pytest.mark.parametrize("name", ["meta-llama-Llama-3.2-3B-Instruct.jinja", "mistralai-Mistral-Nemo-Instruct-2407.jinja"])
def test_long_conversation_fits_default_steps_and_limits_are_the_templates(name):
    source = (TEMPLATES / name).read_text()
    conv = [{"role": ("user", "assistant")[i % 2], "content": f"message {i} " * 20} for i in range(1000)]
    text = ChatTemplate(source, "<s>", "</s>", name).render(conv, date_string="1 Jan 2000")
    assert "message 999" in text
    with pytest.raises(ValueError, match=r"more than 10,000 steps"):
        ChatTemplate(source, "<s>", "</s>", name, limits=RenderLimits(max_steps=10_000)).render(
            conv, date_string="1 Jan 2000")


def test_bounded_template_semantics_unchanged():
    # the rewritten nodes (loops, slices, comparisons, concatenation, dict keys) still mean the same
    source = ("{% for m in messages[::-1] if m.role != 'x' %}{{ loop.index }}:{{ m.content[1:3] ~ '|' }}"
              "{% if loop.last %}L{% endif %}{% endfor %}{{ {('a', 1): 2}[('a', 1)] }}{{ 'ab' in 'cab' }}"
              "{{ [1, 2, 3][:-1]|sum }}{{ '%03d' % 7 }}{{ '{:>4}'.format('x') }}{{ 2 ** 10 }}"
              "{{ messages|map(attribute='content')|join(',')|length }}"
              "{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(1) }}"
              "{% for x in [[1, [2]], [3]] recursive %}{{ x if x is number else loop(x) }}{% endfor %}")
    msgs = [{"role": "user", "content": "abcd"}, {"role": "assistant", "content": "wxyz"}]
    assert ChatTemplate(source).render(msgs) == "1:xy|2:bc|L2True3007   x10249<1>123"
