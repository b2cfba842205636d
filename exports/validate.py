"""Check a JSONL file against OpenAI's published fine-tuning format rules before upload.

Rules implemented (OpenAI fine-tuning guide and its "data preparation and analysis" cookbook):

- every line is a JSON object; the file is UTF-8 and at most 512 MB; at least 10 examples;
- supervised (``sft``): a ``messages`` list (optional ``tools``/``functions``/``parallel_tool_calls``);
  each message an object with a known ``role`` (system, user, assistant, tool, function), only known
  keys (role, content, name, weight, function_call, tool_calls, tool_call_id, refusal), string
  ``content`` (may be absent only on an assistant message that calls a tool), ``weight`` 0 or 1 and
  only on assistant messages, and at least one assistant message per example;
- preference (``dpo``): ``input.messages`` (same message rules, ending in a user turn),
  ``preferred_output`` and ``non_preferred_output`` each a list of exactly one assistant message;
- token limit per example (default 65,536, the context of current fine-tunable models).

Token counts are an approximation: OpenAI's tokenizer (tiktoken) downloads its vocabulary at run
time, which this toolkit does not do. We compute two figures per example:

- an *upper bound*: UTF-8 bytes of all contents + 4 tokens per message + 3 (byte-level BPE never
  makes a token shorter than one byte, so the real count cannot exceed it);
- an *estimate*: characters / 4 + the same overheads (OpenAI's rule of thumb for English).

An example whose estimate exceeds the limit is an error; one whose upper bound alone exceeds it
is a warning ("may exceed").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exports.errors import ExportError
from exports.formats import SIGNATURES, parse_jsonl_line

ROLES = {"system", "user", "assistant", "tool", "function"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id", "refusal"}
# The keys our sft and openai-dpo rows carry (exports.formats) and the optional ones OpenAI also accepts.
SFT_KEYS = {*SIGNATURES["sft"], "tools", "functions", "parallel_tool_calls"}
DPO_KEYS = set(SIGNATURES["openai-dpo"])
DPO_INPUT_KEYS = {"messages", "tools", "parallel_tool_calls"}
MIN_EXAMPLES = 10
MAX_FILE_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_TOKENS = 65_536
TOKENS_PER_MESSAGE = 4
TOKENS_PER_EXAMPLE = 3


@dataclass
class ValidationReport:
    path: str
    method: str
    examples: int = 0
    estimated_tokens: int = 0
    upper_bound_tokens: int = 0
    max_example_tokens: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.path}: {self.examples} valid {self.method} examples, about {self.estimated_tokens:,} "
                f"tokens (at most {self.upper_bound_tokens:,}; longest example about "
                f"{self.max_example_tokens:,})")


def estimate_tokens(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """(estimate, upper bound) of the tokens of one example's messages.

    >>> estimate_tokens([{"role": "user", "content": "hello there"}])
    (10, 18)
    """
    chars = bytes_ = 0
    for message in messages:
        text = message.get("content") or ""
        if not isinstance(text, str):
            text = json.dumps(text, ensure_ascii=False)
        chars += len(text)
        bytes_ += len(text.encode("utf-8"))
    overhead = TOKENS_PER_MESSAGE * len(messages) + TOKENS_PER_EXAMPLE
    return math.ceil(chars / 4) + overhead, bytes_ + overhead


def check_message(message: Any, where: str) -> None:
    """One chat message against OpenAI's rules (raises ValueError with the problem).

    >>> check_message({"role": "bot", "content": "x"}, "message 1")
    Traceback (most recent call last):
    ...
    ValueError: message 1 has unrecognised role 'bot'
    """
    if not isinstance(message, dict):
        raise ValueError(f"{where} is not an object")
    if "role" not in message:
        raise ValueError(f"{where} has no role")
    extra = set(message) - MESSAGE_KEYS
    if extra:
        raise ValueError(f"{where} has unrecognised key {sorted(extra)[0]!r}")
    role = message["role"]
    if role not in ROLES:
        raise ValueError(f"{where} has unrecognised role {role!r}")
    content = message.get("content")
    calls = message.get("tool_calls") or message.get("function_call")
    if content is None and not (role == "assistant" and calls):
        raise ValueError(f"{where} ({role}) has no content")
    if content is not None and not isinstance(content, str | list):
        raise ValueError(f"{where} ({role}) content must be text")
    if isinstance(content, str) and not content.strip() and role != "assistant":
        raise ValueError(f"{where} ({role}) content is empty")
    if "weight" in message:
        if role != "assistant":
            raise ValueError(f"{where} has a weight but is not an assistant message")
        if message["weight"] not in (0, 1):
            raise ValueError(f"{where} weight must be 0 or 1")


def check_example(example: Any, method: str) -> list[dict[str, Any]]:
    """One JSONL example; returns all its messages (for token counting).

    >>> check_example({"messages": [{"role": "user", "content": "hi"}]}, "sft")
    Traceback (most recent call last):
    ...
    ValueError: example has no assistant message
    """
    if not isinstance(example, dict):
        raise ValueError("line is not a JSON object")
    if method == "sft":
        extra = set(example) - SFT_KEYS
        if extra:
            raise ValueError(f"unrecognised key {sorted(extra)[0]!r} (expected messages)")
        messages = example.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("missing or empty messages list")
        for i, message in enumerate(messages, 1):
            check_message(message, f"message {i}")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("example has no assistant message")
        return messages
    extra = set(example) - DPO_KEYS
    if extra:
        raise ValueError(f"unrecognised key {sorted(extra)[0]!r} (expected input, preferred_output, "
                         "non_preferred_output)")
    inp = example.get("input")
    if not isinstance(inp, dict) or not isinstance(inp.get("messages"), list) or not inp["messages"]:
        raise ValueError("missing input.messages list")
    extra = set(inp) - DPO_INPUT_KEYS
    if extra:
        raise ValueError(f"input has unrecognised key {sorted(extra)[0]!r}")
    for i, message in enumerate(inp["messages"], 1):
        check_message(message, f"input message {i}")
    if inp["messages"][-1]["role"] != "user":
        raise ValueError("input.messages must end with a user message")
    outputs = []
    for key in ("preferred_output", "non_preferred_output"):
        value = example.get(key)
        if not isinstance(value, list) or len(value) != 1:
            raise ValueError(f"{key} must be a list of exactly one assistant message")
        check_message(value[0], key)
        if value[0]["role"] != "assistant" or not isinstance(value[0].get("content"), str):
            raise ValueError(f"{key} must be an assistant message with text content")
        outputs.append(value[0])
    return inp["messages"] + outputs


def validate_file(path: str | Path, method: str = "sft", *, max_tokens: int = DEFAULT_MAX_TOKENS,
                  min_examples: int = MIN_EXAMPLES) -> ValidationReport:
    """Validate a whole file; the first problem is raised as one line (with how many more there are)."""
    if method not in ("sft", "dpo"):
        raise ExportError(f"--method {method!r} is not one of sft, dpo")
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ExportError(f"{path}: larger than OpenAI's 512 MB limit for fine-tuning files")
    report = ValidationReport(path=str(path), method=method)
    problems: list[str] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                problems.append(f"{path} line {number}: empty line")
                continue
            try:
                messages = check_example(parse_jsonl_line(raw), method)
            except ValueError as exc:
                problems.append(f"{path} line {number}: {exc}")
                continue
            estimate, bound = estimate_tokens(messages)
            if estimate > max_tokens:
                problems.append(f"{path} line {number}: about {estimate:,} tokens, over the limit of "
                                f"{max_tokens:,} per example")
                continue
            if bound > max_tokens:
                report.warnings.append(f"line {number} may exceed {max_tokens:,} tokens (at most {bound:,})")
            report.examples += 1
            report.estimated_tokens += estimate
            report.upper_bound_tokens += bound
            report.max_example_tokens = max(report.max_example_tokens, estimate)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ExportError(problems[0] + more)
    if report.examples < min_examples:
        raise ExportError(f"{path}: {report.examples} examples; OpenAI fine-tuning needs at least {min_examples}")
    return report
