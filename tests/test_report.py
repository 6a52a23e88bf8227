"""The eval report (baize/eval/report.py): both files, their tables and numbers, the near-chance warning,
results with pieces missing, and model text that tries to be HTML or to break the Markdown: inert,
checked statically and in a real headless Chromium (Debian's, through Playwright; no browser download).
The page's screenshot is kept in test-artifacts/eval-report.png."""
import copy
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from baize.eval.report import write_report

CHROMIUM = os.environ.get("BAIZE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SCRIPT = "<script>window.__xss=1</script>"
IMG = '<img src=x onerror="window.__xss=2">'
BREAK = "</div></td></table> | a | b |\n```\nnot code any more? ``` and ``inline``"


def _curve(n, start, eval_every=None):
    recs = [{"step": s, "epoch": s / n, "loss": round(start * 0.97 ** s + 0.02 * (s % 3), 4)} for s in range(1, n + 1)]
    if eval_every:
        recs += [{"step": s, "epoch": s / n, "eval_loss": round(start * 0.975 ** s + 0.05, 4)}
                 for s in range(eval_every, n + 1, eval_every)]
    return recs


def sample_results(consistency=0.71):
    cats = {"writing": {"win": 3, "tie": 1, "loss": 1, "win_rate": 0.7, "ci": [0.4, 1.0]},
            "reasoning": {"win": 2, "tie": 0, "loss": 4, "win_rate": 0.333, "ci": [0.0, 0.67]}}
    return {
        "title": "baize eval", "created": "2026-11-22T22:40:00Z", "n_questions": 20, "questions_file": "builtin",
        "judge": {"spec": "openai:gpt-4o-mini", "consistency": consistency, "pairs_judged": 120, "unparseable": 3,
                  "near_chance": consistency < 0.6},
        "models": {
            "base": {"spec": "default", "answers": 20, "mean_words": 85.2, "mean_tokens": 120.3,
                     "score": {"mean": 5.4, "ci": [4.9, 5.9], "n": 20,
                               "by_category": {"writing": 5.1, "reasoning": 5.7}},
                     "nll": {"data": 2.31, "reference": 2.87}, "loss_curve": None, "lineage": None},
            "v1": {"spec": "runs/v1", "answers": 20, "mean_words": 140.6, "mean_tokens": 190.0,
                   "score": {"mean": 6.1, "ci": [5.5, 6.7], "n": 20, "by_category": {"writing": 6.4, "reasoning": 5.8}},
                   "nll": {"data": 1.74, "reference": None}, "loss_curve": _curve(60, 2.4, eval_every=20),
                   "lineage": "runs/v1 <- default"},
            "v2": {"spec": "runs/v2", "answers": 20, "mean_words": 162.0, "mean_tokens": 221.5,
                   "score": {"mean": 6.8, "ci": [6.2, 7.4], "n": 19, "by_category": {"writing": 7.2, "reasoning": 6.3}},
                   "nll": None, "loss_curve": _curve(40, 1.9), "lineage": "runs/v2 <- runs/v1 <- default"}},
        "pairwise": [
            {"a": "v2", "b": "v1", "win": 9, "tie": 5, "loss": 6, "unjudged": 0, "n": 20, "win_rate": 0.575,
             "ci": [0.41, 0.73], "by_category": cats},
            {"a": "v1", "b": "base", "win": 14, "tie": 2, "loss": 3, "unjudged": 1, "n": 20, "win_rate": 0.789,
             "ci": [0.63, 0.92], "by_category": {"writing": {"win": 8, "tie": 1, "loss": 1, "win_rate": 0.85,
                                                             "ci": [0.65, 1.0]}}}],
        "questions": [
            {"question_id": "q1", "category": "writing",
             "turns": ["Write a haiku about autumn.", "Now make it about <b>winter</b>."], "reference": None,
             "answers": {"base": ["Leaves fall\nquietly", SCRIPT],
                         "v1": ["Red leaves drift down\nto the cold ground", IMG],
                         "v2": ["Crisp air, amber light\n" * 3, "Snow on bare branches"]},
             "scores": {"base": 4.0, "v1": 6.0, "v2": None},
             "verdicts": [{"a": "v2", "b": "v1", "winner": "a", "consistent": True},
                          {"a": "v1", "b": "base", "winner": "tie", "consistent": False}]},
            {"question_id": "q2", "category": "reasoning",
             "turns": ["What is 17 * 23?", "And divided by 7?"], "reference": ["391", "about 55.86"],
             "answers": {"base": ["17 * 23 = 391", "55.857..."], "v1": [BREAK, "`55.86` | rounded"],
                         "v2": ["391", "391 / 7 ≈ 55.86"]},
             "scores": {"base": 8.0, "v1": 3.0, "v2": 9.0},
             "verdicts": [{"a": "v2", "b": "v1", "winner": "b", "consistent": True},
                          {"a": "v1", "b": "base", "winner": None, "consistent": None}]},
            {"question_id": "q3", "category": "coding", "turns": ["Reverse a list in Python.", "Without slicing?"],
             "answers": {"base": ["lst[::-1]"], "v1": ["```python\nlst.reverse()\n```", "list(reversed(lst))"],
                         "v2": ["Use `lst[::-1]`.", "`lst.reverse()` reverses in place."]}}],
        "config": {"models": ["base=default", "v1=runs/v1", "v2=runs/v2"], "judge": "openai:gpt-4o-mini",
                   "temperature": 0.7, "base_url": "http://localhost:8000/v1", "bootstrap": 1000},
        "ledger": {"judge": {"prompt_tokens": 120000, "completion_tokens": 9000, "cost": 0.0234}},
        "seconds": 412.3,
    }


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(html_text):
    p = Tags()
    p.feed(html_text)
    return p.tags


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    paths = write_report(sample_results(), out)
    return paths, paths["md"].read_text(), paths["html"].read_text()


def test_both_files_and_the_markdown(report):
    paths, md, _ = report
    assert paths == {"md": paths["md"].parent / "report.md", "html": paths["md"].parent / "report.html"}
    assert "| base | 5.40 [4.90, 5.90] | 20 | 20 | 85.2 | 120.3 | 2.310 | 2.870 |" in md
    assert "| v2 vs v1 | 9 | 5 | 6 | 0.575 | [0.41, 0.73] | 0 | 20 |" in md
    assert "| v2 vs v1 | reasoning | 2 | 0 | 4 | 0.333 | [0.00, 0.67] |" in md  # per category
    assert "| writing | 5.10 | 6.40 | 7.20 |" in md  # scores by category, a column per model
    assert "the two orders name the same winner on 71% of the pairs either order decided" in md
    assert "near chance" not in md.split("##")[0]
    assert "runs/v2 <\\- runs/v1" not in md and "runs/v2 &lt;" not in md  # lineage is escaped, not mangled
    assert "v2 vs v1: v2 better; both orders agree" in md and "v1 vs base: unjudged" in md
    # every answer sits in a fence longer than any backtick run inside it
    assert "````text\n" + BREAK + "\n````" in md and "```text\n" + SCRIPT + "\n```" in md


def test_the_markdown_renders_inert():
    """Rendered by a CommonMark renderer that passes raw HTML through, model text stays text."""
    markdown_it = pytest.importorskip("markdown_it")
    res = sample_results()
    res["models"]["<b>x|y</b>"] = res["models"].pop("base")  # a hostile model name lands in table cells too
    for q in res["questions"]:
        q["answers"]["<b>x|y</b>"] = q["answers"].pop("base")
    res["pairwise"][1]["b"] = "<b>x|y</b>"
    md = write_report(res, Path(pytest.importorskip("tempfile").mkdtemp()))["md"].read_text()
    out = markdown_it.MarkdownIt("commonmark").enable("table").render(md)
    tags = {t for t, _ in parse(out)}
    assert not tags & {"script", "img", "b"}, tags
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in out and "&lt;/div&gt;&lt;/td&gt;" in out
    assert "x|y" in out
    for table in re.findall(r"<table>(.*?)</table>", out, re.DOTALL):  # no `|` split a row into extra cells
        head, body = table.split("</thead>")
        cells = {r.count("<td") for r in re.findall(r"<tr>(.*?)</tr>", body, re.DOTALL)}
        assert cells == {len(re.findall(r"<th[ >]", head))}


def test_the_html_holds_no_live_markup(report):
    _, _, html = report
    assert '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; ' \
           'style-src \'unsafe-inline\'">' in html
    assert not re.search(r"<script", html, re.IGNORECASE) and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    markup = re.findall(r"<[^>]*>", html)  # text holds no `<` of its own: escaped, so these are all the tags
    assert not [m for m in markup if re.search(r"onerror|script", m, re.IGNORECASE)]
    assert "&lt;img src=x onerror=&quot;window.__xss=2&quot;&gt;" in html
    tags = parse(html)
    assert not [t for t, a in tags if t in ("script", "iframe", "object", "embed", "link", "base", "form")]
    assert not [a for _, a in tags for k in a if k.startswith("on")]
    imgs = [a["src"] for t, a in tags if t == "img"]
    assert len(imgs) == 5 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert not [v for _, a in tags for k, v in a.items() if k in ("src", "href") and re.match(r"\s*(https?:)?//", v or "")]
    assert "url(" not in html and "@import" not in html
    # the one http URL in the file is config text, escaped in a table cell
    assert re.findall(r"https?://[^\s<\"]*", html) == ["http://localhost:8000/v1"]
    assert '<td class="txt">http://localhost:8000/v1</td>' in html
    assert "&lt;/div&gt;&lt;/td&gt;&lt;/table&gt; | a | b |" in html


def test_the_page_in_chromium(report):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/install_browser.sh")
    sync_api = pytest.importorskip("playwright.sync_api")
    paths, _, _ = report
    errors, requests = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.on("console", lambda m: m.type in ("error", "warning") and errors.append(f"console {m.type}: {m.text}"))
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(paths["html"].resolve().as_uri(), wait_until="load")
            assert page.evaluate("typeof window.__xss") == "undefined"
            text = page.inner_text("body")
            assert SCRIPT in text and IMG in text and "</div></td></table> | a | b |" in text
            assert "Crisp air, amber light\nCrisp air" in text  # newlines kept (pre-wrap)
            imgs = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
            assert len(imgs) == 5 and all(ok and w > 0 for ok, w in imgs), imgs
            assert page.locator("script, [onerror], iframe").count() == 0
            # nothing breaks out of its grid cell: every answer cell is inside its question's grid
            assert page.locator(".q .grid > .cell").count() == 3 * 2 * (1 + 3) + 2  # turns + answers + 2 references
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scroll
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "eval-report.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert requests == [paths["html"].resolve().as_uri()], requests  # no fetch beyond the file itself
    assert (ARTIFACTS / "eval-report.png").stat().st_size > 50_000


@pytest.mark.parametrize("consistency,warned", [(0.52, True), (0.8, False)])
def test_near_chance_warning(tmp_path, consistency, warned):
    paths = write_report(sample_results(consistency), tmp_path)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    sentence = "the judge agrees with itself under swapped order only 52% of the time, so its verdicts are near chance"
    assert (sentence in md) is warned and (sentence in html) is warned
    assert ('class="warn"' in html) is warned
    if warned:  # near the top: before the first table
        assert md.index(sentence) < md.index("| model |") and html.index(sentence) < html.index("<table")
    res = sample_results(0.9)
    res["judge"]["near_chance"] = True  # evaluate's flag is honoured even where the number says otherwise
    assert "near chance" in write_report(res, tmp_path)["md"].read_text()


def test_missing_pieces(tmp_path):
    res = sample_results()
    res["judge"], res["pairwise"] = None, []
    for m in res["models"].values():
        m["score"] = m["nll"] = m["loss_curve"] = None
        del m["mean_tokens"]
    paths = write_report(res, tmp_path / "a")
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert "win rate" not in md.lower() and "Judge" not in md and "NLL" not in md
    assert "score" not in md.lower().split("## side")[0]
    assert "| model | answers | mean words | spec | lineage |" in md  # empty columns are left out
    assert [t for t, _ in parse(html)].count("img") == 1  # answer lengths only
    res["questions"] = []
    assert "Side by side" not in write_report(res, tmp_path / "b")["md"].read_text()
    # nearly nothing at all, and odd values where numbers should be
    for i, res in enumerate([{}, {"models": {"m": {}}}, {"models": {"m": None}, "judge": {"consistency": None},
                                                          "pairwise": [{"a": "m", "b": "n", "win_rate": None, "ci": None}],
                                                          "questions": [{"answers": {"m": "one string"}, "turns": ["q"]}]},
                             {"models": {"m": {"mean_words": float("nan"), "loss_curve": [{"step": 1}],
                                               "score": {"mean": 5, "ci": None, "by_category": {"x": None}}}}}]):
        paths = write_report(res, tmp_path / str(i))
        assert paths["md"].read_text().startswith("# baize eval") and "</html>" in paths["html"].read_text()


def test_the_results_are_not_changed(tmp_path):
    res = sample_results()
    before = copy.deepcopy(res)
    write_report(res, tmp_path)
    assert res == before


def test_flags_human_agreement_and_the_length_controlled_win_rate(tmp_path):
    res = sample_results(0.9)
    res["judge"].update(mode="debiased", decisive_rate=0.3, flags=["undecided: it prefers one answer on only 30% of pairs"],
                        near_chance=True, human={"agreement": 0.52, "agreement_ci": [0.45, 0.6], "decisive": 140, "n": 200,
                                                 "mode": "debiased"})
    res["pairwise"][0].update(lc_win_rate=0.512, lc_ci=[0.38, 0.64], lc_note=None)
    res["pairwise"][1].update(lc_win_rate=None, lc_ci=None, lc_note="too few verdicts (2; needs 3)")
    res["length_control"] = {"slope": 0.8, "n": 40, "note": None}
    paths = write_report(res, tmp_path)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert "| v2 vs v1 | 9 | 5 | 6 | 0.575 | [0.41, 0.73] | 0.512 | [0.38, 0.64] |" in md
    assert "too few verdicts (2; needs 3)" in md and "length slope is +0.80" in md
    for text in (md, page):
        assert "do not trust these win rates: the judge is undecided" in text
        assert "agrees with the human choice on 52%" in text and "of 140 decisive verdicts over 200 pairs" in text
        assert "prefers one answer on 30% of pairs" in text


def test_a_debiased_judge_gets_a_banner_and_chart_of_its_own_measures(tmp_path):
    """docs/judge-check.md's debiased judge: each order alone agrees on 0%, which is no failure there."""
    from matplotlib.figure import Figure

    from baize.eval import report
    res = sample_results(0.0)
    res["judge"].update(mode="debiased", decisive_rate=0.57, flags=[], near_chance=False,
                        human={"agreement": 0.61, "agreement_ci": [0.53, 0.69], "decisive": 300, "n": 500})
    paths = write_report(res, tmp_path)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    for text in (md, page):
        assert "Warning" not in text and "near chance" not in text
        assert "prefers one answer on 57% of pairs" in text and "agrees with the human choice on 61%" in text
    assert 'alt="Judge: decisive rate and agreement with humans"' in page and "Judge consistency" not in page
    title, draw, size = report._draw_consistency(report._view(res))
    fig = Figure(figsize=size)
    ax = fig.subplots()
    draw(fig, ax)
    shown = [t.get_text() for t in ax.texts] + [t.get_text() for t in ax.get_yticklabels()]
    assert shown == ["57%", "61%", "decisive rate", "agrees with humans"]  # not the per-order 0%
    res["judge"]["mode"] = "text"  # the same 0% from a text judge is position bias: warned, and charted
    page = write_report(res, tmp_path / "t")["html"].read_text()
    assert "only 0% of the time" in page and 'alt="Judge consistency"' in page
