"""OpenAI's Batch API behind the LLM interface: the same stages, half the price, within 24 hours.

A stage runs as it does synchronously, through a `BatchLLM` in place of its OpenAILLM. Its chat()
answers from the run's result store, keyed by a `custom_id` that hashes the request body (so a
replay of the same item asks the same ids); on a miss it records the request and raises
`BatchPending`, which the runner counts as neither done nor failed. `Batches` then writes the
recorded requests into JSONL files (one model per file, split at 50,000 lines and 200 MB), uploads
them with purpose "batch", creates the batches with a 24h window, polls them, and stores what the
output and the error files say; the runner replays the items (runner.run_rounds), the answered
calls come from the store and the next call goes pending, round after round. A turns-mode dialogue
thus advances one exchange per round.

Everything lives in OUT.batch/ beside the output: state.json (each batch: its custom_ids, written
before the upload, then its file and batch ids as they come), the request files as sent (what
`vllm run-batch -i` reads), results.jsonl (every answered line, as OpenAI's output file has it).
A rerun polls the batches it already has instead of sending their lines again; an expired or
failed line goes into a new batch, at most `tries` times per run, then fails its item with the
reason. Facts about the API: /work/shared/REFERENCE.md "OpenAI Batch API".
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

from ..config import BaizeError
from ..schema import atomic_write_text
from .base import LLM, EmptyReplyError, TransientLLMError, _read_reply

MAX_LINES = 50_000  # OpenAI's Batch guide: at most 50,000 requests per batch ...
MAX_BYTES = 200 * 1024 * 1024  # ... and at most 200 MB per input file
ENDPOINT = "/v1/chat/completions"
SAY_EVERY = 600.0  # seconds between progress lines of a batch whose status and counts stay the same
# a batch's ends, and ours: never sent (no Files API), answered by `baize batches --import`
ENDED = ("completed", "expired", "failed", "cancelled", "not_sent", "imported")
NO_FILES_API = ("no Files/Batch API here (404 on /v1/files): drop --batch-api, or run the request files in "
                "{folder} elsewhere (vllm run-batch -i FILE -o RESULTS) and `baize batches {out} --import RESULTS`")


class BatchPending(Exception):
    """The call's request waits for a batch: the item is neither done nor failed this round."""


def custom_id(body: dict) -> str:
    """Stable across reruns (the same request hashes the same), unique per distinct request."""
    return "baize-" + hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def split(lines: list[dict], max_lines: int, max_bytes: int):
    """Files of at most `max_lines` lines and `max_bytes` bytes, whichever comes first."""
    chunk, size = [], 0
    for line in lines:
        data = len(json.dumps(line, ensure_ascii=False).encode()) + 1
        if chunk and (len(chunk) >= max_lines or size + data > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += data
    if chunk:
        yield chunk


def _read_results(path: Path) -> dict[str, dict]:
    """custom_id -> its output line, as stored by earlier runs."""
    out = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                out[r["custom_id"]] = r
            except (ValueError, KeyError, TypeError):
                pass  # a run killed mid-write leaves half a line: that request is asked again
    return out


class Batches:
    """The run's batches: what was sent, what came back, what is still to send."""

    def __init__(self, out: str | Path, *, poll: float = 60.0, tries: int = 3, max_lines: int | None = None,
                 max_bytes: int | None = None, say=None, sleep=time.sleep):
        self.out = Path(out)
        # OUT.jsonl's batches in OUT.batch/; an output folder's (eval's) in OUT/batch/
        self.folder = self.out / "batch" if self.out.is_dir() else self.out.with_name(
            self.out.name.removesuffix(".jsonl") + ".batch")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.poll, self.tries, self.sleep = poll, tries, sleep
        self.max_lines, self.max_bytes = max_lines or MAX_LINES, max_bytes or MAX_BYTES
        self.say = say or (lambda msg: print(msg, flush=True))
        self.lock = threading.Lock()
        self.state_path, self.results_path = self.folder / "state.json", self.folder / "results.jsonl"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"batches": []}
        self.results: dict[str, dict] = _read_results(self.results_path)
        self.wanted: dict[str, dict] = {}  # custom_id -> request line, this round
        self.costs: dict[str, float] = {}  # custom_id -> its most cost at the batch price (for --max-cost)
        self.failures: dict[str, list[str]] = {}  # custom_id -> why each try came back unanswered, this run
        self.fresh: set[str] = set()  # custom_ids the last wait answered
        self.asked: set[str] = set()  # custom_ids answered from the store in this round
        self.clients: dict[str, object] = {}  # model -> the openai client that sends it
        self.shown: dict[str, tuple] = {}  # batch id -> (status and counts last said, when)

    # --- the LLM side -----------------------------------------------------------------------------

    def wrap(self, llm, price: tuple[float, float] = (0.0, 0.0)) -> LLM:
        """An openai: model's calls into batches; any other model's replies kept (KeptLLM)."""
        from .base import OpenAILLM
        if not isinstance(llm, OpenAILLM):
            return KeptLLM(llm, self.folder / "local.jsonl")
        self.clients.setdefault(llm.model, llm)
        return BatchLLM(llm, self, price)

    def check(self) -> None:
        if not self.clients:
            raise BaizeError("--batch-api: none of this stage's models is an openai: model (local ones run "
                             "in-process): drop --batch-api")

    def live_ids(self) -> set[str]:
        return {c for b in self.state["batches"] if b.get("status") not in ENDED for c in b["custom_ids"]}

    def answer(self, cid: str) -> dict | None:
        """The stored output line; raises when this run gave the line up."""
        if cid in self.results:
            with self.lock:
                self.asked.add(cid)
            return self.results[cid]
        reasons = self.failures.get(cid, [])
        if len(reasons) >= self.tries:
            raise TransientLLMError(f"batch line {cid} unanswered after {len(reasons)} tries: {reasons[-1]}")
        return None

    def want(self, line: dict, cost: float) -> None:
        with self.lock:
            self.wanted[line["custom_id"]] = line
            self.costs[line["custom_id"]] = cost

    # --- sending ----------------------------------------------------------------------------------

    def to_send(self) -> list[dict]:
        live = self.live_ids()  # a line whose batch is alive is never sent again
        return [line for cid, line in self.wanted.items() if cid not in live and cid not in self.results]

    def cost_to_send(self) -> float:
        return sum(self.costs.get(line["custom_id"], 0.0) for line in self.to_send())

    def pending(self) -> bool:
        return bool(self.to_send() or self.live_ids())

    def submit(self) -> list[str]:
        """Send what the last round asked for, in files of one model, split at the limits; each
        batch's custom_ids are in state.json before its upload, its ids as soon as they exist."""
        lines, self.wanted = self.to_send(), {}
        by_model: dict[str, list[dict]] = {}
        for line in lines:
            by_model.setdefault(line["body"]["model"], []).append(line)
        sent = []
        for model, group in by_model.items():
            for chunk in split(group, self.max_lines, self.max_bytes):
                sent.append(self._send(model, chunk))
        return sent

    def _send(self, model: str, lines: list[dict]) -> str:
        import openai
        llm = self.clients[model]
        n = len(self.state["batches"]) + 1
        path = self.folder / f"requests-{n:04d}.jsonl"
        path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
        entry = {"n": n, "model": model, "base_url": llm.base_url, "file": path.name,
                 "custom_ids": [x["custom_id"] for x in lines], "status": "uploading", "created": time.time()}
        self.state["batches"].append(entry)
        self._save()
        try:
            f = llm.client.files.create(file=(path.name, path.read_bytes()), purpose="batch")
            entry["input_file_id"] = f.id
            self._save()
            b = llm.client.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h",
                                          metadata={"baize_run": str(self.out.name), "baize_file": path.name})
        except (openai.NotFoundError, openai.APIConnectionError):
            entry["status"] = "not_sent"
            self._save()
            raise BaizeError(f"{llm.where}: " + NO_FILES_API.format(folder=self.folder, out=self.out)) from None
        except openai.APIStatusError as e:
            entry["status"] = "not_sent"
            self._save()
            raise BaizeError(f"{llm.where}: batch not created: HTTP {e.status_code}: {e.message}") from None
        entry.update(id=b.id, status=b.status)
        self._save()
        self.say(f"batch {b.id}: {len(lines):,} requests to {model} sent ({path.name})")
        return b.id

    def _save(self) -> None:
        atomic_write_text(self.state_path, json.dumps(self.state, indent=1) + "\n")  # a kill: old or new

    # --- waiting ----------------------------------------------------------------------------------

    def adopt(self) -> None:
        """A batch created just before a kill, its id never written: found by its input file."""
        for entry in self.state["batches"]:
            if entry.get("status") == "uploading":
                found = None
                if entry.get("input_file_id") and entry["model"] in self.clients:
                    client = self.clients[entry["model"]].client
                    found = next((b for b in client.batches.list(limit=100).data  # the newest: it was just made
                                  if b.input_file_id == entry["input_file_id"]), None)
                entry.update(id=found.id, status=found.status) if found else entry.update(status="not_sent")
        self._save()

    def wait(self) -> bool:
        """Poll every live batch until each has ended, storing its results; False on Ctrl-C (the
        batches keep running; the rerun of the same command picks them up)."""
        self.adopt()
        self.fresh = set()
        start = time.monotonic()
        try:
            while True:
                live = [b for b in self.state["batches"] if b.get("status") not in ENDED and b.get("id")]
                if not live:
                    return True
                for entry in live:
                    self._poll(entry, start)
                if any(b.get("status") not in ENDED for b in live):
                    self.sleep(self.poll)
        except KeyboardInterrupt:
            ids = ", ".join(b["id"] for b in self.state["batches"] if b.get("status") not in ENDED and b.get("id"))
            self.say(f"stopped waiting; the batches keep running on the server ({ids}). Rerun the same command to "
                     f"pick up their results (nothing is sent twice); `baize batches {self.out}` lists them")
            return False

    def _poll(self, entry: dict, start: float) -> None:
        b = self.clients[entry["model"]].client.batches.retrieve(entry["id"])
        counts = b.request_counts
        done, failed, total = (counts.completed, counts.failed, counts.total) if counts else (0, 0, 0)
        now, seen = time.monotonic(), (b.status, done, failed)
        last = self.shown.get(b.id)
        if last is None or last[0] != seen or now - last[1] >= SAY_EVERY:  # a day of polls is not a day of lines
            self.shown[b.id] = (seen, now)
            elapsed = int(now - start)
            self.say(f"batch {b.id}: {b.status}, {done:,}/{total or len(entry['custom_ids']):,} completed, "
                     f"{failed:,} failed, {elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d} elapsed")
        if b.status not in ENDED:
            entry["status"] = b.status
            self._save()
            return
        if b.status == "failed" and b.errors and b.errors.data:
            e = b.errors.data[0]
            entry["status"] = "failed"
            self._save()
            raise BaizeError(f"batch {b.id} failed validation: {e.code} at line {e.line} of "
                             f"{self.folder / entry['file']}: {e.message}")
        client = self.clients[entry["model"]].client
        got = {}
        for file_id in (b.output_file_id, b.error_file_id):  # "completed" may come with no output file
            if file_id:
                for raw in client.files.content(file_id).text.splitlines():
                    if raw.strip():
                        line = json.loads(raw)
                        got[line["custom_id"]] = line
        self.store(entry["custom_ids"], got, b.status)
        entry["status"] = b.status
        self._save()

    def store(self, cids: list[str], got: dict[str, dict], status: str) -> None:
        """Keep the answered lines; count the others as one try each, with the reason."""
        with self.results_path.open("a", encoding="utf-8") as f:
            for cid in cids:
                line = got.get(cid)
                if line and line.get("response") and not line.get("error"):
                    self.results[cid] = line
                    self.fresh.add(cid)
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
                else:
                    err = (line or {}).get("error") or {}
                    why = f"{err.get('code')}: {err.get('message')}" if err else f"no result line (batch {status})"
                    self.failures.setdefault(cid, []).append(why)


def changed_requests(b: Batches) -> str | None:
    """Why the run must stop, when the items replayed after a wait asked for none of the answers it
    brought but made new requests instead: a request body that differs on each replay (a random
    seed, a clock in a prompt) would otherwise send batches without end, each paid for."""
    if not b.fresh or b.fresh & b.asked or not b.to_send():
        return None
    return (f"--batch-api: the items replayed after the last batches asked for none of their {len(b.fresh):,} "
            f"answers and made {len(b.to_send()):,} new requests instead: a request that differs on each replay "
            f"(a random seed or a clock in a prompt?) would send batches without end; the answers are kept in "
            f"{b.results_path}; run this stage without --batch-api")


class BatchLLM(LLM):
    """An OpenAI model whose calls go through the run's batches (see the module's docstring)."""
    can_stream = False
    keeps_replies = True  # a replay of an item asks again and is answered (and counted) from the store

    def __init__(self, inner, batches: Batches, price: tuple[float, float] = (0.0, 0.0)):
        self.inner, self.batches, self.price = inner, batches, price
        self.name, self.model, self.where = inner.name, inner.model, inner.where + " (Batch API)"
        self.honours_n = True  # OpenAI's chat completions honour n, in a batch as synchronously

    def body(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None) -> dict:
        """The request, the same on every replay of the item (so its custom_id is), as OpenAILLM
        would shape it with what is known of the endpoint now."""
        wish = dict(messages=messages, n=n, temperature=temperature, top_p=top_p, stop=list(stop or [])[:4] or None,
                    seed=seed, reasoning_effort=self.inner.reasoning_effort, max_tokens=max_tokens)
        return {"model": self.model, **self.inner.quirks.shape(wish)}

    def chat(self, messages, *, n=1, temperature=1.0, top_p=0.95, max_tokens=512, stop=None, seed=None):
        from openai.types.chat import ChatCompletion
        body = self.body(messages, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop,
                         seed=seed)
        cid = custom_id(body)
        line = self.batches.answer(cid)
        if line is None:
            prompt = sum(len(str(m.get("content") or "")) for m in messages) / 4  # ~4 characters a token
            cost = (prompt * self.price[0] + n * max_tokens * self.price[1]) / 1000
            self.batches.want({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body}, cost)
            raise BatchPending(cid)
        resp = line["response"]
        if resp.get("status_code", 200) != 200:
            err = (resp.get("body") or {}).get("error") or {}
            # the item fails with the reason, as a synchronous call's would, and the run goes on
            raise TransientLLMError(
                f"{self.where}: HTTP {resp.get('status_code')} in batch line {cid}: {err.get('message')}")
        out, usage, _ = _read_reply(ChatCompletion.model_validate(resp["body"]), messages, self.inner.count_tokens)
        if not out:
            raise EmptyReplyError(f"{self.where}: the reply hit its cap of {max_tokens:,} completion tokens before "
                                  f"any text: raise {self.inner.flags[0]}", usage={**usage, "calls": 1})
        out[0].prompt_tokens, out[0].completion_tokens, out[0].reasoning_tokens = (
            usage["prompt_tokens"], usage["completion_tokens"], usage["reasoning_tokens"])
        return out


# --- `baize batches OUT` ----------------------------------------------------------------------------

def add_cli(sub) -> None:
    p = sub.add_parser("batches", help="a --batch-api run's batches: list them, cancel them, or import results "
                                       "made elsewhere (vllm run-batch)")
    p.add_argument("out", metavar="OUT", help="the stage's output file (its batches are in OUT.batch/) or folder "
                                              "(eval's: OUT/batch/)")
    p.add_argument("--cancel", action="store_true", help="cancel the batches still running")
    p.add_argument("--import", dest="import_", metavar="RESULTS", help="a results JSONL in OpenAI's output format "
                   "(what `vllm run-batch -o` writes) for the run's request files; rerun the stage to use them")
    p.add_argument("--api-key", help="API key of the batches' endpoint (or OPENAI_API_KEY); never saved")
    p.set_defaults(func=_main)


def _main(args) -> int:
    b = Batches(args.out)
    if not b.state["batches"]:
        raise BaizeError(f"{args.out}: no batches in {b.folder}: run the stage with --batch-api first")
    if args.import_:
        n, left = import_results(b, args.import_)
        print(f"imported {n:,} results into {b.results_path}; {left:,} requests still without one. Rerun the stage "
              f"(same command) to use them")
        return 0
    for entry in b.state["batches"]:
        live = entry.get("id") and entry.get("status") not in ENDED
        if live:
            entry["status"] = _remote(b, entry, args.api_key, cancel=args.cancel)
        print(f"{entry.get('id') or '-':<24} {entry['status']:<12} {len(entry['custom_ids']):>7,} requests  "
              f"{entry['model']}  {entry['file']}")
    b._save()
    return 0


def _remote(b: Batches, entry: dict, api_key: str | None, *, cancel: bool) -> str:
    """The batch's status now (after a cancel, when asked), or the last seen one when unreachable."""
    import openai

    from .base import OpenAILLM
    try:
        client = OpenAILLM(entry["model"], base_url=entry.get("base_url"), api_key=api_key).client
        got = client.batches.cancel(entry["id"]) if cancel else client.batches.retrieve(entry["id"])
        return got.status
    except (openai.APIError, BaizeError) as e:
        b.say(f"{entry['id']}: cannot reach the endpoint ({type(e).__name__}): showing the last status seen")
        return entry["status"]


def import_results(b: Batches, path: str) -> tuple[int, int]:
    """Store a results file's answered lines for the run's requests: (imported, requests still unanswered)."""
    asked = {cid for e in b.state["batches"] for cid in e["custom_ids"]}
    got = {}
    for i, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            cid = line["custom_id"]
        except (ValueError, KeyError, TypeError):
            raise BaizeError(f"{path}:{i}: not a batch output line (JSON with custom_id, response, error)") from None
        if cid not in asked:
            raise BaizeError(f"{path}:{i}: custom_id {cid} is in none of {b.folder}'s request files: results of "
                             f"another run?")
        got[cid] = line
    new = [cid for cid in got if cid not in b.results]
    b.store(new, got, "imported")
    for entry in b.state["batches"]:
        if entry["status"] == "not_sent" and all(c in b.results for c in entry["custom_ids"]):
            entry["status"] = "imported"
    b._save()
    return sum(c in b.results for c in new), len(asked - set(b.results))


class KeptLLM(LLM):
    """A model that runs here, in a --batch-api stage: its replies are kept (OUT.batch/local.jsonl),
    so the replay of an item that waited for a batch gets the same text, and the batched judge the
    same prompt (a new sample would be a new request, sent and paid again)."""
    keeps_replies = True

    def __init__(self, inner, path: Path):
        self.inner, self.path, self.lock = inner, path, threading.Lock()
        self.name, self.honours_n, self.context_length = inner.name, inner.honours_n, inner.context_length
        self.kept: dict[str, list[dict]] = {}
        if path.exists():
            for raw in path.read_text(encoding="utf-8").splitlines():
                try:
                    r = json.loads(raw)
                    self.kept[r["key"]] = r["replies"]
                except (ValueError, KeyError, TypeError):
                    pass  # half a line from a kill: that call runs again

    def chat(self, messages, **kw):
        from dataclasses import asdict

        from .base import Completion
        key = custom_id({"model": self.name, "messages": messages, **kw})
        if key not in self.kept:
            replies = [asdict(c) for c in self.inner.chat(messages, **kw)]
            with self.lock:
                self.kept[key] = replies
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "replies": replies}, ensure_ascii=False) + "\n")
        return [Completion(**c) for c in self.kept[key]]

    def close(self) -> None:
        self.inner.close()
