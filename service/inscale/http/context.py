"""The server state an HTTP route works with, kept on the FastAPI app by the app factory."""

from starlette.requests import Request

from inscale.server_state import ServerState


def context(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state
