"""prefill_node.transfers: a failed send is reported with the sender's reason (what the decode node
or the transport said), not only its state."""

import asyncio

import pytest

from prefill_node.transfers import Transfers
from splitserve.engine import Engine, EngineConfig
from splitserve.kvtransfer import TransferConfig, TransferError
from splitserve.kvtransfer.sender_base import Job, JobKind, TrackedSender


class RefusedSender(TrackedSender):
    """Every transfer fails as soon as it begins, as when the receiver rejects the first layer."""

    def _submit(self, job: Job) -> None:
        if job.kind is JobKind.BEGIN:
            self._fail(job.meta.request_id, "INVALID_ARGUMENT: layer 0: write_layer raised RuntimeError")

    def _shutdown(self) -> None:
        pass


def test_a_failed_send_names_the_senders_reason(tiny_model):
    transfers = Transfers(Engine(tiny_model, EngineConfig(num_blocks=16, block_size=4)))
    with pytest.raises(TransferError, match="ended FAILED: INVALID_ARGUMENT: layer 0: write_layer raised"):
        with transfers.opened("r1", RefusedSender(TransferConfig()), num_tokens=5, layerwise=False):
            asyncio.run(transfers.wait("r1", timeout_s=5))
    assert transfers.active == {}
