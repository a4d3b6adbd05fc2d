"""The task protocol: prompts, answer strings, gold labels and splits, shared by training and the lm-eval tasks.

Nothing else in the project renders a prompt. For each task a `TaskSpec` says where its data is
and how a row becomes an `Example`: a prompt ending in the answer cue, the answer strings (each one token
after the prompt) and the gold index.

Answer formats (`ANSWER_FORMATS`, chosen per run; the lm-eval task of the cloze format is `melora_<task>_cloze`):

- `letters` (the paper's, the default): the question, its choices as `A) ...` lines, then `Answer:`; the answer is
  read from the single next token, `" A"`, `" B"`, ... (BoolQ: `" False"`, `" True"`, with gold = `int(answer)`:
  index 1 is True, the fix of BLoB's swapped columns). Choices are rendered `LETTER) text` (BLoB renders
  `text) LETTER`), every choice of a question is kept, and the softmax runs over that question's own choices only
  (3, 4 or 5 for ARC).
- `cloze` (for small models, and lm-eval's own ARC / OBQA style): each choice's text is scored as the continuation
  of the prompt, by the sum of its tokens' log-likelihoods (`melora.cloze_readout`); answers may be several tokens.
  ARC, OBQA, MMLU: prompt `Question: {question}\nAnswer:`, answers `" " + choice text` (lm-eval's `arc_easy`).
  BoolQ: prompt `{passage}\nQuestion: {question}?\nAnswer:`, answers `" no"`, `" yes"` (lm-eval's `boolq`; index 1
  is yes = True, as in the letter format). WinoGrande (lm-eval's `winogrande`, "partial scoring"): the prompt is the
  sentence up to the blank, each option is substituted into the blank as a per-choice *context* (`" " + option`,
  conditioned on but not scored), and the scored answer is the rest of the sentence after the blank, the same text
  for both options. lm-eval renders the context as `sentence[:blank] + option` and the target as
  `" " + rest.strip()`; here the space before the blank moves from the prompt into the context so that prompt,
  context and answer each start cleanly at a word boundary, which gives the same concatenated text (every WinoGrande
  blank is written ` _ `).

- `cloze_norm`: the cloze prompts and answers, with each choice's log-likelihood divided by its answer's length in
  characters before the choices are normalised (lm-eval's `acc_norm`, `choice_score_scale`): summed log-likelihoods
  favour short answers, which matters where a question's choices differ much in length (OBQA).

Splits. The official test split is only touched for final numbers; validation is disjoint from
train and test:
- ARC-C, ARC-E, OBQA: the hub's train / validation / test.
- WinoGrande S, M: test = the official dev set (1,267, the hub's `validation`); validation = 20% of the hub's
  train (the share Laplace-LoRA's `train_val` setting holds out, which the paper follows), drawn with the
  fixed seed `SPLIT_SEED`, keeping the two twin sentences of an option pair on the same side; train = the
  rest.
- BoolQ: train = the hub's train; the hub's validation is cut 1:2, seeded, into validation and test (the
  paper's protocol): 1,090 / 2,180.
- MMLU college chemistry / physics / mathematics: evaluation-only distribution-shift sets; test = the hub's
  test (100 / 102 / 100), validation = the hub's validation; no train split.

Long inputs: a prompt longer than `max_length` tokens (300, the paper's) is shortened inside its long field
(BoolQ: the end of the passage; other tasks: the start of the question), never in the choices or the answer
cue, so the read-out position always follows `Answer:`. The budget counts the prompt plus one answer token
(letters) or plus the longest context + answer of the question (cloze).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from melora.data import load_split
from melora.errors import ProtocolError


if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


SPLIT_SEED = 0
"""Seed of the carved splits (WinoGrande validation, BoolQ validation/test). Fixed: splits never change."""

DEFAULT_MAX_LENGTH = 300
"""Maximum prompt length in tokens, answer token included (paper Table 7)."""

ANSWER_FORMATS = ("letters", "cloze", "cloze_norm")
CLOZE_FORMATS = ("cloze", "cloze_norm")
"""`letters`: one answer token per choice (the paper's, the default); `cloze`: each choice's text is the answer."""
LETTERS = "ABCDEFGHIJ"
MCQ_HEADER = "Return the label of the correct answer for the question below."
BOOLQ_HEADER = "Read the passage below and answer the question with the words 'true' or 'false'."
BOOLQ_CLOZE_ANSWERS = (" no", " yes")
"""BoolQ's cloze answers, index 1 = True (lm-eval's `boolq` scores `no` / `yes`)."""
ELLIPSIS = "..."


@dataclass(frozen=True)
class Example:
    """One rendered question.

    Choice `k` is scored as `log p(answers[k] | prompt + contexts[k])`: the prompt is shared by every choice,
    `contexts[k]` is conditioned on but not scored (WinoGrande cloze: the option put into the blank), and
    `answers[k]` is the scored continuation.

    Attributes:
        prompt (`str`): the shared text, up to and including the answer cue (no trailing space).
        answers (`tuple[str, ...]`): the continuations scored, one per choice, with their leading space
            (`" A"`, ... in the letter format; `" " + choice text` in the cloze format).
        gold (`int`): index of the correct answer in `answers`.
        doc_id (`str`): a stable identifier of the source row (task, split, row index).
        contexts (`tuple[str, ...]`): per-choice text between the prompt and the answer, conditioned on but not
            scored; `()` means none (every context empty).
        answer_format (`str`): the format the example was rendered in (`letters` or `cloze`).

    Example:
        >>> ex = Example("Sarah beat Maria so", (" she won.", " she won."), 0, "x", (" Sarah", " Maria"), "cloze")
        >>> ex.scored_pairs()[1]
        ('Sarah beat Maria so Maria', ' she won.')
    """

    prompt: str
    answers: tuple[str, ...]
    gold: int
    doc_id: str
    contexts: tuple[str, ...] = ()
    answer_format: str = "letters"

    def context(self, k: int) -> str:
        """The unscored text between the prompt and answer `k` (`""` when there is none)."""
        return self.contexts[k] if self.contexts else ""

    def scored_pairs(self) -> list[tuple[str, str]]:
        """`(context, continuation)` per choice, as lm-eval's `loglikelihood` requests take them.

        The context is `prompt + contexts[k]`, the continuation `answers[k]`; lm-eval's log-likelihood of the pair
        is the sum over the continuation's tokens, which is what `melora.cloze_readout` computes.
        """
        return [(self.prompt + self.context(k), answer) for k, answer in enumerate(self.answers)]


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's data lives and how its rows are rendered.

    Attributes:
        name (`str`): the short task name (`arc_c`); the lm-eval task is `melora_<name>`.
        title (`str`): the paper's name for it (`ARC-C`).
        dataset (`str`): hub id of the source dataset.
        config (`str`): hub config.
        kind (`str`): `mcq`, `winogrande` or `boolq` (which renderer).
        has_train (`bool`): False for the evaluation-only MMLU sets.
    """

    name: str
    title: str
    dataset: str
    config: str
    kind: str
    has_train: bool = True

    @property
    def lm_eval_name(self) -> str:
        """Name of the task in lm-eval."""
        return f"melora_{self.name}"


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("wgs", "WG-S", "allenai/winogrande", "winogrande_s", "winogrande"),
        TaskSpec("wgm", "WG-M", "allenai/winogrande", "winogrande_m", "winogrande"),
        TaskSpec("arc_c", "ARC-C", "allenai/ai2_arc", "ARC-Challenge", "mcq"),
        TaskSpec("arc_e", "ARC-E", "allenai/ai2_arc", "ARC-Easy", "mcq"),
        TaskSpec("obqa", "OBQA", "allenai/openbookqa", "main", "mcq"),
        TaskSpec("boolq", "BoolQ", "google/boolq", "default", "boolq"),
        TaskSpec("mmlu_chem", "Chem", "cais/mmlu", "college_chemistry", "mcq", has_train=False),
        TaskSpec("mmlu_phys", "Phy", "cais/mmlu", "college_physics", "mcq", has_train=False),
        TaskSpec("mmlu_math", "Math", "cais/mmlu", "college_mathematics", "mcq", has_train=False),
    )
}
ID_TASKS = ("wgs", "wgm", "arc_c", "arc_e", "obqa", "boolq")
"""The paper's six in-distribution tasks (group `melora_id`)."""
OOD_TASKS = ("obqa", "arc_c", "arc_e", "mmlu_chem", "mmlu_phys", "mmlu_math")
"""Train on OBQA, test on it and on five shifted sets (group `melora_ood`)."""
SPLITS = ("train", "validation", "test")


def get_task(name: str) -> TaskSpec:
    """Look up a task by short name (`arc_c`) or lm-eval name (`melora_arc_c`).

    Raises:
        ProtocolError: unknown task, naming the available ones.
    """
    key = name.removeprefix("melora_")
    if key not in TASKS:
        raise ProtocolError(f"Unknown task {name!r}. Available: {', '.join(TASKS)}.")
    return TASKS[key]


# ----------------------------------------------------------------------------------------------------------
# Splits


def load_rows(task: str | TaskSpec, split: str) -> list[dict[str, Any]]:
    """Rows of one split of a task, in the protocol's sense of the split (see the module docstring).

    Raises:
        ProtocolError: unknown split, or `train` of an evaluation-only task.
        DataNotFoundError: the source data is not available.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if split not in SPLITS:
        raise ProtocolError(f"Unknown split {split!r} for task {spec.name!r}. Expected one of {SPLITS}.")
    if split == "train" and not spec.has_train:
        raise ProtocolError(f"Task {spec.name!r} ({spec.title}) is evaluation-only: it has no train split.")
    if spec.kind == "winogrande":
        if split == "test":
            return load_split(spec.dataset, spec.config, "validation")
        train, validation = _winogrande_carve(load_split(spec.dataset, spec.config, "train"))
        return train if split == "train" else validation
    if spec.kind == "boolq":
        if split == "train":
            return load_split(spec.dataset, spec.config, "train")
        validation, test = _boolq_cut(load_split(spec.dataset, spec.config, "validation"))
        return validation if split == "validation" else test
    return load_split(spec.dataset, spec.config, split)


def _winogrande_carve(rows: list[dict[str, Any]], fraction: float = 0.2) -> tuple[list, list]:
    """Split WinoGrande train rows into (train, validation), twins (same option pair) kept together."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(tuple(sorted((row["option1"], row["option2"]))), []).append(i)
    keys = sorted(groups)
    random.Random(SPLIT_SEED).shuffle(keys)
    target, held = round(fraction * len(rows)), set()
    for key in keys:
        if len(held) >= target:
            break
        held.update(groups[key])
    train = [row for i, row in enumerate(rows) if i not in held]
    validation = [row for i, row in enumerate(rows) if i in held]
    return train, validation


def _boolq_cut(rows: list[dict[str, Any]]) -> tuple[list, list]:
    """Cut BoolQ's official validation rows 1:2 into (validation, test), seeded, order kept within each."""
    order = list(range(len(rows)))
    random.Random(SPLIT_SEED).shuffle(order)
    held = set(order[: len(rows) // 3])
    return [r for i, r in enumerate(rows) if i in held], [r for i, r in enumerate(rows) if i not in held]


# ----------------------------------------------------------------------------------------------------------
# Rendering


def render(
    task: str | TaskSpec,
    row: dict[str, Any],
    *,
    doc_id: str = "",
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    answer_format: str = "letters",
) -> Example:
    """Render one source row as an `Example`.

    Args:
        task: task name or spec.
        row: a row in the hub's schema.
        doc_id: identifier stored in the example.
        tokenizer: when given, the prompt is shortened (inside its long field) so prompt + answer fits in
            `max_length` tokens. Without it the prompt is never cut.
        max_length: token budget of prompt plus answer token (letters), or of prompt plus the longest context and
            answer of the question (cloze).
        answer_format: `letters` (the paper's, the default) or `cloze` (see the module docstring).

    Raises:
        ProtocolError: unknown answer format, or a row whose gold label cannot be read.

    Example:
        >>> row = {"question": "Which is hot?", "choices": ["fire", "ice"], "answer": 0}
        >>> render("mmlu_chem", row, answer_format="cloze").scored_pairs()
        [('Question: Which is hot?\\nAnswer:', ' fire'), ('Question: Which is hot?\\nAnswer:', ' ice')]
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if answer_format not in ANSWER_FORMATS:
        raise ProtocolError(f"Unknown answer format {answer_format!r}. Available: {', '.join(ANSWER_FORMATS)}.")
    if answer_format in CLOZE_FORMATS:
        return _render_cloze(spec, row, doc_id, tokenizer, max_length, answer_format)
    if spec.kind == "boolq":
        body, build, keep = row["passage"], lambda passage: _boolq_prompt(passage, row["question"]), "head"
        answers, gold = (" False", " True"), int(bool(row["answer"]))
    else:
        question, choices, gold = _mcq_fields(spec, row)
        answers = tuple(f" {LETTERS[i]}" for i in range(len(choices)))
        body, build, keep = question, lambda q: _mcq_prompt(q, choices), "tail"
    prompt = build(body) if tokenizer is None else _fit(tokenizer, build, body, keep, max_length)
    return Example(prompt=prompt, answers=answers, gold=gold, doc_id=doc_id)


def _mcq_fields(spec: TaskSpec, row: dict[str, Any]) -> tuple[str, list[str], int]:
    """(question, choice texts, gold index) of an ARC, OBQA, MMLU or WinoGrande row."""
    if spec.kind == "winogrande":
        return row["sentence"], [row["option1"], row["option2"]], int(row["answer"]) - 1
    if spec.dataset == "cais/mmlu":
        return row["question"], list(row["choices"]), int(row["answer"])
    question = row["question_stem"] if "question_stem" in row else row["question"]
    labels = [str(label) for label in row["choices"]["label"]]
    key = str(row["answerKey"]).strip()
    if key not in labels:
        raise ProtocolError(f"Row {row.get('id', '?')} of {spec.name}: answer key {key!r} not among labels {labels}.")
    return question, list(row["choices"]["text"]), labels.index(key)


def _mcq_prompt(question: str, choices: Sequence[str]) -> str:
    lines = [MCQ_HEADER, "", f"Question: {question.strip()}", "Choices:"]
    lines += [f"{LETTERS[i]}) {text.strip()}" for i, text in enumerate(choices)]
    return "\n".join(lines + ["Answer:"])


def _boolq_prompt(passage: str, question: str) -> str:
    question = question.strip()
    question = question[:1].upper() + question[1:] + ("" if question.endswith("?") else "?")
    return "\n".join(
        [BOOLQ_HEADER, "", f"Passage: {passage.strip()}", f"Question: {question}", "Answer (true or false):"]
    )


def _fit(
    tokenizer: PreTrainedTokenizerBase,
    build: Callable[[str], str],
    body: str,
    keep: str,
    max_length: int,
    reserve: int | Callable[[str], int] = 1,
) -> str:
    """Shorten `body` until `build(body)` plus `reserve` answer tokens fits in `max_length` tokens.

    `keep="head"` keeps the start of the body (a passage), `"tail"` its end (a question, whose last sentence
    is usually the one asked). `reserve` is 1 (one answer token, the letter format) or, for the cloze format, a
    function of the full prompt giving the tokens of the longest context + answer after it.
    """
    prompt = build(body)
    n_tokens = len(tokenizer(prompt).input_ids)
    if callable(reserve):
        reserve = reserve(prompt)
    if n_tokens + reserve <= max_length:
        return prompt
    ids = tokenizer(body, add_special_tokens=False).input_ids
    fixed = n_tokens - len(ids)
    if fixed + reserve + 4 > max_length:
        answers = "" if reserve == 1 else f" and the longest choice ({reserve} tokens)"
        raise ProtocolError(
            f"max_length={max_length} cannot hold even the fixed part of the prompt ({fixed} tokens){answers}."
        )
    keep_n = max_length - fixed - reserve - 2  # room for the ellipsis
    while keep_n > 0:
        part = ids[:keep_n] if keep == "head" else ids[-keep_n:]
        text = tokenizer.decode(part).strip()
        candidate = build(text + " " + ELLIPSIS if keep == "head" else ELLIPSIS + " " + text)
        if len(tokenizer(candidate).input_ids) + reserve <= max_length:
            return candidate
        keep_n -= 4
    raise ProtocolError(f"Could not fit the prompt into max_length={max_length} tokens.")


def _render_cloze(
    spec: TaskSpec,
    row: dict[str, Any],
    doc_id: str,
    tokenizer: PreTrainedTokenizerBase | None,
    max_length: int,
    answer_format: str = "cloze",
) -> Example:
    """The cloze form of a row (see the module docstring): shared prompt, per-choice contexts, scored answers."""
    if spec.kind == "boolq":
        question = row["question"]
        body, build, keep = row["passage"], lambda passage: _boolq_cloze_prompt(passage, question), "head"
        contexts, answers, gold = ("", ""), BOOLQ_CLOZE_ANSWERS, int(bool(row["answer"]))
    elif spec.kind == "winogrande":
        body, contexts, answers, gold = _winogrande_cloze_fields(row)
        build, keep = (lambda before: before), "tail"
    else:
        question, choices, gold = _mcq_fields(spec, row)
        contexts, answers = ("",) * len(choices), tuple(f" {text.strip()}" for text in choices)
        body, build, keep = question, _cloze_question_prompt, "tail"
    if tokenizer is None:
        prompt = build(body)
    else:

        def longest_choice(prompt: str) -> int:
            base = len(tokenizer(prompt).input_ids)
            return max(len(tokenizer(prompt + c + a).input_ids) - base for c, a in zip(contexts, answers))

        prompt = _fit(tokenizer, build, body, keep, max_length, reserve=longest_choice)
    return Example(
        prompt=prompt, answers=answers, gold=gold, doc_id=doc_id, contexts=contexts, answer_format=answer_format
    )


def _cloze_question_prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def _boolq_cloze_prompt(passage: str, question: str) -> str:
    question = question.strip()
    return f"{passage.strip()}\nQuestion: {question}{'' if question.endswith('?') else '?'}\nAnswer:"


def _winogrande_cloze_fields(row: dict[str, Any]) -> tuple[str, tuple[str, str], tuple[str, str], int]:
    """(prompt, contexts, answers, gold) of a WinoGrande row: options in the blank, the rest of the sentence scored.

    The whitespace around the blank goes to the start of the context and of the answer, so each piece starts at a
    word boundary and `prompt + context + answer` is the sentence with the option filled in.
    """
    sentence = row["sentence"]
    if "_" not in sentence:
        raise ProtocolError(f"WinoGrande sentence without a blank '_': {sentence!r}.")
    blank = sentence.index("_")
    before, after = sentence[:blank], sentence[blank + 1 :]
    prompt = before.rstrip()
    lead = " " if before != prompt and prompt else ""
    answer = (" " + after.strip()) if after[:1].isspace() else after.rstrip()
    if not answer.strip():
        raise ProtocolError(f"WinoGrande sentence with nothing to score after its blank: {sentence!r}.")
    contexts = (lead + row["option1"].strip(), lead + row["option2"].strip())
    return prompt, contexts, (answer, answer), int(row["answer"]) - 1


def load_examples(
    task: str | TaskSpec,
    split: str,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    limit: int | None = None,
    answer_format: str = "letters",
) -> list[Example]:
    """Rendered examples of one split of a task (the first `limit` rows when given)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    rows = load_rows(spec, split)
    if limit is not None:
        rows = rows[:limit]
    return [
        render(
            spec,
            row,
            doc_id=f"{spec.name}/{split}/{i}",
            tokenizer=tokenizer,
            max_length=max_length,
            answer_format=answer_format,
        )
        for i, row in enumerate(rows)
    ]


# ----------------------------------------------------------------------------------------------------------
# Answer tokens


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, example: Example) -> list[int]:
    """Token id of each answer string, as it is tokenised right after the prompt (letter format).

    The id is read from the tokenisation of `prompt + answer` (the way lm-eval scores a continuation), so a
    tokenizer that merges the answer with the cue, or splits it, is caught. Cloze answers are token sequences:
    see `choice_token_ids`.

    Raises:
        ProtocolError: an answer is not exactly one token after the prompt, for this tokenizer.
    """
    context = tokenizer(example.prompt).input_ids
    ids = []
    for answer in example.answers:
        whole = tokenizer(example.prompt + answer).input_ids
        if whole[: len(context)] != context or len(whole) != len(context) + 1:
            name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
            raise ProtocolError(
                f"Answer {answer!r} is not a single token after the prompt for tokenizer {name!r} "
                f"({len(whole) - len(context)} tokens). The protocol reads one token per answer."
            )
        ids.append(whole[-1])
    return ids


def choice_token_ids(tokenizer: PreTrainedTokenizerBase, example: Example) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the prompt, and per choice the (context, answer) token counts that follow it.

    Tokenised as lm-eval does a `(context, continuation)` pair: the prompt alone, then `prompt + context + answer`
    as a whole, the choice's tokens being what follows the prompt's; the context's share is read the same way from
    `prompt + context`. A prompt that tokenises to nothing (a tokenizer without BOS) starts with the BOS or EOS
    token, as lm-eval's empty-context rule does.

    Returns:
        `(prompt_ids, segments)`: `segments[k] = (ids, n_context)`: the tokens after the prompt for choice `k` and
        how many of them are its unscored context.

    Raises:
        ProtocolError: an answer tokenises to nothing after its context.
    """
    prompt_ids = list(tokenizer(example.prompt).input_ids)
    if not prompt_ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ProtocolError("An empty prompt needs a BOS or EOS token to condition on; the tokenizer has neither.")
        prompt_ids = [start]
    segments = []
    for k, answer in enumerate(example.answers):
        context = example.context(k)
        whole = tokenizer(example.prompt + context + answer).input_ids
        n_prefix = len(tokenizer(example.prompt).input_ids)
        ids = list(whole[n_prefix:])
        n_context = len(tokenizer(example.prompt + context).input_ids) - n_prefix if context else 0
        if len(ids) <= n_context:
            raise ProtocolError(
                f"Answer {answer!r} of {example.doc_id or 'an example'} has no token after its context {context!r}."
            )
        segments.append((ids, n_context))
    return prompt_ids, segments


def check_tokenizer(
    tokenizer: PreTrainedTokenizerBase, tasks: Sequence[str] = tuple(TASKS), answer_format: str = "letters"
) -> None:
    """Fail at start, not mid-run, if any answer of the given tasks is not one token for `tokenizer`.

    Only the letter format needs single-token answers; with `answer_format="cloze"` there is nothing to check.
    """
    if answer_format not in ANSWER_FORMATS:
        raise ProtocolError(f"Unknown answer format {answer_format!r}. Available: {', '.join(ANSWER_FORMATS)}.")
    if answer_format in CLOZE_FORMATS:
        return
    probes = {
        "mcq": Example(
            "Question: x\nChoices:\nA) a\nB) b\nC) c\nD) d\nE) e\nAnswer:", tuple(f" {c}" for c in "ABCDE"), 0, ""
        ),
        "boolq": Example("Passage: x\nQuestion: y?\nAnswer (true or false):", (" False", " True"), 0, ""),
    }
    for kind in {"boolq" if get_task(t).kind == "boolq" else "mcq" for t in tasks}:
        answer_token_ids(tokenizer, probes[kind])


def choice_score_scale(example: Example) -> list[float]:
    """Factor each choice's answer log-likelihood is multiplied by before the softmax over choices.

    1 in the `letters` and `cloze` formats; `1 / len(answer)` (characters, as lm-eval's `acc_norm`) in `cloze_norm`.
    """
    if example.answer_format != "cloze_norm":
        return [1.0] * len(example.answers)
    return [1.0 / max(len(answer), 1) for answer in example.answers]
