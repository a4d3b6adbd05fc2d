"""Golden prompts, answer tokens, splits and truncation of the task protocol, on the real benchmark data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from melora import protocol as P
from melora.errors import ProtocolError


GOLDEN = Path(__file__).parent / "golden" / "protocol"

# (golden file, task, test-split row index, gold index written by hand from the source row)
GOLDEN_CASES = [
    ("wgs", "wgs", 0, 1),  # answer "2" -> option2 "Maria"
    ("wgm", "wgm", 0, 1),
    ("arc_c", "arc_c", 0, 2),  # answerKey "C"
    ("arc_e", "arc_e", 0, 0),  # answerKey "A"
    ("obqa", "obqa", 0, 1),  # answerKey "B"
    ("boolq", "boolq", 0, 0),  # answer False -> " False" is index 0
    ("mmlu_chem", "mmlu_chem", 0, 3),
    ("mmlu_phys", "mmlu_phys", 0, 1),
    ("mmlu_math", "mmlu_math", 0, 1),
    ("arc_e_numeric_key", "arc_e", 14, 1),  # labels "1".."4", answerKey "2"
    ("arc_c_five_choices", "arc_c", 836, 3),  # labels A..E, answerKey "D"
]


def _read_golden(name: str) -> tuple[str, list[str], int]:
    text = (GOLDEN / f"{name}.txt").read_text()
    prompt, rest = text.split("\n---answers---\n")
    answers, gold = rest.split("\n---gold---\n")
    return prompt, json.loads(answers), int(gold)


@pytest.mark.parametrize(("golden", "task", "index", "gold"), GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_golden_prompt(golden, task, index, gold, smollm_tokenizer):
    row = P.load_rows(task, "test")[index]
    example = P.render(task, row, tokenizer=smollm_tokenizer)
    prompt, answers, stored_gold = _read_golden(golden)
    assert example.prompt == prompt
    assert list(example.answers) == answers
    assert example.gold == stored_gold == gold


@pytest.mark.parametrize("task", list(P.TASKS))
def test_answers_are_single_tokens_read_after_the_prompt(task, smollm_tokenizer):
    tok = smollm_tokenizer
    for example in P.load_examples(task, "test", tokenizer=tok, limit=3):
        context = tok(example.prompt).input_ids
        ids = P.answer_token_ids(tok, example)
        assert len(set(ids)) == len(example.answers)
        for answer, token in zip(example.answers, ids):
            whole = tok(example.prompt + answer).input_ids
            # the answer token sits right after the prompt: the logits at len(context) - 1 predict it
            assert whole[:-1] == context and whole[-1] == token
            assert tok.decode([token]) == answer


def test_a_tokenizer_that_splits_an_answer_is_refused(smollm_tokenizer):
    example = P.Example(prompt="Question: x\nAnswer:", answers=(" A", " Abracadabrantesque"), gold=0, doc_id="x")
    with pytest.raises(ProtocolError, match="not a single token"):
        P.answer_token_ids(smollm_tokenizer, example)


EXPECTED_SIZES = {
    "arc_c": (1119, 299, 1172),
    "arc_e": (2251, 570, 2376),
    "obqa": (4957, 500, 500),
}


@pytest.mark.parametrize("task", list(EXPECTED_SIZES))
def test_official_split_sizes(task):
    assert tuple(len(P.load_rows(task, s)) for s in P.SPLITS) == EXPECTED_SIZES[task]


def test_carved_split_sizes_and_disjointness():
    assert len(P.load_rows("wgs", "test")) == 1267
    assert len(P.load_rows("wgm", "test")) == 1267
    boolq_val, boolq_test = P.load_rows("boolq", "validation"), P.load_rows("boolq", "test")
    assert len(boolq_val) + len(boolq_test) == 3270
    assert len(boolq_test) == 2 * len(boolq_val)
    assert [len(P.load_rows(t, "test")) for t in ("mmlu_chem", "mmlu_phys", "mmlu_math")] == [100, 102, 100]
    for task in ("wgs", "wgm", "boolq"):
        key = (lambda r: r["sentence"]) if task != "boolq" else (lambda r: (r["question"], r["passage"]))
        train, val, test = ({key(r) for r in P.load_rows(task, s)} for s in P.SPLITS)
        assert val and not (val & train) and not (val & test), task
    wgs_train = P.load_rows("wgs", "train")
    assert len(wgs_train) + len(P.load_rows("wgs", "validation")) == 640


def test_winogrande_validation_keeps_twins_together():
    pair = lambda r: tuple(sorted((r["option1"], r["option2"])))  # noqa: E731
    train = {pair(r) for r in P.load_rows("wgm", "train")}
    val = {pair(r) for r in P.load_rows("wgm", "validation")}
    assert not train & val


def test_carved_splits_are_deterministic():
    assert P.load_rows("boolq", "validation") == P.load_rows("boolq", "validation")
    assert P.load_rows("wgs", "validation") == P.load_rows("wgs", "validation")


@pytest.mark.parametrize("task", ["arc_c", "arc_e"])
def test_arc_keeps_every_question(task):
    rows = P.load_rows(task, "test")
    examples = P.load_examples(task, "test")
    assert len(examples) == len(rows)
    assert {len(ex.answers) for ex in examples} >= {3, 4, 5}
    assert all(0 <= ex.gold < len(ex.answers) for ex in examples)


def test_long_boolq_passage_is_cut_but_cue_kept(smollm_tokenizer):
    tok = smollm_tokenizer
    row = {"question": "is the sky blue", "answer": True, "passage": "The sky is blue. " * 400}
    for max_length in (300, 120):
        example = P.render("boolq", row, tokenizer=tok, max_length=max_length)
        assert len(tok(example.prompt).input_ids) + 1 <= max_length
        assert example.prompt.endswith("Question: Is the sky blue?\nAnswer (true or false):")
        assert "..." in example.prompt
    untouched = P.render("boolq", {**row, "passage": "Short."}, tokenizer=tok)
    assert "Passage: Short.\n" in untouched.prompt


def test_long_question_keeps_its_end_and_choices(smollm_tokenizer):
    row = {"question": "filler words " * 300 + "Which one is red?", "choices": ["apple", "sky"], "answer": 0}
    example = P.render("mmlu_chem", row, tokenizer=smollm_tokenizer, max_length=100)
    assert len(smollm_tokenizer(example.prompt).input_ids) < 100
    assert example.prompt.endswith("Which one is red?\nChoices:\nA) apple\nB) sky\nAnswer:")


def test_boolq_gold_follows_the_answer_not_the_column_order():
    true_row = {"question": "q", "answer": True, "passage": "p"}
    example = P.render("boolq", true_row)
    assert example.answers[example.gold] == " True"
    assert P.render("boolq", {**true_row, "answer": False}).answers[0] == " False"


def test_unknown_task_split_and_train_of_eval_only_task():
    with pytest.raises(ProtocolError, match="Unknown task 'nope'"):
        P.get_task("nope")
    with pytest.raises(ProtocolError, match="Unknown split"):
        P.load_rows("obqa", "dev")
    with pytest.raises(ProtocolError, match="evaluation-only"):
        P.load_rows("mmlu_math", "train")
    assert P.get_task("melora_arc_c").name == "arc_c"


# ----------------------------------------------------------------------------------------------------------
# Cloze format

# (golden file, task, test-split row index, gold index written by hand from the source row)
CLOZE_GOLDEN_CASES = [
    ("wgs_cloze", "wgs", 0, 1),  # WinoGrande: options in the blank as contexts, the rest of the sentence scored
    ("arc_e_cloze", "arc_e", 0, 0),  # ARC / OBQA / MMLU: "Question: ...\nAnswer:" and each choice's text
    ("obqa_cloze", "obqa", 0, 1),
    ("mmlu_chem_cloze", "mmlu_chem", 0, 3),
    ("arc_c_five_choices_cloze", "arc_c", 836, 3),
    ("boolq_cloze", "boolq", 0, 0),  # BoolQ: " no" / " yes", index 1 = True
]


def _read_cloze_golden(name: str) -> tuple[str, list[str], list[str], int]:
    text = (GOLDEN / f"{name}.txt").read_text()
    prompt, rest = text.split("\n---contexts---\n")
    contexts, rest = rest.split("\n---answers---\n")
    answers, gold = rest.split("\n---gold---\n")
    return prompt, json.loads(contexts), json.loads(answers), int(gold)


@pytest.mark.parametrize(
    ("golden", "task", "index", "gold"), CLOZE_GOLDEN_CASES, ids=[c[0] for c in CLOZE_GOLDEN_CASES]
)
def test_golden_cloze_prompt(golden, task, index, gold, smollm_tokenizer):
    row = P.load_rows(task, "test")[index]
    example = P.render(task, row, tokenizer=smollm_tokenizer, answer_format="cloze")
    prompt, contexts, answers, stored_gold = _read_cloze_golden(golden)
    assert example.prompt == prompt
    assert list(example.contexts) == contexts
    assert list(example.answers) == answers
    assert example.gold == stored_gold == gold
    assert example.answer_format == "cloze"


def test_letters_examples_keep_their_old_fields():
    example = P.render("obqa", P.load_rows("obqa", "test")[0])
    assert example.answer_format == "letters" and example.contexts == ()
    assert example.scored_pairs() == [(example.prompt, answer) for answer in example.answers]


def test_winogrande_cloze_reassembles_the_filled_sentence(smollm_tokenizer):
    rows = P.load_rows("wgm", "validation")[:50]
    for row, example in zip(rows, P.load_examples("wgm", "validation", limit=50, answer_format="cloze")):
        for k, option in enumerate((row["option1"], row["option2"])):
            context, continuation = example.scored_pairs()[k]
            assert context + continuation == row["sentence"].replace("_", option)
            assert continuation.startswith(" ") and example.contexts[k] == " " + option
        assert example.answers[0] == example.answers[1]
        # lm-eval's winogrande: context sentence[:blank] + option, continuation " " + rest.strip(): same text
        blank = row["sentence"].index("_")
        assert example.answers[0] == " " + row["sentence"][blank + 1 :].strip()


@pytest.mark.parametrize("task", ["wgs", "arc_c", "obqa", "boolq", "mmlu_phys"])
def test_cloze_tokenisation_is_clean(task, smollm_tokenizer):
    """Prompt, context and answer tokens concatenate to the tokenisation of the whole text."""
    tok = smollm_tokenizer
    for example in P.load_examples(task, "test", tokenizer=tok, limit=5, answer_format="cloze"):
        prompt_ids, segments = P.choice_token_ids(tok, example)
        for k, (ids, n_context) in enumerate(segments):
            context, continuation = example.scored_pairs()[k]
            assert prompt_ids + ids == tok(context + continuation).input_ids
            assert tok(context).input_ids == prompt_ids + ids[:n_context]
            assert tok.decode(ids[n_context:]) == continuation


def test_long_cloze_inputs_keep_the_cue_and_every_choice(smollm_tokenizer):
    tok = smollm_tokenizer
    row = {"question": "is the sky blue", "answer": True, "passage": "The sky is blue. " * 400}
    example = P.render("boolq", row, tokenizer=tok, max_length=120, answer_format="cloze")
    assert example.prompt.endswith("\nQuestion: is the sky blue?\nAnswer:") and "..." in example.prompt
    assert max(len(tok(c + a).input_ids) for c, a in example.scored_pairs()) <= 120
    long_choice = "a very long answer " * 10
    row = {"question": "filler words " * 300 + "Which one is red?", "choices": ["apple", long_choice], "answer": 0}
    example = P.render("mmlu_chem", row, tokenizer=tok, max_length=100, answer_format="cloze")
    assert example.prompt.endswith("Which one is red?\nAnswer:") and example.prompt.startswith("Question: ...")
    assert example.answers == (" apple", " " + long_choice.strip())
    assert max(len(tok(c + a).input_ids) for c, a in example.scored_pairs()) <= 100
    assert len(tok(example.prompt + example.answers[1]).input_ids) > 90  # the budget is used, not wasted
    with pytest.raises(ProtocolError, match="longest choice"):
        P.render("mmlu_chem", {**row, "choices": ["x", long_choice * 20]}, tokenizer=tok, answer_format="cloze")


def test_cloze_needs_no_single_token_answers_and_unknown_formats_fail(smollm_tokenizer):
    P.check_tokenizer(smollm_tokenizer, ["arc_e"], answer_format="cloze")
    row = P.load_rows("arc_e", "test")[0]
    with pytest.raises(ProtocolError, match="Unknown answer format 'words'"):
        P.render("arc_e", row, answer_format="words")
    with pytest.raises(ProtocolError, match="Unknown answer format"):
        P.check_tokenizer(smollm_tokenizer, ["arc_e"], answer_format="words")
    with pytest.raises(ProtocolError, match="without a blank"):
        P.render("wgs", {"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}, answer_format="cloze")


def test_cloze_norm_has_the_cloze_prompts_and_scales_by_answer_length():
    row = P.load_rows("obqa", "test")[0]
    cloze = P.render("obqa", row, answer_format="cloze")
    norm = P.render("obqa", row, answer_format="cloze_norm")
    assert (norm.prompt, norm.answers, norm.gold) == (cloze.prompt, cloze.answers, cloze.gold)
    assert P.choice_score_scale(cloze) == [1.0] * len(cloze.answers)
    assert P.choice_score_scale(norm) == [1 / len(a) for a in norm.answers]
