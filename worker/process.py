"""One worker process: its two arq workers (own host queue, shared provision queue), its
membership heartbeat (in a thread of its own: worker/heartbeat.py), and the signals an
operator sends it."""

import asyncio
import logging
import signal
from contextlib import suppress

from taskenv.shared.jobs import JOB_TIMEOUT_SEC
from taskenv.shared.settings import Settings
from taskenv.worker import context, metrics
from taskenv.worker.arq_worker import create_workers, shutdown, startup
from taskenv.worker.heartbeat import Heartbeat
from taskenv.worker.membership import Membership

log = logging.getLogger("taskenv.worker")


def _drain(membership: Membership, heart: Heartbeat) -> None:
    membership.request_drain()
    heart.wake()


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then let running commands finish (bounded by their deadlines),
    still heartbeating so they are not taken for lost, and leave. SIGUSR1 drains the host."""
    own, provisions = create_workers(settings)
    ctx = own.ctx
    await startup(ctx)
    membership = Membership(settings, [own, provisions], provisions, metrics.exposition)
    context.of(ctx).membership = membership
    heart = Heartbeat(settings, membership)
    # Alive (and paused if draining or full) before the first job is taken.
    await heart.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _drain, membership, heart)
    log.info("worker %s on host %s", membership.worker_id, settings.host_id)
    mains = {asyncio.create_task(w.main()) for w in (own, provisions)}
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({*mains, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    for worker in (provisions, own):
        worker.stop_taking()
    for main in mains:
        with suppress(asyncio.CancelledError):
            await main
    running = [task for w in (own, provisions) for task in w.tasks.values() if not task.done()]
    if running:
        log.info("waiting for %d running jobs", len(running))
        await asyncio.wait(running, timeout=JOB_TIMEOUT_SEC)
    await heart.stop()
    try:
        await membership.leave(context.of(ctx).records)
    finally:
        for worker in (provisions, own):
            await worker.close()
        await shutdown(ctx)
