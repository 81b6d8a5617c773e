"""OpenAI's list pages: `{"object": "list", "data", "first_id", "last_id", "has_more"}`, a cursor (`after`,
an item's id) and a `limit`, as its files, batches and stored responses' input items are listed."""

from __future__ import annotations

from router.front.http_errors import ApiError


def cursor_page(items: list[dict], limit: int, after: str | None, what: str) -> dict:
    """At most `limit` of `items` (each with an "id"), those after the one whose id is `after`; 400 for an
    `after` not among them (`what` names the kind of item)."""
    ids = [item["id"] for item in items]
    if after is not None and after not in ids:
        raise ApiError(400, f"after: no {what} {after!r} in this list", param="after")
    start = ids.index(after) + 1 if after is not None else 0
    page = items[start:start + limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(items)}
