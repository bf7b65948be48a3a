"""Tests for producer.readers: every bad file is rejected whole, with PATH:LINE problems."""

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from producer import readers
from producer.readers import (
    DEFAULT_MAX_PROMPT_CHARS,
    MAX_PROBLEMS_SHOWN,
    InputFileError,
    PromptInput,
    iter_prompts,
    read_prompts,
)

# ------------------------------------------------------------------------------- helpers


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    else:
        path.write_bytes(content)
    return path


def jsonl(tmp_path: Path, *objects: Any, name: str = "prompts.jsonl") -> Path:
    """A JSON Lines file; str items are written verbatim so tests can write broken lines."""
    lines = [item if isinstance(item, str) else json.dumps(item) for item in objects]
    return write(tmp_path, name, "\n".join(lines) + "\n")


def rejected(path: Path, **kwargs: Any) -> InputFileError:
    """Assert that reading fails (nothing is returned) and hand back the error."""
    with pytest.raises(InputFileError) as caught:
        read_prompts(path, **kwargs)
    return caught.value


def only_problem(path: Path, **kwargs: Any) -> str:
    problems = rejected(path, **kwargs).problems
    assert len(problems) == 1, problems
    return problems[0]


def assert_problem(problem: str, path: Path, line: int | None, fragment: str) -> None:
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert problem.startswith(prefix), problem
    assert fragment in problem, problem


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


# ------------------------------------------------------------------ file-level problems


def test_unsupported_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.xyz", '{"prompt": "hi"}\n')
    problem = only_problem(path)
    assert problem == f"{path}: unsupported file type '.xyz'; use .jsonl or .csv"


def test_file_without_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts", '{"prompt": "hi"}\n')
    assert_problem(only_problem(path), path, None, "unsupported file type (no extension)")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    assert_problem(only_problem(path), path, None, "file not found")


def test_directory(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.mkdir()
    assert_problem(only_problem(path), path, None, "is a directory")


@pytest.mark.parametrize("content", [b"", b"  \n\n\t\r\n   "])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, "prompts.jsonl", content)
    assert only_problem(path) == f"{path}: file is empty (no prompts)"


def test_empty_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", b"")
    assert only_problem(path) == f"{path}: file is empty (no prompts)"


def test_csv_with_only_a_header_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "prompt,custom_id\n\n")
    assert_problem(only_problem(path), path, None, "file is empty (no prompts")


def test_binary_file_reported_once(tmp_path: Path) -> None:
    path = write(
        tmp_path, "prompts.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00\n" * 500
    )
    problem = only_problem(path)
    assert problem == f"{path}: looks like a binary file, not JSON Lines/CSV text"


def test_control_byte_soup_is_binary_even_without_nul(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", bytes(range(1, 32)) * 100)
    assert_problem(only_problem(path), path, None, "looks like a binary file")


def test_utf16_file(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.jsonl", '{"prompt": "hi"}\n'.encode("utf-16"))
    assert_problem(only_problem(path), path, None, "UTF-16")


def test_invalid_utf8_names_line_byte_and_column(tmp_path: Path) -> None:
    latin1_line = '{"prompt": "café"}'.encode("latin-1")
    path = write(tmp_path, "prompts.jsonl", b'{"prompt": "ok"}\n' + latin1_line + b"\n")
    problem = only_problem(path)
    assert problem == (
        f"{path}:2: not valid UTF-8 (byte 0xe9 at column 16); save the file as UTF-8"
    )


def test_invalid_utf8_column_counts_characters_not_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.jsonl", '{"prompt": "日本'.encode() + b"\xff" + b'"}\n')
    assert_problem(only_problem(path), path, 1, "byte 0xff at column 15")


def test_bom_is_stripped(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.jsonl", b'\xef\xbb\xbf{"prompt": "hi"}\n')
    assert read_prompts(path) == [PromptInput([user("hi")], None, None, 1)]


def test_uppercase_extension_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "PROMPTS.JSONL", '{"prompt": "hi"}\n')
    assert len(read_prompts(path)) == 1


@pytest.mark.parametrize("name", ["prompts.ndjson", "prompts.json"])
def test_other_json_lines_extensions(tmp_path: Path, name: str) -> None:
    path = jsonl(tmp_path, {"prompt": "a"}, {"prompt": "b"}, name=name)
    assert [p.messages for p in read_prompts(path)] == [[user("a")], [user("b")]]


# ------------------------------------------------------------------- JSON Lines shapes


def test_prompt_shape(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        {"prompt": "Capital of France?", "custom_id": "q1", "metadata": {"topic": "geo"}},
        {"prompt": "2+2?", "system": "Be terse.", "custom_id": 7},
    )
    assert read_prompts(path) == [
        PromptInput([user("Capital of France?")], "q1", {"topic": "geo"}, 1),
        PromptInput([{"role": "system", "content": "Be terse."}, user("2+2?")], "7", None, 2),
    ]


def test_messages_shape(tmp_path: Path) -> None:
    messages = [
        {"role": "developer", "content": "Rules."},
        {"role": "system", "content": "You are kind."},
        user("Hi"),
        {"role": "assistant", "content": "Hello!"},
        user("How are you?"),
    ]
    path = jsonl(tmp_path, {"messages": messages, "custom_id": "c", "metadata": {"k": 1}})
    assert read_prompts(path) == [PromptInput(messages, "c", {"k": 1}, 1)]


def test_messages_keep_only_role_and_content(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"messages": [{"role": "user", "content": "hi", "name": "bob"}]})
    assert read_prompts(path)[0].messages == [user("hi")]


def test_content_part_lists_are_joined(tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    path = jsonl(tmp_path, {"messages": [{"role": "user", "content": parts}]})
    assert read_prompts(path)[0].messages == [user("first\nsecond")]


def test_batch_api_shape(tmp_path: Path) -> None:
    line = {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [user("Hello")], "max_tokens": 100},
    }
    path = jsonl(tmp_path, line)
    assert read_prompts(path) == [PromptInput([user("Hello")], "request-1", None, 1)]


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.jsonl", '\n{"prompt": "a"}\n\n  \r\n{"prompt": "b"}')
    assert [p.line for p in read_prompts(path)] == [2, 5]


def test_odd_unicode_and_control_characters_are_accepted_unchanged(tmp_path: Path) -> None:
    texts = [
        "emoji \U0001f600\U0001f44d\U0001f3fd",
        "right-to-left \u05e9\u05dc\u05d5\u05dd \u202eevil\u202c",
        "combining e\u0301 and zero width\u200b joiner \u200d",
        "controls \x07 \x1b[31m red \x7f and a raw\ttab",
        "line\u2028separator",
    ]
    # Written both escaped (json.dumps default) and raw UTF-8, one per line.
    lines = [json.dumps({"prompt": text}) for text in texts]
    lines += [json.dumps({"prompt": text}, ensure_ascii=False) for text in texts]
    path = write(tmp_path, "prompts.jsonl", "\n".join(lines) + "\n")
    got = [p.messages[0]["content"] for p in read_prompts(path)]
    assert got == texts + texts


def test_raw_tab_inside_a_json_string_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.jsonl", '{"prompt": "a\tb"}\n')
    assert read_prompts(path)[0].messages == [user("a\tb")]


def test_nul_in_ignored_fields_is_not_an_error(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "hi", "expected_answer": "a\u0000b"})
    assert len(read_prompts(path)) == 1


def test_empty_system_is_dropped(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "hi", "system": "  "})
    assert read_prompts(path)[0].messages == [user("hi")]


# ------------------------------------------------------------------- JSON Lines problems


def test_json_array_file(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.json", json.dumps([{"prompt": "a"}, {"prompt": "b"}], indent=2))
    problem = only_problem(path)
    assert problem == (
        f"{path}:1: the file is a JSON array; JSON Lines wants one object per line "
        "(e.g. `jq -c '.[]' FILE`)"
    )


def test_pretty_printed_object_is_one_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.json", json.dumps({"prompt": "a"}, indent=2) + "\n")
    assert_problem(only_problem(path), path, 1, "pretty-printed JSON")


def test_invalid_json(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "ok"}, '{"prompt": "no closing brace"')
    problem = only_problem(path)
    assert_problem(problem, path, 2, "invalid JSON (")


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("[1, 2]", "array"),
        ('"text"', "string"),
        ("3", "number"),
        ("null", "null"),
        ("true", "boolean"),
    ],
)
def test_json_that_is_not_an_object(tmp_path: Path, line: str, kind: str) -> None:
    path = jsonl(tmp_path, {"prompt": "ok"}, line)
    assert only_problem(path) == f"{path}:2: expected a JSON object, got {kind}"


def test_object_without_prompt_or_messages(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"question": "why?"})
    problem = only_problem(path)
    assert_problem(problem, path, 1, 'needs a "prompt" string or a "messages" list')
    assert "question" in problem  # the keys found help the user spot the misnamed field


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt(tmp_path: Path, prompt: str) -> None:
    path = jsonl(tmp_path, {"prompt": "ok"}, {"prompt": prompt})
    assert only_problem(path) == f"{path}:2: prompt is empty"


@pytest.mark.parametrize("prompt", [None, 42, ["a"], {"text": "a"}])
def test_prompt_that_is_not_a_string(tmp_path: Path, prompt: Any) -> None:
    path = jsonl(tmp_path, {"prompt": prompt})
    assert_problem(only_problem(path), path, 1, "prompt must be a string")


def test_both_prompt_and_messages(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "a", "messages": [user("b")]})
    assert_problem(only_problem(path), path, 1, "use only one")


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ("hello", "messages must be a list, got string"),
        ([], "messages is empty"),
        ([user("")], "messages[0].content is empty"),
        ([user("   ")], "messages[0].content is empty"),
        ([{"role": "user"}], "messages[0].content is missing"),
        ([{"role": "user", "content": 5}], "messages[0].content must be a string"),
        ([{"role": "tool", "content": "x"}], "messages[0].role must be one of"),
        (["hello"], "messages[0] must be an object"),
        ([{"role": "system", "content": "s"}], "messages has no user message"),
        ([user("q"), {"role": "assistant", "content": "a"}], "must be from the user"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "only text content is supported",
        ),
    ],
)
def test_bad_messages(tmp_path: Path, messages: Any, fragment: str) -> None:
    path = jsonl(tmp_path, {"prompt": "fine"}, {"messages": messages})
    problems = rejected(path).problems
    assert problems, problems
    for problem in problems:
        assert problem.startswith(f"{path}:2: "), problems
    assert any(fragment in problem for problem in problems), problems


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"url": "/v1/embeddings"}, "url '/v1/embeddings' is not supported"),
        ({"method": "GET"}, "method 'GET' is not supported"),
        ({"body": None}, 'needs a "body" object with a "messages" list'),
        ({"body": {"model": "m", "prompt": "completions style"}}, '"messages" list'),
    ],
)
def test_bad_batch_requests(tmp_path: Path, changes: dict[str, Any], fragment: str) -> None:
    line = {
        "custom_id": "r1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [user("hi")]},
    }
    path = jsonl(tmp_path, line | changes)
    assert_problem(only_problem(path), path, 1, fragment)


@pytest.mark.parametrize("custom_id", [1.5, True, ["a"], {"id": 1}])
def test_custom_id_of_the_wrong_type(tmp_path: Path, custom_id: Any) -> None:
    path = jsonl(tmp_path, {"prompt": "hi", "custom_id": custom_id})
    assert_problem(only_problem(path), path, 1, "custom_id must be a string or an integer")


def test_custom_id_that_is_an_empty_string(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "hi", "custom_id": ""})
    assert_problem(only_problem(path), path, 1, "custom_id is an empty string")


@pytest.mark.parametrize("metadata", [[1, 2], "text", 3])
def test_metadata_that_is_not_an_object(tmp_path: Path, metadata: Any) -> None:
    path = jsonl(tmp_path, {"prompt": "hi", "metadata": metadata})
    assert_problem(only_problem(path), path, 1, "metadata must be a JSON object")


def test_prompt_over_the_limit(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "short"}, {"prompt": "x" * 11})
    problem = only_problem(path, max_prompt_chars=10)
    assert problem == f"{path}:2: prompt is 11 characters, over the limit of 10"


def test_limit_counts_every_message(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "x" * 6}, user("y" * 6)]
    path = jsonl(tmp_path, {"messages": messages})
    assert_problem(only_problem(path, max_prompt_chars=10), path, 1, "prompt is 12 characters")


def test_ten_megabyte_line_is_a_clean_over_the_limit_error(tmp_path: Path) -> None:
    size = 10 * 1024 * 1024
    path = jsonl(tmp_path, {"prompt": "ok"}, {"prompt": "x" * size}, {"prompt": "also ok"})
    problem = only_problem(path)
    expected = f"prompt is {size} characters, over the limit of {DEFAULT_MAX_PROMPT_CHARS}"
    assert problem == f"{path}:2: {expected}"


def test_line_over_the_hard_byte_cap_is_skipped_without_reading_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "HARD_MAX_LINE_BYTES", 1000)
    path = jsonl(tmp_path, {"prompt": "x" * 5000}, {"prompt": ""})
    problems = rejected(path, max_prompt_chars=100).problems
    assert len(problems) == 2, problems
    assert_problem(problems[0], path, 1, "over the limit of 1000 bytes")
    assert problems[1] == f"{path}:2: prompt is empty"  # numbering survives the skip


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"prompt": "a\\u0000b"}', "prompt contains a NUL character"),
        ('{"messages": [{"role": "user", "content": "\\u0000"}]}', "messages[0].content"),
        ('{"prompt": "a", "metadata": {"note": "x\\u0000"}}', "metadata.note contains a NUL"),
        ('{"prompt": "a", "metadata": {"k\\u0000": 1}}', "a key in metadata contains a NUL"),
        ('{"prompt": "a", "custom_id": "id\\u0000"}', "custom_id contains a NUL"),
    ],
)
def test_nul_characters_are_rejected(tmp_path: Path, line: str, fragment: str) -> None:
    path = jsonl(tmp_path, {"prompt": "fine"}, line)
    assert_problem(only_problem(path), path, 2, fragment)


def test_raw_nul_byte_after_the_binary_sniff_names_its_line(tmp_path: Path) -> None:
    filler = "".join(json.dumps({"prompt": f"line {i}"}) + "\n" for i in range(1000))
    content = filler.encode() + b'{"prompt": "a\x00b"}\n'
    path = write(tmp_path, "prompts.jsonl", content)
    assert_problem(only_problem(path), path, 1001, "NUL character")


def test_lone_surrogate_escape_is_rejected(tmp_path: Path) -> None:
    path = jsonl(tmp_path, '{"prompt": "half an emoji \\ud83d"}')
    assert_problem(only_problem(path), path, 1, "unpaired surrogate (U+D83D)")


def test_duplicate_custom_id(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        {"prompt": "a", "custom_id": "x"},
        {"prompt": "b", "custom_id": "y"},
        {"prompt": "c", "custom_id": "x"},
    )
    assert only_problem(path) == f"{path}:3: duplicate custom_id 'x' (first seen on line 1)"


def test_integer_and_string_ids_collide(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "a", "custom_id": 1}, {"prompt": "b", "custom_id": "1"})
    assert_problem(only_problem(path), path, 2, "duplicate custom_id '1'")


def test_many_problems_are_collected_in_one_pass(tmp_path: Path) -> None:
    lines: list[Any] = [{"prompt": f"ok {n}"} for n in range(1, 11)]
    lines[1] = "not json"  # line 2
    lines[4] = {"prompt": ""}  # line 5
    lines[8] = {"messages": "nope"}  # line 9
    path = jsonl(tmp_path, *lines)
    problems = rejected(path).problems
    assert [problem.split(":")[1] for problem in problems] == ["2", "5", "9"]
    assert all(problem.startswith(f"{path}:") for problem in problems)


def test_one_line_can_have_several_problems(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "", "custom_id": 1.5, "metadata": []})
    problems = rejected(path).problems
    assert len(problems) == 3
    assert all(problem.startswith(f"{path}:1: ") for problem in problems)


# ------------------------------------------------------------------------------- errors


def test_error_message_shows_twenty_problems_then_a_count_then_the_formats(
    tmp_path: Path,
) -> None:
    path = jsonl(tmp_path, *([{"prompt": ""}] * 25))
    error = rejected(path)
    assert len(error.problems) == 25
    lines = str(error).splitlines()
    assert lines[:MAX_PROBLEMS_SHOWN] == error.problems[:MAX_PROBLEMS_SHOWN]
    assert lines[MAX_PROBLEMS_SHOWN] == "... and 5 more problems"
    assert lines[-1].startswith("Accepted formats:")
    assert len(lines) == MAX_PROBLEMS_SHOWN + 2


def test_short_error_message_has_no_count_line(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": ""})
    lines = str(rejected(path)).splitlines()
    assert lines[0] == f"{path}:1: prompt is empty"
    assert len(lines) == 2


def test_error_survives_pickling(tmp_path: Path) -> None:
    error = InputFileError(["a.jsonl:1: prompt is empty", "a.jsonl:2: prompt is empty"])
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == error.problems
    assert str(copy) == str(error)


def test_error_built_from_one_string(tmp_path: Path) -> None:
    assert InputFileError("x.txt: unsupported").problems == ["x.txt: unsupported"]


def test_iter_prompts_raises_only_after_reading_everything(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "a"}, {"prompt": ""}, {"prompt": "c"}, {"prompt": ""})
    seen: list[PromptInput] = []
    with pytest.raises(InputFileError) as caught:
        seen.extend(iter_prompts(path))
    assert [p.line for p in seen] == [1, 3]
    assert len(caught.value.problems) == 2


def test_non_positive_limit_is_a_programming_error(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "a"})
    with pytest.raises(ValueError):
        read_prompts(path, max_prompt_chars=0)


def test_hundred_thousand_lines(tmp_path: Path) -> None:
    count = 100_000
    content = "".join(
        json.dumps({"prompt": f"question {i} \U0001f600", "custom_id": i}) + "\n"
        for i in range(count)
    )
    path = write(tmp_path, "prompts.jsonl", content)
    prompts = read_prompts(path)
    assert len(prompts) == count
    assert prompts[-1].custom_id == str(count - 1)
    assert prompts[-1].line == count


# ------------------------------------------------------------------------------------ CSV


def test_csv_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prompts.csv",
        " prompt ,custom_id,system,topic,level\n"
        "Capital of France?,q1,Be terse.,geo,\n"
        "2+2?,,,math,easy\n",
    )
    assert read_prompts(path) == [
        PromptInput(
            [{"role": "system", "content": "Be terse."}, user("Capital of France?")],
            "q1",
            {"topic": "geo"},
            2,
        ),
        PromptInput([user("2+2?")], None, {"topic": "math", "level": "easy"}, 3),
    ]


def test_csv_metadata_column_holds_json(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prompts.csv",
        'prompt,metadata,source\nhi,"{""n"": 1, ""tags"": [""a""]}",web\n',
    )
    assert read_prompts(path)[0].metadata == {"n": 1, "tags": ["a"], "source": "web"}


def test_csv_multi_line_quoted_prompt_and_record_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "prompts.csv",
        'prompt,custom_id\n"first line\nsecond line\n\nfourth line",a\n'
        '\nsimple,b\n"two\r\nlines",c\n',
    )
    prompts = read_prompts(path)
    assert [p.messages[0]["content"] for p in prompts] == [
        "first line\nsecond line\n\nfourth line",
        "simple",
        "two\r\nlines",
    ]
    assert [p.line for p in prompts] == [2, 7, 8]


def test_csv_problem_line_is_where_the_record_starts(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", 'prompt,custom_id\n"a\nb\nc",x\n"",y\n')
    assert only_problem(path) == f"{path}:5: prompt is empty"


def test_csv_short_rows_and_blank_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "prompt,custom_id,topic\nhi\n,,\n\nthere,2\n")
    prompts = read_prompts(path)
    assert [(p.messages[0]["content"], p.custom_id, p.line) for p in prompts] == [
        ("hi", None, 2),
        ("there", "2", 5),
    ]


def test_csv_bom_and_odd_unicode(tmp_path: Path) -> None:
    text = "\u05e9\u05dc\u05d5\u05dd \U0001f600 e\u0301 \x07"
    path = write(tmp_path, "prompts.csv", b"\xef\xbb\xbf" + f"prompt\n{text}\n".encode())
    assert read_prompts(path)[0].messages == [user(text)]


def test_csv_without_prompt_column(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "a,b,c\n1,2,3\n")
    assert only_problem(path) == f"{path}:1: CSV has no 'prompt' column (columns: a, b, c)"


def test_csv_prompt_column_is_case_sensitive(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "Prompt,id\nhi,1\n")
    problem = only_problem(path)
    assert_problem(problem, path, 1, "CSV has no 'prompt' column (columns: Prompt, id)")
    assert "case-sensitive" in problem


def test_csv_separated_by_semicolons_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "prompt;custom_id\nhi;1\n")
    assert_problem(only_problem(path), path, 1, "';'")


def test_csv_empty_prompt_cell(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "prompt,custom_id\nhi,1\n  ,2\n")
    assert only_problem(path) == f"{path}:3: prompt is empty"


def test_csv_row_with_more_fields_than_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "prompt,custom_id\nhello, world,1\n")
    assert_problem(only_problem(path), path, 2, "row has 3 fields but the header has 2 columns")


def test_csv_unclosed_quote(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", 'prompt\nok\n"never closed\nmore\n')
    assert_problem(only_problem(path), path, 3, "never closed")


def test_csv_invalid_utf8_names_the_physical_line(tmp_path: Path) -> None:
    content = b'prompt,custom_id\n"multi\nline",1\ncaf\xe9,2\n'
    path = write(tmp_path, "prompts.csv", content)
    assert_problem(only_problem(path), path, 4, "not valid UTF-8 (byte 0xe9 at column 4)")


def test_csv_nul_in_a_cell(tmp_path: Path) -> None:
    filler = "".join(f"prompt {i},{i}\n" for i in range(1000))
    content = ("prompt,custom_id\n" + filler).encode() + b"bad\x00prompt,x\n"
    path = write(tmp_path, "prompts.csv", content)
    assert_problem(only_problem(path), path, 1002, "prompt contains a NUL character")


def test_csv_nul_escape_in_metadata_json(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", 'prompt,metadata\nhi,"{""a"": ""\\u0000""}"\n')
    assert_problem(only_problem(path), path, 2, "metadata.a contains a NUL")


def test_csv_duplicate_custom_id(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", 'prompt,custom_id\n"a\nb",x\nc,y\nd,x\n')
    assert only_problem(path) == f"{path}:5: duplicate custom_id 'x' (first seen on line 2)"


def test_csv_prompt_over_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "prompt,system\nhi,\nhello,abcdef\n")
    assert only_problem(path, max_prompt_chars=10) == (
        f"{path}:3: prompt is 11 characters, over the limit of 10"
    )


def test_csv_prompt_longer_than_the_csv_module_default(tmp_path: Path) -> None:
    text = "x" * 150_000  # csv.field_size_limit() defaults to 131072
    path = write(tmp_path, "prompts.csv", f'prompt\n"{text}"\n')
    assert read_prompts(path)[0].messages == [user(text)]


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [('"[1, 2]"', "must hold a JSON object, got array"), ("{not json", "not valid JSON")],
)
def test_csv_bad_metadata_cell(tmp_path: Path, cell: str, fragment: str) -> None:
    path = write(tmp_path, "prompts.csv", f"prompt,metadata\nhi,{cell}\n")
    assert_problem(only_problem(path), path, 2, fragment)


def test_csv_repeated_header_column(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "prompt,topic,topic\nhi,a,b\n")
    assert_problem(only_problem(path), path, 1, "repeats column 'topic'")


def test_csv_value_under_an_unnamed_column(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "prompt,,topic\nhi,lost,geo\nok,,geo\n")
    assert_problem(only_problem(path), path, 2, "column 2 has a value but no name")


def test_csv_many_problems_in_one_pass(tmp_path: Path) -> None:
    path = write(tmp_path, "prompts.csv", "prompt,custom_id\nok,1\n,2\nok,1\na,b,c\n")
    problems = rejected(path).problems
    assert [problem.split(":")[1] for problem in problems] == ["3", "4", "5"]
