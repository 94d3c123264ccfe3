"""What routes receive through ``Depends``: the agent and the security policy of this app."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..agent import ColdMailAgent
from .security import WebPolicy


def get_agent(request: Request) -> ColdMailAgent:
    """The agent ``create_app``'s lifespan opened; one serves every request."""
    agent: ColdMailAgent = request.app.state.agent
    return agent


def get_policy(request: Request) -> WebPolicy:
    """The security policy ``create_app`` built from the settings and the bound address."""
    policy: WebPolicy = request.app.state.policy
    return policy


Agent = Annotated[ColdMailAgent, Depends(get_agent)]
Policy = Annotated[WebPolicy, Depends(get_policy)]
