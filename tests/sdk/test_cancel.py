"""The official SDK's bodiless POST calls (cancel) pass through keygate.

They send no body (or an empty one with a JSON content type); keygate checks
them by their scope and forwards them as sent, where it once answered 400
"We could not parse the JSON body of your request".
"""

from __future__ import annotations

import pytest


CALLS = [
    ("batches", lambda c: c.batches.cancel("batch_1"), "/v1/batches/batch_1/cancel"),
    ("fine_tuning", lambda c: c.fine_tuning.jobs.cancel("ftjob_1"), "/v1/fine_tuning/jobs/ftjob_1/cancel"),
    ("responses", lambda c: c.responses.cancel("resp_1"), "/v1/responses/resp_1/cancel"),
    ("runs", lambda c: c.beta.threads.runs.cancel("run_1", thread_id="thread_1"), "/v1/threads/thread_1/runs/run_1/cancel"),
    ("uploads", lambda c: c.uploads.cancel("upload_1"), "/v1/uploads/upload_1/cancel"),
    (
        "file_batches",
        lambda c: c.vector_stores.file_batches.cancel("vsfb_1", vector_store_id="vs_1"),
        "/v1/vector_stores/vs_1/file_batches/vsfb_1/cancel",
    ),
]


@pytest.mark.parametrize("name,call,path", CALLS, ids=[c[0] for c in CALLS])
def test_bodiless_cancel_calls_are_forwarded(client, mock_upstream, name, call, path):
    answer = call(client)
    assert answer.id == path.rsplit("/", 2)[-2]
    sent = [r for r in mock_upstream.requests if r.path.split("?")[0] == path]
    assert len(sent) == 1, [r.path for r in mock_upstream.requests]
    assert sent[0].method == "POST"
    assert sent[0].body in (b"", b"{}"), sent[0].body
