"""An in-process LLM that answers a fixed valid sequence instantly: the LLM's time is zero."""

from __future__ import annotations

from typing import Any

from bridgic.core.model import BaseLlm

from bridgic_coldmail import EmailSequence

SEQUENCE = EmailSequence.model_validate(
    {
        "opener": {
            "subject": "A faster way",
            "body": "Hi,\n\nShort pitch.\n\nDana",
            "wait_days": 0,
        },
        "follow_up": {"subject": "Following up", "body": "Hi again,\n\nDana", "wait_days": 3},
    }
)


class InstantLlm(BaseLlm):
    """A Bridgic ``BaseLlm`` + ``StructuredOutput`` with no latency."""

    calls = 0

    def chat(self, messages: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def stream(self, messages: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def achat(self, messages: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def astream(self, messages: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def structured_output(self, messages: Any, constraint: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return SEQUENCE

    async def astructured_output(self, messages: Any, constraint: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return SEQUENCE

    def dump_to_dict(self) -> dict[str, Any]:
        return {}

    def load_from_dict(self, state_dict: dict[str, Any]) -> None:
        return None
