"""The judge's prompts, after FastChat's MT-bench judge prompts: change what the judge reads here.

Pairwise (PAIR_*), 1-10 scores with and without a reference (SCORE_*), listwise rankings (RANK_*),
the reminders sent once when a reply does not end in the required shape, and how a question or a
whole dialogue is shown to the judge (render_context). The aggregators in modes.py fill them in.
"""
from __future__ import annotations

# --- prompts (after FastChat's MT-bench judge prompts) -------------------------------------------
# Every prompt names the biases we know judges have (order, length, names) and asks for a short
# explanation *before* the verdict, then the verdict alone on the last line in one strict shape:
# explaining first gives better verdicts, and a fixed last-line shape is what makes parsing reliable.

_CRITERIA = ("Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, "
             "creativity, and level of detail of the responses.")
_UNBIASED = ("Avoid any position biases and ensure that the order in which the responses were presented does "
             "not influence your decision. Do not allow the length of the responses to influence your "
             "evaluation. Do not favor certain names of the assistants. Be as objective as possible.")

PAIR_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user's last message in the conversation displayed below. You should choose the assistant that "
    "follows the user's instructions and answers the user's question better. " + _CRITERIA + " Begin your "
    "evaluation by comparing the two responses and provide a short explanation. " + _UNBIASED + " After "
    "providing your explanation, output your final verdict on the last line by strictly following this format: "
    "\"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.")

PAIR_USER = ("{context}\n\n"
             "[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
             "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]")

SCORE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user's last message in the conversation displayed below. " + _CRITERIA.replace("responses", "response")
    + " Begin your evaluation by providing a short explanation. Do not allow the length of the response to "
    "influence your evaluation. Be as objective as possible. After providing your explanation, you must rate "
    "the response on a scale of 1 to 10 on the last line by strictly following this format: \"Rating: [[5]]\".")

SCORE_REF_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user's last message in the conversation displayed below. Your evaluation should consider correctness "
    "and helpfulness. You will be given a reference answer and the assistant's answer. Begin your evaluation "
    "by comparing the assistant's answer with the reference answer. Identify and correct any mistakes, and "
    "provide a short explanation. Do not allow the length of the response to influence your evaluation. Be as "
    "objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 "
    "on the last line by strictly following this format: \"Rating: [[5]]\".")

SCORE_USER = "{context}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"

SCORE_REF_USER = ("{context}\n\n[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
                  "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]")

RANK_SYSTEM = (
    "Please act as an impartial judge and rank the responses provided by several AI assistants to the user's "
    "last message in the conversation displayed below, from best to worst. The responses are labelled [[1]], "
    "[[2]], and so on. " + _CRITERIA + " Begin your evaluation by comparing the responses and provide a short "
    "explanation. " + _UNBIASED + " After providing your explanation, output your final ranking on the last "
    "line by strictly following this format, best first, listing every response exactly once: "
    "\"Ranking: [[2]] > [[3]] > [[1]]\" (that example is for three responses).")

RANK_USER = "{context}\n\n{answers}\n\nRank all {k} responses, [[1]] to [[{k}]]."

RANK_ANSWER = "[The Start of Response [[{label}]]]\n{answer}\n[The End of Response [[{label}]]]"

PAIR_REMINDER = ("Your reply did not end with the verdict in the required format. "
                 "Reply with only: [[A]], [[B]] or [[C]]")
SCORE_REMINDER = ("Your reply did not end with the rating in the required format. "
                  "Reply with only the rating of the response from 1 to 10, like: Rating: [[5]]")
RANK_REMINDER = ("Your reply did not end with the ranking in the required format. Reply with only the ranking "
                 "of all {k} responses, best first, each exactly once, like: Ranking: {example}")


_SPEAKER = {"system": "System", "user": "User", "assistant": "Assistant"}


def render_context(context) -> str:
    """A question, or a whole dialogue as 'User: ... / Assistant: ...' so the judge sees every turn."""
    if isinstance(context, str):
        return f"[User Question]\n{context}"
    if not isinstance(context, (list, tuple)) or not context:
        raise ValueError("judge: context must be a question (str) or a non-empty list of {role, content} messages")
    for m in context:
        if not isinstance(m, dict) or m.get("role") not in _SPEAKER or not isinstance(m.get("content"), str):
            raise ValueError(f"judge: bad message in context: {str(m)[:80]!r} (want {{role, content}})")
    if context[-1]["role"] != "user":
        raise ValueError("judge: a dialogue context must end with a user turn (the one being answered)")
    if len(context) == 1:  # the same prompt, and so the same cache entry, as the plain question
        return render_context(context[0]["content"])
    turns = "\n\n".join(f"{_SPEAKER[m['role']]}: {m['content']}" for m in context)
    return f"[The Start of the Conversation]\n{turns}\n[The End of the Conversation]"
