"""lm-eval's per-document Jinja templates are compiled once per process."""

from __future__ import annotations


def test_templates_compile_once_and_render_the_same():
    from lm_eval import utils

    from optimizer.evaluate.harness import _compile_templates_once

    template = "Q: {{question}}\nA:{{ ' ' ~ answer | regex_replace('x', 'y') }}"
    doc = {"question": "2+2?", "answer": "fxur"}
    before = utils.env.from_string(template).render(**doc)
    _compile_templates_once()
    _compile_templates_once()  # idempotent: one wrapper, one cache
    assert utils.apply_template.compiles_once
    assert utils.apply_template(template, doc) == before == "Q: 2+2?\nA: fyur"
    info = utils.apply_template.compiled.cache_info()
    for _ in range(5):
        assert utils.apply_template(template, {**doc, "question": "3+3?"}) != before
    after = utils.apply_template.compiled.cache_info()
    assert after.hits == info.hits + 5 and after.misses == info.misses  # compiled once
