"""The web UI (Gradio), mounted at /ui by `baize serve --ui`, or `baize ui SPEC` (serve/cli.py).

Streaming chat with Send and Stop, Regenerate, Remove last turn, New conversation, sampling sliders
and a model picker. Stop cancels only this browser session's generation (Gradio cancels the
session's own event; leaving the async generator cancels its engine rows), unlike the original
demo's one global flag. Model output is Markdown: raw HTML in it is shown as text, never run.
"""
from __future__ import annotations

import os
import re

# outside code, '<' becomes an entity: tags in model output read as text, never as HTML
_CODE = re.compile(r"(```[\s\S]*?(?:```|$)|~~~[\s\S]*?(?:~~~|$)|`[^`\n]+`)")
CSS = "#baize-chat .message { font-size: 15px }"


def escape_html(text: str) -> str:
    """Neutralise HTML outside Markdown code (code is escaped by the Markdown renderer itself)."""
    parts = _CODE.split(text)
    return "".join(p if i % 2 else p.replace("&", "&amp;").replace("<", "&lt;") for i, p in enumerate(parts))


def to_display(history: list[dict]) -> list[dict]:
    # content as a text part: a bare string would be dedented by Gradio (inspect.cleandoc)
    return [{"role": m["role"], "content": [{"type": "text", "text": escape_html(m["content"])}]} for m in history]


def build_ui(models: dict[str, object], cfg=None):
    """A gr.Blocks over already-loaded models ({served name: LLM})."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from .chat import count_tokens, trim_history
    from .config import ServeConfig
    from .jobs import events, start
    cfg = cfg or ServeConfig()
    names = list(models)

    async def respond(history, model, system, top_p, temperature, max_new, max_hist):
        """Stream an answer to the history's last user message (an async generator, so that Stop
        cancels it at the next await and the engine rows are cancelled in its finally)."""
        llm = models.get(model) or models[names[0]]
        history = list(history or [])
        if not history or history[-1]["role"] != "user":
            yield history, to_display(history)
            return
        msgs = ([{"role": "system", "content": system}] if (system or "").strip() else []) + history
        msgs, dropped = trim_history(msgs, int(max_hist), lambda m: count_tokens(llm, m))
        ctx = llm.context_length
        max_new = int(max_new)
        if ctx:
            room = ctx - count_tokens(llm, msgs)
            if room < 1:
                raise gr.Error(f"the last message alone is longer than the model's context ({ctx} tokens)")
            max_new = min(max_new, room)
        jobs = start(llm, msgs, temperature=float(temperature), top_p=float(top_p), max_tokens=max_new)
        reply = {"role": "assistant", "content": ""}
        history.append(reply)
        yield history, to_display(history)
        async for _, kind, value in events(jobs):
            if kind == "delta":
                reply["content"] += value
                yield history, to_display(history)
            elif kind == "error":
                raise gr.Error(f"generation failed: {value}")
        if dropped:
            gr.Info(f"the oldest {dropped} turn(s) were left out to fit {int(max_hist)} history tokens")

    def add_user(text, history):
        history = list(history or [])
        if text.strip():
            history.append({"role": "user", "content": text})
        return "", history, to_display(history)

    def drop_answer(history):
        history = list(history or [])
        while history and history[-1]["role"] == "assistant":
            history.pop()
        return history, to_display(history)

    def remove_turn(history):
        history, _ = drop_answer(history)
        if history:
            history.pop()
        return history, to_display(history)

    with gr.Blocks(title="Baize", analytics_enabled=False) as demo:
        gr.Markdown("## Baize")
        history = gr.State([])
        model = gr.Dropdown(names, value=names[0], label="Model", visible=len(names) > 1, interactive=True,
                            elem_id="baize-model")
        chatbot = gr.Chatbot(elem_id="baize-chat", height=480, sanitize_html=True, render_markdown=True,
                             allow_tags=False, buttons=[], feedback_options=None, label="Conversation")
        with gr.Row():
            text = gr.Textbox(placeholder="Type a message, Enter to send", show_label=False, scale=8,
                              elem_id="baize-input", autofocus=True)
            send = gr.Button("Send", variant="primary", scale=1, elem_id="baize-send")
            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="baize-stop")
        with gr.Row():
            regen = gr.Button("Regenerate", elem_id="baize-regenerate")
            undo = gr.Button("Remove last turn", elem_id="baize-undo")
            new = gr.Button("New conversation", elem_id="baize-new")
        with gr.Accordion("Parameters", open=False):
            top_p = gr.Slider(0.0, 1.0, value=0.95, step=0.01, label="Top-p")
            temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature")
            max_new = gr.Slider(1, 2048, value=cfg.max_tokens, step=1, label="Max new tokens")
            max_hist = gr.Slider(128, 8192, value=2048, step=64, label="Max history tokens")
            system = gr.Textbox(label="System prompt", lines=3,
                                placeholder="empty: the model's own (the Baize guardrail unless its run recorded one)")

        gen_inputs = [history, model, system, top_p, temperature, max_new, max_hist]
        submitted = text.submit(add_user, [text, history], [text, history, chatbot], queue=False).then(
            respond, gen_inputs, [history, chatbot])
        clicked = send.click(add_user, [text, history], [text, history, chatbot], queue=False).then(
            respond, gen_inputs, [history, chatbot])
        regenerated = regen.click(drop_answer, [history], [history, chatbot], queue=False).then(
            respond, gen_inputs, [history, chatbot])
        generating = [submitted, clicked, regenerated]
        stop.click(None, None, None, cancels=generating, queue=False)
        undo.click(remove_turn, [history], [history, chatbot], cancels=generating, queue=False)
        new.click(lambda: ([], []), None, [history, chatbot], cancels=generating, queue=False)
        chatbot.clear(lambda: [], None, [history], cancels=generating, queue=False)  # its own trash icon
    demo.queue(default_concurrency_limit=cfg.max_batch)
    return demo


def theme():
    import gradio as gr
    # system fonts: the default theme fetches Google Fonts, which an offline or private server should not
    return gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])


def mount_ui(app, models: dict[str, object], cfg) -> None:
    """Mount the UI at /ui on the API's FastAPI app; with an API key, the login password is the key."""
    import secrets

    import gradio as gr
    demo = build_ui(models, cfg)
    auth = None
    if cfg.api_key:
        key = cfg.api_key

        def auth(username, password):
            return secrets.compare_digest(str(password).encode(), key.encode())
    gr.mount_gradio_app(app, demo, path="/ui", auth=auth, auth_message="Password: the server's API key",
                        theme=theme(), css=CSS, footer_links=[], show_error=True)
