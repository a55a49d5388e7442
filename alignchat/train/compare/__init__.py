"""Comparison data for `rm`, `dpo` and evaluation: the `alignchat compare` verb and the pieces it is built of.

Modules:
- `prompts`: reading prompt files (JSONL conversations or plain text, one prompt a line); PPO reads its
  prompts here too.
- `sampling`: K responses per prompt from a checkpoint through the shared engine, each with its own seed.
- `judges`: the AI and rule judges that rank responses (RLAIF): `RuleJudge`, `ModelJudge`, `EndpointJudge`.
- `cli`: the verb, one settings dataclass per subcommand (`alignchat.settings`).

Notable choices:
- The package re-exports the public names of `prompts`, `sampling` and `judges` (`from alignchat.train
  .compare import ModelJudge`); none of them imports torch, the engine or a client until it is used, so
  importing the package stays cheap.
"""
from __future__ import annotations

from .judges import (ANTI_RUBRIC_PERSONA, RUBRIC, RUBRIC_CRITERIA, RUBRIC_PERSONA, EndpointJudge, ModelJudge,
                     RuleJudge, make_judge)
from .prompts import read_prompts, with_system
from .sampling import sample_responses

__all__ = ["ANTI_RUBRIC_PERSONA", "EndpointJudge", "ModelJudge", "RUBRIC", "RUBRIC_CRITERIA", "RUBRIC_PERSONA",
           "RuleJudge", "make_judge", "read_prompts", "sample_responses", "with_system"]
