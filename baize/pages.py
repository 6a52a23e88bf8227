"""The look the HTML pages share (eval's report, judge-check's page): one stylesheet, a Content
Security Policy that allows no script and no fetch, escaping and tables. Stdlib only, so every layer
that writes a page can use it."""
from __future__ import annotations

import html

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class Cell(str):
    """A cell we formatted ourselves (a number, an interval): needs no Markdown escaping, right-aligned."""


CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2328;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1280px;margin:0 auto;padding:20px 28px 48px}
h1{font-size:1.7rem;margin:.3rem 0 .1rem}
h2{font-size:1.2rem;margin:0 0 .7rem}
h3{font-size:1.02rem;margin:1.1rem 0 .5rem}
.meta,.note{color:#59636e;font-size:.92rem}
section{background:#fff;border:1px solid #dfe3e8;border-radius:10px;padding:16px 22px;margin:16px 0}
.warn{background:#ffebe9;border:2px solid #cf222e;color:#82071e;border-radius:10px;padding:12px 18px;margin:16px 0;font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:22px;align-items:flex-start}
.row>*{min-width:0;max-width:100%}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.9rem}
th,td{padding:5px 10px;border-bottom:1px solid #e6e9ed;text-align:left;vertical-align:top}
th{background:#f3f5f7;font-weight:600;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.txt{max-width:28rem;overflow-wrap:break-word;white-space:pre-wrap}
figure{margin:0}
figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:.85rem;color:#59636e;margin-top:2px}
.failed{color:#9a6700;font-style:italic}
.q{border-top:1px solid #e6e9ed;padding-top:6px;margin-top:14px}
.q:first-of-type{border-top:none;margin-top:0}
.cat{display:inline-block;background:#ddf4ff;color:#0550ae;border-radius:999px;padding:0 9px;font-size:.8rem;font-weight:500;margin-left:6px;vertical-align:2px}
.grid{display:grid;gap:8px;align-items:stretch}
.cell{border:1px solid #e1e4e8;border-radius:8px;padding:8px 11px;background:#fbfcfd;min-width:0}
.label.model{text-transform:none;letter-spacing:0;font-size:.85rem;font-weight:600;color:#1f2328}
.score{font-weight:500;color:#59636e;margin-left:8px}
.turn{grid-column:1/-1;background:#eef4ff;border-color:#c8dafc}
.ref{grid-column:1/-1;background:#eefbf1;border-color:#b9e6c4}
.label{font-size:.75rem;text-transform:uppercase;letter-spacing:.04em;color:#59636e;margin-bottom:2px}
.text{white-space:pre-wrap;overflow-wrap:anywhere;font-size:.92rem}
.none{color:#8c959f;font-style:italic}
ul.verdicts{margin:.5rem 0 0;padding-left:1.2rem;font-size:.9rem}
details summary{cursor:pointer;font-weight:600}
"""


def escape(s) -> str:
    return html.escape(str(s), quote=True)


def html_table(headers, rows) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if isinstance(c, Cell) else "txt"}">{escape(c)}</td>' for c in r)
                   + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
