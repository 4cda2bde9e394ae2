"""From trajectories to training data: curated, private, reproducible, versioned dataset snapshots.

``build(store, BuildRequest(...))`` is the function behind ``trajforge datasets build`` and
``POST /api/training/datasets/build``. It reads LLM calls as flat rows (the database does the
joins), keeps the trajectories the request selects (filters, reward range by a named score, a
required late outcome, a minimum number of calls), turns each call into an *example* (prompt
messages, the assistant's completion, the tools offered), runs every string through the privacy
filter, drops duplicates, splits train/eval by scenario (so no scenario is in both) and writes rows
in one of the named formats below. The result is an immutable folder
``<state>/datasets/<id>/`` with ``train.jsonl``, ``eval.jsonl``, their ``.parquet`` twins,
per-task files and ``manifest.json`` (the request, counts, source trajectory ids, the privacy
report and the sha256 of every file). The same store, request and seed give byte-identical files.

Formats follow Hugging Face TRL's conventions, each a converter plus a check (TRL style), in
``trajforge.formats`` (shared with exports):

=====================  ======================================================================
``sft``                ``{"messages": [...], "tools"?}`` conversational language modeling
``prompt_completion``  ``{"prompt": [...], "completion": [assistant], "tools"?}``
``preference``         ``{"prompt", "chosen", "rejected"}``: pairs of completions to one prompt
                       (or scenario) whose rewards differ by at least ``preferenceMargin``
``grpo``               ``{"prompt", "group", "reward", "task"}`` prompt-only rows
``openai``             OpenAI fine-tuning SFT JSONL (tool arguments as JSON strings, ``weight``)
``openai_dpo``         OpenAI fine-tuning DPO JSONL (``input``/``preferred_output``/…)
``art``                OpenPipe ART trajectory groups: one line per scenario
``rewarded``           ``{"prompt", "response", "reward", "context", "metadata"}`` one row per
                       rewarded LLM call, the Babylon logger's ``exportToHuggingFace`` rows
=====================  ======================================================================

A call's *task* is its ``actionType`` when set, else its ``purpose`` (``records.task_of``).

Modules: ``request`` (what to build), ``curation`` (which trajectories and calls, filtered),
``rows`` (format → converter and check), ``files`` (writers, split, parquet), ``builder`` (the
build and its manifest).
"""

from trajforge.datasets.builder import FORMAT_VERSION, build, get, summary
from trajforge.datasets.request import FORMATS, PAIR_FORMATS, BuildRequest, PrivacyOptions
from trajforge.datasets.rows import check_row
from trajforge.formats.examples import Example, example_from_row

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "PAIR_FORMATS",
    "BuildRequest",
    "Example",
    "PrivacyOptions",
    "build",
    "check_row",
    "example_from_row",
    "get",
    "summary",
]
